"""The library's checks graded end to end on the budget fixture: CPU time, not wall time, decides, and
memory covers every process of the run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from grader.pipeline import GradeRequest, grade
from grader.tasks import get_task

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "tasks"
ARGS = "import argparse, os, sys, time\np = argparse.ArgumentParser()\np.add_argument('--out')\np.add_argument('--seed')\nx = p.parse_args()\n"


def work(iterations: int) -> str:
    """About 1 CPU-second per 8 million iterations here."""
    return ARGS + f"t = 0\nfor i in range({iterations}):\n    t += i\n"


GRANDCHILD = ARGS + """
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # the grandchild, re-parented away from the run's command
        block = bytearray(600 << 20)  # touched: resident
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(1.5)
        os.write(w, b"x")
        os._exit(0)
    os._exit(0)
os.read(r, 1)  # the command waits for it, and exits after it
"""


@pytest.fixture
def grade_budget(tmp_path: Path):
    pack = get_task("budget", [FIXTURES])

    def run(code: str, name: str):  # type: ignore[no-untyped-def]
        sub = tmp_path / name
        sub.mkdir()
        (sub / "main.py").write_text(code)
        result = grade(GradeRequest(pack=pack, source=sub, out=tmp_path / f"out-{name}", candidate=name))
        return {c.id: c for c in result.checks}, result

    return run


@pytest.fixture
def busy_host():
    """CPU-heavy processes on every core of the host, for as long as the test runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for hog in hogs:
        hog.kill()
        hog.wait()


@pytest.mark.slow
def test_honest_run_stays_within_budget_on_a_busy_host(grade_budget, busy_host) -> None:
    checks, result = grade_budget(work(10_000_000), "honest")
    budget = checks["within-budget"]
    assert budget.status == "pass", budget.evidence.message
    data = budget.evidence.data
    assert data["cpu_s"] < data["cpu_budget_s"] == 4
    assert data["wall_s"] >= data["cpu_s"]  # the figures are the sandbox's, and wall time is not what decides


@pytest.mark.slow
def test_over_budget_run_fails_even_on_an_idle_host(grade_budget) -> None:
    checks, _ = grade_budget(work(80_000_000), "greedy")
    budget = checks["within-budget"]
    assert budget.status == "fail" and "CPU-s of 4 (the task's budget)" in budget.evidence.message


@pytest.mark.slow
def test_memory_of_a_grandchild_counts(grade_budget) -> None:
    """A double-forked grandchild holding 600 MB was once read as the command's own 13 MB."""
    checks, result = grade_budget(GRANDCHILD, "grandchild")
    assert checks["runs"].status == "pass"
    budget = checks["within-budget"]
    assert budget.status == "fail" and "of a 400 MB budget" in budget.evidence.message, budget.evidence.message
    assert result.runs[0].max_rss_mb is not None and result.runs[0].max_rss_mb > 550


@pytest.mark.slow
def test_a_run_that_did_not_finish_never_passes_the_budget(grade_budget) -> None:
    """A run that crashed at once used "0 s and 14 MB": that is no evidence of being within budget."""
    checks, _ = grade_budget("raise SystemExit(3)\n", "crash")
    assert checks["within-budget"].status == "fail"
    assert "no figures to hold to the budget" in checks["within-budget"].evidence.message
