"""The checks stage (grader/evaluate.py): exceptions mapped to fail or error, and every check under a time limit."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from grader.checks.base import Artifacts, CandidateFault, CheckContext, InfraFault, Outcome, passed
from grader.evaluate import CheckTimeout, _outcome, call_with_deadline

CTX = CheckContext(task_dir=Path("."), inputs={}, params={}, seed=0, manifest=None)
ARTIFACTS = Artifacts(runs={})


def spin(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    while True:
        pass


def backtrack(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """A pattern that backtracks quadratically, in C code."""
    re.search(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", "a" * 100_000)
    return passed("never")


def swallow(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """A check's own blanket handler must not swallow the deadline."""
    try:
        while True:
            time.sleep(0.01)
    except Exception:  # noqa: BLE001
        return passed("swallowed")


@pytest.mark.parametrize("fn", [spin, backtrack, swallow])
def test_a_check_past_its_limit_errors_in_the_main_thread(fn) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    out = _outcome(fn, ARTIFACTS, CTX, 0.3)
    assert (out.status, out.message) == ("error", "check did not finish within its 0.3 s limit")
    assert time.monotonic() - t0 < 20
    assert threading.current_thread() is threading.main_thread()


def test_a_check_past_its_limit_errors_in_a_worker_thread_and_is_stopped() -> None:
    box = []
    worker = threading.Thread(target=lambda: box.append(_outcome(spin, ARTIFACTS, CTX, 0.3)))
    t0 = time.monotonic()
    worker.start()
    worker.join(10)
    assert box and box[0].status == "error" and "within its" in box[0].message
    assert time.monotonic() - t0 < 5
    # The abandoned check must not spin on for the rest of the process, holding a core and the GIL.
    deadline = time.monotonic() + 10
    while any(t.name == "tunegrade-check" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "tunegrade-check" for t in threading.enumerate())


def test_outcomes_and_exceptions_pass_through_the_deadline() -> None:
    assert call_with_deadline(lambda: passed("ok"), 5).message == "ok"

    def fault(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
        raise CandidateFault("adapter/ was not written")

    def infra(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
        raise InfraFault("reference run failed")

    assert _outcome(fault, ARTIFACTS, CTX, 5).status == "fail"
    assert _outcome(infra, ARTIFACTS, CTX, 5).status == "error"
    with pytest.raises(CheckTimeout):
        call_with_deadline(lambda: spin(ARTIFACTS, CTX), 0.2)
