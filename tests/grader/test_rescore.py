"""`tunegrade rescore`: the checks again on a grade's stored artifacts, the candidate's code not run,
the run's timings and environment kept, the re-scoring recorded (grader/rescore.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grader.cli import main
from grader.constants import EXEC_FILE, OUTPUT_MARKER, RESULT_FILE, SUBMISSION_DIR
from grader.result import load_result

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
ECHO_GOOD = FIXTURES / "echo" / "solutions" / "good"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["--tasks-dir", str(FIXTURES), *argv])
    return code, capsys.readouterr().err


@pytest.fixture
def graded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "ada"
    code, err = _cli(capsys, "grade", str(ECHO_GOOD), "--task", "echo", "--out", str(out), "--quiet")
    assert code == 0, err
    return out


def test_rescore_rereads_the_stored_run_and_records_itself(graded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = load_result(graded / RESULT_FILE)
    (graded / "runs" / "main" / "out" / "echo.txt").write_text("tampered")  # what the checks now read
    stdout_before = (graded / "runs" / "main" / "stdout.txt").stat().st_mtime_ns
    code, err = _cli(capsys, "rescore", str(graded))
    assert code == 0, err
    after = load_result(graded / RESULT_FILE)
    assert [c.status for c in after.checks] == ["pass", "fail"] and after.verdict != before.verdict
    assert after.timings == before.timings and after.environment == before.environment
    assert after.created_at == before.created_at and after.runs == before.runs
    assert (graded / "runs" / "main" / "stdout.txt").stat().st_mtime_ns == stdout_before  # nothing ran again
    [record] = after.rescores
    assert record.previous_verdict == "strong" and record.previous_score == 100.0 and record.tool_version
    assert "strong 100.0 -> " in err and "(changed: echoed)" in err
    assert "Re-scored" in (graded / "report.html").read_text()


def test_rescore_refuses_other_hidden_inputs(graded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(capsys, "rescore", str(graded), "--hidden-seed", "another-cohort")
    assert code == 2 and "not the hidden inputs it was graded on" in err and len(err.strip().splitlines()) == 1


def test_rescore_needs_the_stored_runs(graded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (graded / "runs" / "main" / EXEC_FILE).unlink()
    code, err = _cli(capsys, "rescore", str(graded))
    assert code == 2 and "predates re-scoring" in err and len(err.strip().splitlines()) == 1
    (graded / "runs" / "main" / EXEC_FILE).write_text(json.dumps({"returncode": "x"}))
    code, err = _cli(capsys, "rescore", str(graded))
    assert code == 2 and "unreadable" in err


def test_the_result_folder_keeps_the_submission_and_is_never_submitted(graded: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert (graded / SUBMISSION_DIR / "main.py").read_bytes() == (ECHO_GOOD / "main.py").read_bytes()
    assert (graded / OUTPUT_MARKER).is_file()
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "main.py").write_bytes((ECHO_GOOD / "main.py").read_bytes())
    inner = repo / "graded" / "self-check"
    code, err = _cli(capsys, "check", str(repo), "--task", "echo", "--out", str(inner), "--quiet")
    assert code == 0, err
    code, err = _cli(capsys, "grade", str(repo), "--task", "echo", "--out", str(tmp_path / "again"), "--quiet")
    assert code == 0, err
    assert load_result(tmp_path / "again" / RESULT_FILE).submission_sha256 == load_result(graded / RESULT_FILE).submission_sha256
    assert not (tmp_path / "again" / SUBMISSION_DIR / "graded").exists()
