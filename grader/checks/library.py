"""Checks every task can use by listing their id in task.yaml."""

from __future__ import annotations

from grader.checks.base import Artifacts, CheckContext, InfraFault, Outcome, check, failed, passed
from grader.taskspec import Budget
from grader.telemetry import Telemetry, read_telemetry


@check("runs")
def runs(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Every run of the entry command exits 0 within its limits."""
    broken = [f"{r.name}: {r.infra_error}" for r in artifacts.runs.values() if r.infra_error]
    if broken:
        raise InfraFault("; ".join(broken))
    problems = [r.describe_failure() for r in artifacts.runs.values() if r.result is not None and not r.result.ok]
    data = {r.name: r.result.returncode for r in artifacts.runs.values() if r.result is not None}
    if problems:
        return failed("; ".join(problems), exit_codes=data)
    return passed(f"all {len(artifacts.runs)} runs exited 0", exit_codes=data)


def _main(ctx: CheckContext) -> str:
    return ctx.spec.main_run if ctx.spec else "main"


def run_telemetry(artifacts: Artifacts, ctx: CheckContext) -> Telemetry:
    """The main run's telemetry summary, read once per grade."""
    run = artifacts.runs[_main(ctx)]
    return ctx.memo("telemetry", lambda: read_telemetry(run.telemetry_path) if run.telemetry_path else Telemetry(present=False))


def _cpu_budget(artifacts: Artifacts, budget: Budget) -> tuple[float, str]:
    """(CPU-seconds allowed, how): relative to the reference run on this host where the task says so."""
    ref = artifacts.references[0].result if artifacts.references else None
    if budget.reference_cpu_factor and ref is not None and ref.ok and ref.cpu_s:
        return budget.reference_cpu_factor * ref.cpu_s, (f"{budget.reference_cpu_factor:g}× the reference solution's "
                                                         f"{ref.cpu_s:.0f} CPU-s on this host")
    return budget.cpu_s, "the task's budget"


@check("within-budget")
def within_budget(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """CPU time (every process of the run, as the sandbox measured it: unlike wall time, another job on the
    host does not change it) and peak memory within the task's budget."""
    budget = ctx.spec.budget if ctx.spec else None
    if budget is None:
        raise InfraFault("the task declares no budget")
    run = artifacts.runs[_main(ctx)]
    if run.infra_error or run.result is None:
        raise InfraFault("the run has no sandbox measurements")
    result = run.result
    if not result.ok:
        return failed(f"{run.describe_failure()}: a run that did not finish has no figures to hold to the budget")
    if result.cpu_s is None:
        raise InfraFault("the sandbox measured no CPU time for the run")
    allowed, basis = _cpu_budget(artifacts, budget)
    peak = max(filter(None, [result.max_rss_mb, run_telemetry(artifacts, ctx).peak_rss_mb]), default=None)
    over = []
    if result.cpu_s > allowed:
        over.append(f"used {result.cpu_s:.0f} CPU-s of {allowed:.0f} ({basis})")
    if peak is not None and peak > budget.memory_mb:
        over.append(f"peaked at {peak:.0f} MB of a {budget.memory_mb} MB budget")
    if result.gpu_s is not None and budget.gpu_s is not None and result.gpu_s > budget.gpu_s:
        over.append(f"used {result.gpu_s:.0f} GPU-s of {budget.gpu_s:.0f}")
    gpu_peak = max(filter(None, [result.gpu_memory_mb, run_telemetry(artifacts, ctx).cuda_peak_mb]), default=None)
    if gpu_peak is not None and budget.gpu_memory_mb is not None and gpu_peak > budget.gpu_memory_mb:
        over.append(f"peaked at {gpu_peak:.0f} MB of GPU memory of {budget.gpu_memory_mb} MB")
    data = {"cpu_s": round(result.cpu_s, 1), "cpu_budget_s": round(allowed, 1), "wall_s": round(result.duration_s, 1),
            "peak_mb": round(peak, 1) if peak else None, "gpu_s": result.gpu_s, "gpu_peak_mb": gpu_peak,
            "budget": budget.model_dump()}
    if over:
        return failed("; ".join(over), **data)
    return passed(f"{result.cpu_s:.0f} CPU-s of {allowed:.0f} ({basis}) and {peak or 0:.0f} MB of {budget.memory_mb} MB "
                  f"(wall time {result.duration_s:.0f} s, not budgeted: it depends on the host's load)", **data)
