"""The grade, stage by stage: intake -> inputs -> sandbox runs -> checks -> scores -> result.

Each stage lives in its own module; this one only chains them and keeps the timings.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from grader import __version__
from grader.checks.base import Artifacts, CheckContext, RunArtifacts
from grader.constants import DEFAULT_BASE_MODEL, RESULT_FILE, RUBRICS_DIR, RUNS_DIR, SCRATCH_DIR
from grader.environment import environment
from grader.errors import BadInput, GraderFault
from grader.evaluate import run_checks
from grader.execute import execute_runs, run_params
from grader.inputs import Inputs, prepare_inputs
from grader.intake import Submission, intake
from grader.reference import grade_references
from grader.result import Ref, Result, RunRecord, Timings, save_result
from grader.rubric import load_rubrics
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


def resolve_device(device: str) -> str:
    """"auto" is CUDA when the grader's torch sees a GPU, else CPU; torch is imported only for model tasks."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _prepare_out(out: Path) -> None:
    """Never overwrite a folder tunegrade did not make: nothing of the user's is lost."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / RESULT_FILE).exists():
        raise BadInput(f"output folder {out} is not empty and holds no {RESULT_FILE}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def _open_sandbox(name: str, options: dict[str, str]) -> Sandbox:
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


def grade(req: GradeRequest) -> Result:
    """Grade one submission and write ``req.out/result.json``; the caller renders the report."""
    t0 = time.perf_counter()
    pack = req.pack.scaled(req.time_scale, req.memory_scale)
    role = req.role or pack.spec.roles[0]
    if role not in pack.spec.roles:
        raise BadInput(f"task {pack.id} is not graded for role {role!r} (roles: {', '.join(pack.spec.roles)})")
    rubric = load_rubrics(RUBRICS_DIR)[role]
    pack.checks  # noqa: B018 - loaded before any candidate code runs: a run cannot change what grades it
    sandbox = _open_sandbox(req.backend, req.backend_options)
    require_isolation(sandbox, req.allow_reduced_isolation)
    out = req.out.resolve()  # the sandbox binds absolute paths whatever the caller's cwd
    _prepare_out(out)
    scratch = out / SCRATCH_DIR
    shutil.rmtree(scratch, ignore_errors=True)
    prepared: Inputs | None = None
    try:
        submission: Submission = intake(req.source, scratch / "submission", req.ref)
        t_intake = time.perf_counter()

        prepared = prepare_inputs(pack, scratch / "inputs", public=req.public, hidden_seed=req.hidden_seed,
                                  base_model=req.base_model)
        inputs, base = prepared.mounts, prepared.base
        references, public_reference = grade_references(pack, prepared, sandbox, req.seed, req.public,
                                                         req.base_model, scratch / "public-inputs")
        t_inputs = time.perf_counter()

        runs = execute_runs(pack, submission.root, inputs, sandbox, req.seed, out / RUNS_DIR, scratch)
        t_runs = time.perf_counter()

        ctx = CheckContext(
            task_dir=pack.dir,
            inputs=inputs,
            params=run_params(pack, pack.spec.main_run, req.seed),
            seed=req.seed,
            manifest=prepared.manifest,
            data_dir=prepared.grader_dir,
            spec=pack.spec,
            device=resolve_device(req.device) if base else "cpu",
        )
        artifacts = Artifacts(runs=runs, references=references, public_reference=public_reference)
        checks = run_checks(pack, artifacts, ctx, visible_only=req.public, time_scale=req.time_scale)
        t_checks = time.perf_counter()
    finally:
        if prepared is not None:
            prepared.remove()
        shutil.rmtree(scratch, ignore_errors=True)

    infra_errors = [f"run {r.name}: {r.infra_error}" for r in runs.values() if r.infra_error]
    score = weighted_score(checks)
    verdict_ = verdict(score, checks, infra_errors)
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
        runs=[_run_record(r, out) for r in runs.values()],
        telemetry={r.name: read_telemetry(r.telemetry_path) for r in runs.values() if r.telemetry_path},
        checks=checks,
        rollup=rollup(rubric, pack.spec.level, pack.id, checks),
        score=grade_score(score, verdict_),
        verdict=verdict_,
        errors=infra_errors + [f"check {c.id}: {c.evidence.message}" for c in checks if c.status == "error"],
    )
    save_result(result, out / RESULT_FILE)
    return result
