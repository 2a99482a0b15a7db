"""The reference run: the task's own good solution, run by the grader as the 1.0 of a normalised scale.

Checks such as ``heldout-improves`` score a candidate between the base model (0) and what the
reference solution achieves (1) on the same hidden inputs and base model. Its run is cached:
the key covers everything that could change its outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from grader.checks.base import RunArtifacts
from grader.constants import cache_root
from grader.environment import environment
from grader.execute import execute_runs
from grader.intake import tree_sha256
from grader.tasks import TaskPack
from sandbox import ExecResult, Sandbox

DONE_FILE = "reference.json"


def _key(pack: TaskPack, source: Path, variant: str, base_model_sha: str | None, seed: int, sandbox_id: str) -> str:
    """Everything that could change the reference's outputs, tunegrade's and the libraries' versions included."""
    parts = [pack.id, pack.spec.version, tree_sha256(source), variant, base_model_sha, seed, sandbox_id, pack.spec.entry,
             pack.spec.limits.model_dump(mode="json"),
             {k: v for k, v in environment().items() if k != "platform"}]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def _load(root: Path) -> dict[str, RunArtifacts]:
    stored = json.loads((root / DONE_FILE).read_text(encoding="utf-8"))
    runs = {}
    for item in stored:
        log_dir = root / "runs" / item["name"]
        result = ExecResult.model_validate(item["result"]).model_copy(
            update={"stdout_path": log_dir / "stdout.txt", "stderr_path": log_dir / "stderr.txt"}
        )
        telemetry = log_dir / item["telemetry"] if item["telemetry"] else None
        runs[item["name"]] = RunArtifacts(item["name"], item["argv"], log_dir / "out", result, telemetry_path=telemetry)
    return runs


def reference_runs(
    pack: TaskPack,
    inputs: dict[str, Path],
    sandbox: Sandbox,
    seed: int,
    variant: str,
    base_model_sha: str | None,
) -> dict[str, RunArtifacts] | None:
    """The reference solution's main run on these inputs, from the cache or run now; None if the task has none.

    A failed reference run is not cached: checks that need it report a grader error.
    """
    if not pack.spec.reference:
        return None
    source = pack.dir / pack.spec.reference
    digest = sandbox.isolation().image_digest  # another candidate image is another reference run
    sandbox_id = f"{sandbox.name}@{digest}" if digest else sandbox.name
    root = cache_root() / "reference" / f"{pack.id}-{_key(pack, source, variant, base_model_sha, seed, sandbox_id)}"
    if (root / DONE_FILE).is_file():
        return _load(root)
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    runs = execute_runs(pack, source, inputs, sandbox, seed, tmp / "runs", tmp / "scratch", only=[pack.spec.main_run])
    shutil.rmtree(tmp / "scratch", ignore_errors=True)
    if not all(r.result is not None and r.result.ok for r in runs.values()):
        return runs
    stored = [
        {
            "name": r.name,
            "argv": r.argv,
            "result": r.result.model_dump(mode="json") if r.result else None,
            "telemetry": r.telemetry_path.relative_to(tmp / "runs" / r.name).as_posix() if r.telemetry_path else None,
        }
        for r in runs.values()
    ]
    (tmp / DONE_FILE).write_text(json.dumps(stored), encoding="utf-8")
    try:
        tmp.rename(root)
    except OSError:  # another grader finished the same reference first
        shutil.rmtree(tmp, ignore_errors=True)
    return _load(root)
