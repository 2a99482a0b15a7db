"""Checks every task can use by listing their id in task.yaml."""

from __future__ import annotations

from grader.checks.base import Artifacts, CheckContext, InfraFault, Outcome, check, failed, passed


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
