"""Checks stage: call each check the task lists, under a time limit, mapping exceptions to fail
(candidate) or error (grader)."""

from __future__ import annotations

import ctypes
import signal
import threading
import traceback
from collections.abc import Callable

from grader.checks.base import Artifacts, CandidateFault, CheckContext, CheckFn, InfraFault, Outcome
from grader.progress import Progress
from grader.result import CheckRecord, Evidence
from grader.tasks import TaskPack


class CheckTimeout(BaseException):
    """The check ran past its time limit. A BaseException, so a check's own ``except Exception``
    cannot swallow it."""


def call_with_deadline(call: Callable[[], Outcome], seconds: float) -> Outcome:
    """``call()``, stopped with :class:`CheckTimeout` after ``seconds``.

    In the main thread an interval timer interrupts the check wherever it is (Python code, or C code
    that checks for signals, such as ``re``). Elsewhere the check runs in a daemon thread; at the
    deadline the grade stops waiting and :class:`CheckTimeout` is raised inside that thread, which
    ends it at its next Python instruction (a check stuck in one long C call ends when that returns),
    so an abandoned check does not keep a core and the GIL for the rest of the process.
    """
    if threading.current_thread() is threading.main_thread():
        def on_alarm(signum: int, frame: object) -> None:
            raise CheckTimeout

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return call()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    box: list[Outcome | BaseException] = []

    def target() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread as is
            box.append(exc)

    worker = threading.Thread(target=target, name="tunegrade-check", daemon=True)
    worker.start()
    worker.join(seconds)
    if not box:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(CheckTimeout))
        raise CheckTimeout
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _outcome(fn: CheckFn, artifacts: Artifacts, ctx: CheckContext, seconds: float) -> Outcome:
    try:
        outcome = call_with_deadline(lambda: fn(artifacts, ctx), seconds)
    except CandidateFault as exc:
        return Outcome(status="fail", score=0.0, message=str(exc))
    except InfraFault as exc:
        return Outcome(status="error", score=0.0, message=f"grader could not assess: {exc}")
    except CheckTimeout:
        # Candidate outputs are bounded and parsed in linear time, so a slow check is the grader's
        # (or its host's) problem: the grade says it is incomplete rather than blame the candidate.
        return Outcome(status="error", score=0.0, message=f"check did not finish within its {seconds:g} s limit")
    except Exception as exc:  # a bug in a check is the grader's fault, never the candidate's
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
        return Outcome(status="error", score=0.0, message=f"check crashed: {type(exc).__name__}: {exc} ({where})")
    if not isinstance(outcome, Outcome):
        return Outcome(status="error", score=0.0, message=f"check returned {type(outcome).__name__}, not an Outcome")
    return outcome


def run_checks(pack: TaskPack, artifacts: Artifacts, ctx: CheckContext, visible_only: bool = False,
               time_scale: float = 1.0, progress: Progress | None = None) -> list[CheckRecord]:
    records = []
    for spec in pack.spec.checks:
        if visible_only and not spec.visible:
            continue
        outcome = _outcome(pack.checks[spec.id], artifacts, ctx, spec.timeout_s * time_scale)
        records.append(
            CheckRecord(
                id=spec.id,
                title=spec.title,
                status=outcome.status,
                score=outcome.score,
                weight=spec.weight,
                critical=spec.critical,
                self_report=spec.self_report,
                evidence=Evidence(message=outcome.message, data=outcome.data),
            )
        )
        if progress is not None:
            progress.check_done(spec.id, outcome.status, outcome.message)
    return records
