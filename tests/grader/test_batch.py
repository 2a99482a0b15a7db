"""`tunegrade batch`: every submission graded once, bad ones recorded without stopping the batch, and
a batch killed with SIGKILL resumed without losing or repeating a finished grade (grader/batch.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grader.batch import BatchRequest, Slots, find_entries, run_batch
from grader.batch_store import BatchStore, read_rows
from grader.cli import main
from grader.constants import COHORT_FILE, OUTPUT_MARKER, REPORT_FILE, RESULT_FILE, TASK_MARKER
from grader.errors import BadInput
from grader.result import load_result
from grader.tasks import get_task

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "tasks"
ECHO_GOOD = FIXTURES / "echo" / "solutions" / "good"
SLOW = "import time; time.sleep({s})\n"


def _candidate(root: Path, name: str, *, sleep: float = 0.0, broken: bool = False) -> Path:
    """An echo submission; ``sleep`` seconds before it answers, ``broken`` exits 1."""
    d = root / name
    d.mkdir(parents=True)
    code = (ECHO_GOOD / "main.py").read_text()
    if sleep:
        code = SLOW.format(s=sleep) + code
    if broken:
        code = "raise SystemExit('no answer')\n"
    (d / "main.py").write_text(code)
    return d


def _rows(out: Path) -> dict[str, tuple]:
    return {name: (r.status, r.attempts, r.finished_at) for name, r in read_rows(out).items()}


def test_find_entries_names_markers_and_skips(tmp_path: Path) -> None:
    subs = tmp_path / "subs"
    _candidate(subs, "ada")
    (subs / "ada" / TASK_MARKER).write_text("echo\n")
    _candidate(subs, "bo")
    (subs / "cy.tar.gz").write_bytes(b"not really")
    (subs / "notes.txt").write_text("not a submission")
    (subs / ".hidden").mkdir()
    (subs / "graded").mkdir()
    (subs / "graded" / OUTPUT_MARKER).write_text("")
    entries = find_entries(subs, None, tmp_path / "out")
    assert [(e.name, e.task) for e in entries] == [("ada", "echo"), ("bo", None), ("cy", None)]
    assert [e.task for e in find_entries(subs, "data-prep", subs / "graded")] == ["data-prep"] * 3
    (subs / "ada.zip").write_bytes(b"")
    with pytest.raises(BadInput, match="two submissions are named 'ada'"):
        find_entries(subs, None, tmp_path / "out")


def test_slots_admit_by_the_tasks_cpus() -> None:
    lora, echo = get_task("lora-sft"), get_task("echo", [FIXTURES])
    slots = Slots(cpus=2, gpus=0, jobs=None)
    slots.acquire(echo)
    assert slots._fits(1, 0) and not slots._fits(2, 0)  # a second echo fits, a lora-sft grade waits
    slots.release(echo)
    slots.acquire(lora)
    assert not slots._fits(1, 0)
    slots.release(lora)
    counted = Slots(cpus=2, gpus=0, jobs=3)
    for _ in range(3):
        counted.acquire(lora)
    assert not counted._fits(0, 0)


def test_batch_records_every_outcome_and_never_stops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subs, out = tmp_path / "subs", tmp_path / "out"
    _candidate(subs, "ada")
    _candidate(subs, "bo", broken=True)
    (subs / "cy.zip").write_bytes(b"PK\x03\x04 truncated")
    code = main(["--tasks-dir", str(FIXTURES), "batch", str(subs), "--task", "echo", "--out", str(out),
                 "--allow-reduced-isolation", "--backend", "process"])
    err = capsys.readouterr().err
    assert code == 0, err
    rows = _rows(out)
    assert {name: row[0] for name, row in rows.items()} == {"ada": "graded", "bo": "graded", "cy": "bad-input"}
    assert load_result(out / "ada" / RESULT_FILE).verdict == "strong"
    assert load_result(out / "bo" / RESULT_FILE).verdict == "below"
    assert (out / "ada" / REPORT_FILE).is_file() and (out / COHORT_FILE).is_file()
    index = (out / COHORT_FILE).read_text()
    assert 'href="ada/report.html"' in index and "cy" in index and "unreadable archive" in index
    assert "bo: graded below," in err


def test_a_sandbox_that_cannot_isolate_refuses_the_batch_not_each_candidate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subs, out = tmp_path / "subs", tmp_path / "out"
    _candidate(subs, "ada")
    code = main(["--tasks-dir", str(FIXTURES), "batch", str(subs), "--task", "echo", "--out", str(out),
                 "--backend", "process"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "refusing to run candidate code with reduced isolation" in err[0]
    assert read_rows(out) == {}  # nothing recorded as the candidate's bad input


def test_grader_fault_is_recorded_as_error_and_retried_on_resume(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    shutil.copytree(FIXTURES / "echo", tasks / "echo")
    checks = tasks / "echo" / "checks.py"
    good_checks = checks.read_text()
    checks.write_text(good_checks.replace('    out = artifacts.require("main")', '    1 / 0\n    out = artifacts.require("main")'))
    subs, out = tmp_path / "subs", tmp_path / "out"
    _candidate(subs, "ada")
    _candidate(subs, "bo")
    req = BatchRequest(folder=subs, out=out, task="echo", tasks_dirs=[tasks],
                       options={"backend": "process", "allow_reduced_isolation": True})
    summary = run_batch(req)
    assert summary.count("error") == 2 and "check echoed: check crashed: ZeroDivisionError" in summary.rows["ada"].message
    checks.write_text(good_checks)  # the grader is fixed: a resume grades what errored, only that
    summary = run_batch(req)
    assert summary.count("graded") == 2 and sorted(summary.graded_now) == ["ada", "bo"]
    assert run_batch(req).graded_now == []
    assert [r.attempts for r in run_batch(BatchRequest(**{**req.__dict__, "regrade": True})).rows.values()] == [3, 3]


def test_a_second_batch_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    store = BatchStore(tmp_path)
    try:
        with pytest.raises(BadInput, match="another batch is running"):
            BatchStore(tmp_path)
    finally:
        store.close()


@pytest.mark.slow
def test_sigkill_mid_batch_then_resume_grades_each_submission_exactly_once(tmp_path: Path) -> None:
    subs, out = tmp_path / "subs", tmp_path / "out"
    names = [f"cand{i}" for i in range(6)]
    for name in names:
        _candidate(subs, name, sleep=1.5)
    argv = [sys.executable, "-c", "from grader.cli import entry; entry()", "--tasks-dir", str(FIXTURES), "batch",
            str(subs), "--task", "echo", "--out", str(out), "--jobs", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(argv, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = _rows(out)
        if sum(r[0] == "graded" for r in rows.values()) >= 2 and any(r[0] == "running" for r in rows.values()):
            break
        assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = _rows(out)
    finished = {n for n, r in before.items() if r[0] == "graded"}
    assert 2 <= len(finished) < len(names), before

    second = subprocess.run(argv, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    after = _rows(out)
    assert set(after) == set(names) and all(r[0] == "graded" for r in after.values())
    for name in finished:  # finished before the kill: untouched
        assert after[name] == before[name] and after[name][1] == 1
    for name in set(names) - finished:  # in flight at the kill (attempt 2) or never started (attempt 1)
        assert after[name][1] == (2 if name in before else 1)
    for name in names:
        assert load_result(out / name / RESULT_FILE).verdict == "strong"
    assert f"{len(finished)} already graded" in second.stderr


def test_rescoring_a_batch_folder_rescores_each_grade_and_its_cohort_page(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    subs, out = tmp_path / "subs", tmp_path / "out"
    _candidate(subs, "ada")
    _candidate(subs, "bo")
    assert main(["--tasks-dir", str(FIXTURES), "batch", str(subs), "--task", "echo", "--out", str(out), "--quiet"]) == 0
    (out / "bo" / "runs" / "main" / "out" / "echo.txt").write_text("tampered")
    assert main(["--tasks-dir", str(FIXTURES), "rescore", str(out)]) == 0
    rows = read_rows(out)
    assert (rows["ada"].verdict, rows["bo"].verdict) == ("strong", load_result(out / "bo" / RESULT_FILE).verdict)
    assert rows["bo"].verdict != "strong" and len(load_result(out / "ada" / RESULT_FILE).rescores) == 1
    assert "(changed: echoed)" in capsys.readouterr().err


def test_an_entry_whose_marker_names_no_task_is_its_own_bad_input(tmp_path: Path) -> None:
    subs, out = tmp_path / "subs", tmp_path / "out"
    _candidate(subs, "ada")
    (subs / "ada" / TASK_MARKER).write_text("echo\n")
    _candidate(subs, "bo")
    (subs / "bo" / TASK_MARKER).write_text("no-such-task\n")
    summary = run_batch(BatchRequest(folder=subs, out=out, tasks_dirs=[FIXTURES],
                                     options={"backend": "process", "allow_reduced_isolation": True}))
    assert summary.rows["ada"].status == "graded"
    assert summary.rows["bo"].status == "bad-input" and "names no known task ('no-such-task')" in summary.rows["bo"].message


def test_a_result_that_arrives_twice_or_late_is_recorded_once(tmp_path: Path) -> None:
    store = BatchStore(tmp_path)
    try:
        old = store.start("ada", "echo", "ada")
        new = store.start("ada", "echo", "ada")  # a restarted coordinator started ada again
        assert not store.finish("ada", old, "graded", seconds=1.0, verdict="below", score=10.0)
        assert store.finish("ada", new, "graded", seconds=2.0, verdict="strong", score=90.0)
        assert not store.finish("ada", new, "graded", seconds=3.0, verdict="below", score=0.0)  # the same, again
        row = store.rows()["ada"]
        assert (row.status, row.verdict, row.score, row.seconds, row.attempts) == ("graded", "strong", 90.0, 2.0, 2)
    finally:
        store.close()


def test_a_batch_folder_from_before_tokens_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "batch.sqlite")
    db.execute("CREATE TABLE grades (candidate TEXT PRIMARY KEY, task TEXT, source TEXT NOT NULL, status TEXT NOT "
               "NULL, verdict TEXT, score REAL, message TEXT, result TEXT, started_at TEXT NOT NULL, finished_at "
               "TEXT, seconds REAL, attempts INTEGER NOT NULL DEFAULT 0)")
    db.execute("INSERT INTO grades VALUES ('ada', 'echo', 'ada', 'running', NULL, NULL, NULL, NULL, 'then', NULL, "
               "NULL, 1)")
    db.commit()
    db.close()
    store = BatchStore(tmp_path)
    try:
        assert store.rows()["ada"].token is None
        token = store.start("ada", "echo", "ada")
        assert store.finish("ada", token, "graded", seconds=1.0) and store.rows()["ada"].attempts == 2
    finally:
        store.close()
