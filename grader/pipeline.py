"""The grade, stage by stage: intake -> inputs -> sandbox runs -> checks -> scores -> result.

Each stage lives in its own module; this one only chains them and keeps the timings.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from grader import __version__
from grader.checks.base import Artifacts, CheckContext, RunArtifacts
from grader.constants import (
    DEFAULT_BASE_MODEL,
    EXEC_FILE,
    OUTPUT_MARKER,
    RESULT_FILE,
    RUBRICS_DIR,
    RUNS_DIR,
    SCRATCH_DIR,
    SUBMISSION_DIR,
)
from grader.environment import environment
from grader.errors import BadInput, GraderFault
from grader.evaluate import run_checks
from grader.execute import execute_runs, run_params
from grader.inputs import Inputs, prepare_inputs
from grader.intake import Submission, intake
from grader.progress import Progress
from grader.reference import grade_references
from grader.result import CheckRecord, PanelScore, Ref, Result, RunRecord, Timings, save_result
from grader.rubric import Rubric, load_rubrics
from grader.scoring import grade_score, rollup, verdict, weighted_score
from grader.tasks import TaskPack
from grader.telemetry import read_telemetry
from sandbox import Sandbox, SandboxUnavailable, get_backend

INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) "
                "or grade with --backend docker")

@dataclass
class GradeRequest:
    """One grade. ``public`` selects the candidate's self-check: public data, visible checks only."""

    pack: TaskPack
    source: Path
    out: Path
    candidate: str | None = None
    backend: str = "local"
    backend_options: dict[str, str] = field(default_factory=dict)
    """Keyword options of the backend, e.g. docker's ``image`` and ``gpus``; only those given."""
    seed: int = 1234
    ref: str | None = None
    hidden_seed: str | None = None
    role: str | None = None
    public: bool = False
    base_model: str = DEFAULT_BASE_MODEL
    device: str = "auto"
    time_scale: float = 1.0
    memory_scale: float = 1.0
    allow_reduced_isolation: bool = False
    """Run candidate code even where the sandbox cannot isolate it (the operator's explicit choice)."""
    progress: Progress = field(default_factory=Progress)


def resolve_device(device: str) -> str:
    """"auto" is CUDA when the grader's torch sees a GPU, else CPU; torch is imported only for model tasks."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_result_folder(out: Path) -> bool:
    """A folder tunegrade made for a grade: its result, or its marker (a grade killed mid-way)."""
    return (out / RESULT_FILE).exists() or (out / OUTPUT_MARKER).is_file()


def _prepare_out(out: Path) -> None:
    """Never overwrite a folder tunegrade did not make: nothing of the user's is lost."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_result_folder(out):
        raise BadInput(f"output folder {out} is not empty and holds no {RESULT_FILE}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / OUTPUT_MARKER).write_text("A tunegrade result folder: intake leaves it out of any submission.\n",
                                     encoding="utf-8")


_REFERENCE_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _reference_lock(key: str) -> threading.Lock:
    """Grades of one cohort running side by side (a batch) compute its reference runs once: the
    second waits for the first and finds them cached."""
    with _LOCKS_GUARD:
        return _REFERENCE_LOCKS.setdefault(key, threading.Lock())


def open_sandbox(name: str, options: dict[str, str]) -> Sandbox:
    try:
        return get_backend(name, **options)
    except KeyError:
        raise BadInput(f"unknown sandbox backend {name!r}") from None
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    except SandboxUnavailable as exc:
        raise GraderFault(f"sandbox backend {name!r} is unavailable: {exc}") from None


def require_isolation(sandbox: Sandbox, allowed: bool) -> None:
    """Fail closed: never run candidate code without isolation unless the operator said so."""
    iso = sandbox.isolation()
    if iso.level == "full" or allowed:
        return
    why = iso.notes[0] if iso.notes else f"the {iso.backend} backend does not isolate"
    raise BadInput(f"refusing to run candidate code with reduced isolation ({why}); {INSTALL_HINT}, "
                   "or pass --allow-reduced-isolation to grade code you trust")


def _run_record(run: RunArtifacts, out: Path) -> RunRecord:
    r = run.result
    return RunRecord(
        name=run.name,
        argv=run.argv,
        returncode=r.returncode if r else None,
        timed_out=r.timed_out if r else False,
        oom_killed=r.oom_killed if r else False,
        disk_exceeded=r.disk_exceeded if r else False,
        duration_s=round(r.duration_s, 3) if r else 0.0,
        cpu_s=round(r.cpu_s, 3) if r and r.cpu_s is not None else None,
        max_rss_mb=r.max_rss_mb if r else None,
        stdout_truncated=r.stdout_truncated if r else False,
        stderr_truncated=r.stderr_truncated if r else False,
        log_dir=run.out_dir.parent.relative_to(out).as_posix(),
        infra_error=run.infra_error,
        notes=run.notes,
    )


def check_context(pack: TaskPack, prepared: Inputs, seed: int, device: str) -> CheckContext:
    return CheckContext(
        task_dir=pack.dir,
        inputs=prepared.mounts,
        params=run_params(pack, pack.spec.main_run, seed),
        seed=seed,
        manifest=prepared.manifest,
        data_dir=prepared.grader_dir,
        spec=pack.spec,
        device=resolve_device(device) if prepared.base else "cpu",
    )


def save_exec_results(runs: dict[str, RunArtifacts]) -> None:
    """Each run's full sandbox outcome next to its logs: what `rescore` grades again from."""
    for run in runs.values():
        if run.result is not None:
            (run.out_dir.parent / EXEC_FILE).write_text(run.result.model_dump_json(indent=2), encoding="utf-8")


def verdict_fields(pack: TaskPack, rubric: Rubric, runs: list[RunRecord], checks: list[CheckRecord],
                   panel: Sequence[PanelScore] = ()) -> dict:
    """What the checks (and a panel's merged scores) decide in a result: roll-up, score, verdict and
    the grader's own errors."""
    infra_errors = [f"run {r.name}: {r.infra_error}" for r in runs if r.infra_error]
    score = weighted_score(checks)
    verdict_ = verdict(score, checks, infra_errors)
    return {
        "checks": checks,
        "rollup": rollup(rubric, pack.spec.level, pack.id, checks, panel),
        "score": grade_score(score, verdict_),
        "verdict": verdict_,
        "errors": infra_errors + [f"check {c.id}: {c.evidence.message}" for c in checks if c.status == "error"],
    }


def grade(req: GradeRequest) -> Result:
    """Grade one submission and write ``req.out/result.json``; the caller renders the report."""
    t0 = time.perf_counter()
    pack = req.pack.scaled(req.time_scale, req.memory_scale)
    role = req.role or pack.spec.roles[0]
    if role not in pack.spec.roles:
        raise BadInput(f"task {pack.id} is not graded for role {role!r} (roles: {', '.join(pack.spec.roles)})")
    rubric = load_rubrics(RUBRICS_DIR)[role]
    pack.checks  # noqa: B018 - loaded before any candidate code runs: a run cannot change what grades it
    sandbox = open_sandbox(req.backend, req.backend_options)
    require_isolation(sandbox, req.allow_reduced_isolation)
    out = req.out.resolve()  # the sandbox binds absolute paths whatever the caller's cwd
    _prepare_out(out)
    scratch = out / SCRATCH_DIR
    shutil.rmtree(scratch, ignore_errors=True)
    prepared: Inputs | None = None
    progress = req.progress
    try:
        submission: Submission = intake(req.source, scratch / "submission", req.ref)
        t_intake = time.perf_counter()
        # Reported once done: a submission refused at intake gets its one-line error and nothing else.
        progress.stage(f"intake: {submission.source}, sha256 {submission.sha256[:12]}")
        progress.stage("inputs: " + ("public data" if req.public else "hidden inputs"))
        prepared = prepare_inputs(pack, scratch / "inputs", public=req.public, hidden_seed=req.hidden_seed,
                                  base_model=req.base_model)
        inputs, base = prepared.mounts, prepared.base
        if pack.spec.reference is not None:
            progress.stage("reference runs (cached per cohort)")
        with _reference_lock(f"{pack.id}:{prepared.variant}:{req.base_model}"):
            references, public_reference = grade_references(pack, prepared, sandbox, req.seed, req.public,
                                                             req.base_model, scratch / "public-inputs")
        t_inputs = time.perf_counter()

        runs = execute_runs(pack, submission.root, inputs, sandbox, req.seed, out / RUNS_DIR, scratch,
                            progress=progress)
        save_exec_results(runs)
        kept = out / SUBMISSION_DIR
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(submission.root, kept, symlinks=True)
        t_runs = time.perf_counter()
        progress.stage("checks")

        ctx = check_context(pack, prepared, req.seed, req.device)
        artifacts = Artifacts(runs=runs, references=references, public_reference=public_reference)
        checks = run_checks(pack, artifacts, ctx, visible_only=req.public, time_scale=req.time_scale,
                            progress=progress)
        t_checks = time.perf_counter()
    finally:
        if prepared is not None:
            prepared.remove()
        shutil.rmtree(scratch, ignore_errors=True)

    records = [_run_record(r, out) for r in runs.values()]
    rss = [r.result.max_rss_mb for r in runs.values() if r.result and r.result.max_rss_mb is not None]
    result = Result(
        tool_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        task=Ref(id=pack.id, version=pack.spec.version),
        task_title=pack.spec.title,
        rubric=Ref(id=rubric.id, version=rubric.version),
        role=role,
        level=pack.spec.level,
        candidate=req.candidate or submission.name,
        submission_sha256=submission.sha256,
        submission_source=submission.source,
        hidden_variant=prepared.variant,
        backend=req.backend,
        isolation=sandbox.isolation(),
        base_model=base.record() if base else None,
        device=ctx.device,
        limits_scale={"time": req.time_scale, "memory": req.memory_scale},
        environment=environment(),
        seed=req.seed,
        timings=Timings(
            intake_s=round(t_intake - t0, 3),
            inputs_s=round(t_inputs - t_intake, 3),
            runs_s=round(t_runs - t_inputs, 3),
            checks_s=round(t_checks - t_runs, 3),
            total_s=round(time.perf_counter() - t0, 3),
        ),
        resources={
            "max_rss_mb": max(rss) if rss else None,
            "run_seconds": round(sum(r.result.duration_s for r in runs.values() if r.result), 3),
            "run_cpu_seconds": round(sum(r.result.cpu_s or 0 for r in runs.values() if r.result), 3),
        },
        runs=records,
        telemetry={r.name: read_telemetry(r.telemetry_path) for r in runs.values() if r.telemetry_path},
        **verdict_fields(pack, rubric, records, checks),
    )
    save_result(result, out / RESULT_FILE)
    return result
