"""A grade's progress as it runs (grader/progress.py): stages, the run against its limit with the
candidate's last log line, each check, and a failed run's stderr, never a raw escape sequence."""

from __future__ import annotations

import io
from pathlib import Path

from grader.pipeline import GradeRequest, grade
from grader.progress import LineProgress, last_log_line, printable, tail_lines
from grader.tasks import get_task

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
ECHO_GOOD = FIXTURES / "echo" / "solutions" / "good"


def _grade(tmp_path: Path, code: str, progress: LineProgress) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "main.py").write_text(code)
    grade(GradeRequest(pack=get_task("echo", [FIXTURES]), source=sub, out=tmp_path / "out", progress=progress))
    progress.close()


def test_candidate_text_is_made_printable() -> None:
    assert printable("\x1b[2J\x1b]0;pwned\x07loss 0.5\r") == " [2J ]0;pwned loss 0.5"
    assert len(printable("x" * 500)) == 160


def test_last_log_line_reads_the_newest_file(tmp_path: Path) -> None:
    (tmp_path / "stdout.txt").write_text("step 1\nstep 2\n\n")
    assert last_log_line(tmp_path) == "step 2"
    (tmp_path / "stderr.txt").write_text("10%|#   | 1/10\r20%|##  | 2/10")
    assert last_log_line(tmp_path) == "20%|##  | 2/10"
    assert tail_lines(tmp_path / "missing.txt", 3) == []


def test_stages_runs_and_checks_are_reported(tmp_path: Path) -> None:
    stream = io.StringIO()
    _grade(tmp_path, (ECHO_GOOD / "main.py").read_text(), LineProgress(stream))
    text = stream.getvalue()
    order = ["intake: directory:sub", "inputs: hidden inputs", "run main: started (limit 5 s)", "run main: done in",
             "checks", "check runs: pass", "check echoed: pass"]
    positions = [text.index(step) for step in order]
    assert positions == sorted(positions), text


def test_a_running_run_shows_its_elapsed_time_and_last_line(tmp_path: Path) -> None:
    stream = io.StringIO()
    code = "import sys, time\nprint('epoch 1 loss 2.5', flush=True)\ntime.sleep(1.5)\n"
    _grade(tmp_path, code, LineProgress(stream, poll_s=0.5))
    assert "s of 5 s | epoch 1 loss 2.5" in stream.getvalue(), stream.getvalue()


def test_a_failed_run_shows_the_end_of_its_stderr(tmp_path: Path) -> None:
    stream = io.StringIO()
    _grade(tmp_path, "import json\njson.loads('{')\n", LineProgress(stream))
    text = stream.getvalue()
    assert "run main: exited with status 1" in text
    assert '  |   File "/sandbox/work/main.py", line 2, in <module>' in text
    assert "  | json.decoder.JSONDecodeError: Expecting property name" in text
