"""Offline re-scoring: the checks again, on a grade's stored run artifacts, without running the
candidate's code (`tunegrade rescore`).

When a check is fixed mid-cohort the panel must not pay for training again. The result keeps its
run's timings and environment and records the re-scoring (when, which tool version, what it
replaced). It must be the same grade in every other respect: the same task version and the same
hidden inputs (the cohort's hidden seed is given again and proven by the variant it produces), and
the same base model; anything else is refused.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from grader import __version__
from grader.checks.base import Artifacts, RunArtifacts
from grader.constants import EXEC_FILE, RESULT_FILE, RUBRICS_DIR, SCRATCH_DIR
from grader.errors import BadInput
from grader.evaluate import run_checks
from grader.inputs import Inputs, prepare_inputs
from grader.pipeline import check_context, open_sandbox, require_isolation, verdict_fields
from grader.reference import grade_references
from grader.result import Rescore, Result, RunRecord, load_result, save_result
from grader.rubric import load_rubrics
from grader.tasks import TaskPack, get_task
from grader.telemetry import TELEMETRY_FILENAME
from grader.telemetry.read import telemetry_mounts
from sandbox.base import ExecResult
from sandbox.limits import STDERR_NAME, STDOUT_NAME


@dataclass
class RescoreRequest:
    folder: Path
    hidden_seed: str | None = None
    base_model: str | None = None
    """Default: the profile the grade recorded (a model folder must be given again)."""
    backend: str = "local"
    backend_options: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    allow_reduced_isolation: bool = False
    tasks_dirs: list[Path] = field(default_factory=list)


def stored_run(pack: TaskPack, record: RunRecord, folder: Path) -> RunArtifacts:
    """A run as the checks saw it, rebuilt from the result folder."""
    log_dir = folder / record.log_dir
    if record.infra_error is not None:
        return RunArtifacts(record.name, record.argv, log_dir / "out", None, infra_error=record.infra_error)
    exec_file = log_dir / EXEC_FILE
    try:
        result = ExecResult.model_validate_json(exec_file.read_bytes())
    except FileNotFoundError:
        raise BadInput(f"{exec_file} is missing: this grade predates re-scoring or lost its runs; grade it again") from None
    except (OSError, ValidationError) as exc:
        raise BadInput(f"{exec_file}: unreadable ({str(exc).splitlines()[0]})") from None
    result = result.model_copy(update={"stdout_path": log_dir / STDOUT_NAME, "stderr_path": log_dir / STDERR_NAME})
    telemetry = telemetry_mounts(log_dir)[1].source / TELEMETRY_FILENAME if pack.spec.telemetry else None
    return RunArtifacts(record.name, record.argv, log_dir / "out", result, notes=record.notes,
                        telemetry_path=telemetry if telemetry is not None and telemetry.exists() else None)


def _base_model(result: Result, given: str | None) -> str:
    if given:
        return given
    if result.base_model is None:
        return "tiny"
    return str(result.base_model["name"])


def rescore(req: RescoreRequest) -> Result:
    """Re-run the checks of the grade in ``req.folder`` and rewrite its result.json."""
    folder = req.folder.resolve()
    result = load_result(folder / RESULT_FILE)
    scale = result.limits_scale
    pack = get_task(result.task.id, req.tasks_dirs).scaled(scale.get("time", 1.0), scale.get("memory", 1.0))
    if pack.spec.version != result.task.version:
        raise BadInput(f"{folder}: graded with {pack.id} {result.task.version}, the task is now {pack.spec.version}; "
                       "a new task version needs a new grade")
    runs = {r.name: stored_run(pack, r, folder) for r in result.runs}
    rubric = load_rubrics(RUBRICS_DIR)[result.role]
    sandbox = open_sandbox(req.backend, req.backend_options)  # only for reference runs not yet cached
    require_isolation(sandbox, req.allow_reduced_isolation)
    public = result.hidden_variant.endswith("#public")
    base_model = _base_model(result, req.base_model)
    scratch = folder / SCRATCH_DIR
    shutil.rmtree(scratch, ignore_errors=True)
    prepared: Inputs | None = None
    t0 = time.perf_counter()
    try:
        prepared = prepare_inputs(pack, scratch / "inputs", public=public, hidden_seed=req.hidden_seed,
                                  base_model=base_model)
        if prepared.variant != result.hidden_variant:
            raise BadInput(f"{folder}: these are not the hidden inputs it was graded on ({prepared.variant}, graded on "
                           f"{result.hidden_variant}); give the cohort's --hidden-seed")
        if prepared.base is not None and result.base_model and prepared.base.sha256 != result.base_model.get("sha256"):
            raise BadInput(f"{folder}: base model {base_model} is not the one it was graded on; give it with --base-model")
        references, public_reference = grade_references(pack, prepared, sandbox, result.seed, public, base_model,
                                                         scratch / "public-inputs")
        ctx = check_context(pack, prepared, result.seed, req.device)
        artifacts = Artifacts(runs=runs, references=references, public_reference=public_reference)
        checks = run_checks(pack, artifacts, ctx, visible_only=public, time_scale=scale.get("time", 1.0))
    finally:
        if prepared is not None:
            prepared.remove()
        shutil.rmtree(scratch, ignore_errors=True)
    record = Rescore(at=datetime.now(timezone.utc).isoformat(timespec="seconds"), tool_version=__version__,
                     checks_s=round(time.perf_counter() - t0, 3), previous_score=result.score,
                     previous_verdict=result.verdict)
    fields = verdict_fields(pack, rubric, result.runs, checks, result.panel)
    rescored = result.model_copy(update=fields | {"rescores": [*result.rescores, record], "device": ctx.device})
    save_result(rescored, folder / RESULT_FILE)
    return rescored
