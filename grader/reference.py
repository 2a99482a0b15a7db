"""Reference runs: the task's own good solution, run by the grader on the grade's inputs.

They are the 1.0 of normalised scales (``heldout-improves``: base model 0, reference 1), and their
spread over several seeds calibrates statistical checks (``eval-uncontaminated``). Each run is
cached: the key covers everything that could change its outputs, so a cohort pays for them once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from grader.checks.base import RunArtifacts
from grader.constants import cache_root
from grader.environment import environment
from grader.execute import execute_runs
from grader.inputs import Inputs, prepare_inputs
from grader.intake import tree_sha256
from grader.tasks import TaskPack
from sandbox import ExecResult, Sandbox

DONE_FILE = "reference.json"


def _key(pack: TaskPack, source: Path, variant: str, base_model_sha: str | None, seed: int, sandbox_id: str) -> str:
    """Everything that could change the reference's outputs, tunegrade's and the libraries' versions included."""
    parts = [pack.id, pack.spec.version, tree_sha256(source), variant, base_model_sha, seed, sandbox_id,
             pack.spec.entry_of(pack.spec.main_run),
             pack.spec.limits.model_dump(mode="json"),
             {k: v for k, v in environment().items() if k != "platform"}]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def _load(root: Path) -> RunArtifacts:
    item = json.loads((root / DONE_FILE).read_text(encoding="utf-8"))
    log_dir = root / "runs" / item["name"]
    result = ExecResult.model_validate(item["result"]).model_copy(
        update={"stdout_path": log_dir / "stdout.txt", "stderr_path": log_dir / "stderr.txt"}
    )
    telemetry = log_dir / item["telemetry"] if item["telemetry"] else None
    return RunArtifacts(item["name"], item["argv"], log_dir / "out", result, telemetry_path=telemetry)


def _remove_abandoned(cache: Path) -> None:
    """Remove half-written runs of graders that died (``<key>.tmp<pid>`` whose pid is gone)."""
    for tmp in cache.glob("*.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass


def reference_runs(
    pack: TaskPack,
    inputs: dict[str, Path],
    sandbox: Sandbox,
    seeds: Sequence[int],
    variant: str,
    base_model_sha: str | None,
) -> list[RunArtifacts]:
    """The reference solution's main run on these inputs, once per seed, from the cache or run now;
    empty if the task has no reference. A failed run is returned but not cached: checks that need it
    report a grader error."""
    if pack.spec.reference is None:
        return []
    return [_reference_run(pack, inputs, sandbox, seed, variant, base_model_sha) for seed in seeds]


def _reference_run(pack: TaskPack, inputs: dict[str, Path], sandbox: Sandbox, seed: int, variant: str,
                   base_model_sha: str | None) -> RunArtifacts:
    assert pack.spec.reference is not None
    source = pack.dir / pack.spec.reference.solution
    digest = sandbox.isolation().image_digest  # another candidate image is another reference run
    sandbox_id = f"{sandbox.name}@{digest}" if digest else sandbox.name
    root = cache_root() / "reference" / f"{pack.id}-{_key(pack, source, variant, base_model_sha, seed, sandbox_id)}"
    if (root / DONE_FILE).is_file():
        return _load(root)
    _remove_abandoned(root.parent)
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    main = pack.spec.main_run
    run = execute_runs(pack, source, inputs, sandbox, seed, tmp / "runs", tmp / "scratch", only=[main])[main]
    shutil.rmtree(tmp / "scratch", ignore_errors=True)
    if run.result is None or not run.result.ok:
        return run
    stored = {
        "name": run.name,
        "argv": run.argv,
        "result": run.result.model_dump(mode="json"),
        "telemetry": run.telemetry_path.relative_to(tmp / "runs" / run.name).as_posix() if run.telemetry_path else None,
    }
    (tmp / DONE_FILE).write_text(json.dumps(stored), encoding="utf-8")
    try:
        tmp.rename(root)
    except OSError:  # another grader finished the same reference first
        shutil.rmtree(tmp, ignore_errors=True)
    return _load(root)


def grade_references(pack: TaskPack, inputs: Inputs, sandbox: Sandbox, seed: int, self_check: bool, base_model: str,
                     public_mounts: Path) -> tuple[list[RunArtifacts], RunArtifacts | None]:
    """The reference runs one grade needs: at its seed and the task's further seeds, and on the public
    inputs (prepared under ``public_mounts``) where the task asks. The self-check runs visible checks
    only, which need the first run at most."""
    spec = pack.spec.reference
    if spec is None:
        return [], None
    base_sha = inputs.base.sha256 if inputs.base else None
    seeds = [seed + i for i in range(1 if self_check else spec.seeds)]
    references = reference_runs(pack, inputs.mounts, sandbox, seeds, inputs.variant, base_sha)
    if not spec.public or self_check:
        return references, None
    public = prepare_inputs(pack, public_mounts, public=True, hidden_seed=None, base_model=base_model)
    try:
        return references, reference_runs(pack, public.mounts, sandbox, seeds[:1], public.variant, base_sha)[0]
    finally:
        public.remove()
