"""Checks stage: call each check the task lists, mapping exceptions to fail (candidate) or error (grader)."""

from __future__ import annotations

import traceback

from grader.checks.base import Artifacts, CandidateFault, CheckContext, InfraFault, Outcome
from grader.result import CheckRecord, Evidence
from grader.tasks import TaskPack


def _outcome(fn, artifacts: Artifacts, ctx: CheckContext) -> Outcome:  # type: ignore[no-untyped-def]
    try:
        outcome = fn(artifacts, ctx)
    except CandidateFault as exc:
        return Outcome(status="fail", score=0.0, message=str(exc))
    except InfraFault as exc:
        return Outcome(status="error", score=0.0, message=f"grader could not assess: {exc}")
    except Exception as exc:  # a bug in a check is the grader's fault, never the candidate's
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
        return Outcome(status="error", score=0.0, message=f"check crashed: {type(exc).__name__}: {exc} ({where})")
    if not isinstance(outcome, Outcome):
        return Outcome(status="error", score=0.0, message=f"check returned {type(outcome).__name__}, not an Outcome")
    return outcome


def run_checks(pack: TaskPack, artifacts: Artifacts, ctx: CheckContext, visible_only: bool = False) -> list[CheckRecord]:
    records = []
    for spec in pack.spec.checks:
        if visible_only and not spec.visible:
            continue
        outcome = _outcome(pack.checks[spec.id], artifacts, ctx)
        records.append(
            CheckRecord(
                id=spec.id,
                title=spec.title,
                status=outcome.status,
                score=outcome.score,
                weight=spec.weight,
                critical=spec.critical,
                evidence=Evidence(message=outcome.message, data=outcome.data),
            )
        )
    return records
