"""The grade end to end on the echo fixture task: failures of the candidate vs of the grader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grader.cli import main
from grader.errors import BadInput
from grader.pipeline import GradeRequest, grade
from grader.tasks import get_task, hidden_variant
from sandbox import ExecResult, Isolation, Mount, RunSpec, Sandbox, SandboxUnavailable, register

GOOD = "import argparse, pathlib\np = argparse.ArgumentParser()\nfor a in ('--data', '--out', '--seed'): p.add_argument(a)\nx = p.parse_args()\n" \
       "pathlib.Path(x.out, 'echo.txt').write_text(pathlib.Path(x.data, 'input.txt').read_text())\n"


@pytest.fixture
def echo(fixture_tasks: Path):
    return get_task("echo", [fixture_tasks])


def _grade(echo, src: Path, out: Path, **kw):
    return grade(GradeRequest(pack=echo, source=src, out=out, **kw))


def test_nonzero_exit_is_candidate_failure(echo, submission, tmp_path: Path) -> None:
    r = _grade(echo, submission("import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)\n"), tmp_path / "o")
    assert r.runs[0].returncode == 3
    assert {c.id: c.status for c in r.checks} == {"runs": "fail", "echoed": "fail"}
    assert r.score == 0.0 and r.verdict == "below" and not r.errors
    assert "boom" in (tmp_path / "o" / r.runs[0].log_dir / "stderr.txt").read_text()


def test_timeout_is_candidate_failure(echo, submission, tmp_path: Path) -> None:
    r = _grade(echo, submission("import time\ntime.sleep(60)\n"), tmp_path / "o")
    assert r.runs[0].timed_out and r.runs[0].duration_s < 15
    runs_check = next(c for c in r.checks if c.id == "runs")
    assert runs_check.status == "fail" and "timed out" in runs_check.evidence.message


def test_time_scale_stretches_the_limit_and_is_recorded(echo, submission, tmp_path: Path) -> None:
    """A 7 s run outlives the task's 5 s limit, but not a limit scaled for a bigger model or slower host."""
    slow = submission("import time\ntime.sleep(7)\n" + GOOD)
    r = _grade(echo, slow, tmp_path / "o", time_scale=2.0, memory_scale=0.5)
    assert not r.runs[0].timed_out and r.score == 100.0
    assert r.limits_scale == {"time": 2.0, "memory": 0.5}
    assert echo.scaled(2.0, 0.5).spec.limits.model_dump() == echo.spec.limits.model_copy(
        update={"wall_time_s": 10.0, "memory_mb": 512}).model_dump()
    assert echo.spec.limits.wall_time_s == 5  # the pack itself is untouched
    assert echo.scaled() is echo


def test_megabytes_of_output_are_capped(echo, submission, tmp_path: Path) -> None:
    code = "import sys\nfor _ in range(20000): sys.stdout.write('x' * 1000 + '\\n')\n" + GOOD
    r = _grade(echo, submission(code), tmp_path / "o")
    assert r.runs[0].stdout_truncated
    assert (tmp_path / "o" / r.runs[0].log_dir / "stdout.txt").stat().st_size <= 64 * 1024
    assert r.score == 100.0


def test_symlinked_artifact_is_never_followed(echo, submission, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("hunter2\n")
    code = f"import os, argparse\np = argparse.ArgumentParser()\nfor a in ('--data', '--out', '--seed'): p.add_argument(a)\n" \
           f"x = p.parse_args()\nos.symlink({str(secret)!r}, os.path.join(x.out, 'echo.txt'))\n"
    r = _grade(echo, submission(code), tmp_path / "o")
    echoed = next(c for c in r.checks if c.id == "echoed")
    assert echoed.status == "fail" and "hunter2" not in json.dumps(r.model_dump())
    assert any("removed symlink echo.txt" in n for n in r.runs[0].notes)


def test_hidden_seed_varies_inputs_without_revealing_it(echo, submission, tmp_path: Path) -> None:
    a = _grade(echo, submission(GOOD), tmp_path / "a", hidden_seed="cohort-secret-1")
    b = _grade(echo, submission(GOOD, name="s2"), tmp_path / "b", hidden_seed="cohort-secret-2")
    assert a.hidden_variant != b.hidden_variant
    assert a.hidden_variant == hidden_variant(echo, "cohort-secret-1")
    assert "cohort-secret-1" not in (tmp_path / "a" / "result.json").read_text()
    assert a.score == b.score == 100.0


@pytest.mark.parametrize("backend", ["local", "process"])
def test_candidate_cannot_see_the_manifest(echo, submission, tmp_path: Path, backend: str) -> None:
    """Nothing the grader keeps sits under or beside a received path, even where runs see host paths:
    the run searches everything below the grandparent of its input folder."""
    code = "import pathlib, argparse\np = argparse.ArgumentParser()\nfor a in ('--data', '--out', '--seed'): p.add_argument(a)\n" \
           "x = p.parse_args()\nd = pathlib.Path(x.data).resolve()\nprint(sorted(q.name for q in d.parent.iterdir()))\n" \
           "found = [str(q) for q in d.parent.parent.rglob('*') if q.name == 'manifest.json']\nprint(found)\n"
    r = _grade(echo, submission(code), tmp_path / "o", backend=backend, allow_reduced_isolation=backend == "process")
    stdout = (tmp_path / "o" / r.runs[0].log_dir / "stdout.txt").read_text().splitlines()
    assert stdout[-2:] == ["['data']", "[]"]


@register("broken-for-tests")
class BrokenSandbox(Sandbox):
    """A backend whose engine is down: every run raises SandboxUnavailable."""

    def isolation(self) -> Isolation:
        return Isolation(backend="broken-for-tests", mechanism="none", level="full")

    def path_for(self, mount: Mount) -> str:
        return mount.target

    def run(self, spec: RunSpec) -> ExecResult:
        raise SandboxUnavailable("engine is down")


def test_infrastructure_failure_is_error_not_zero(capsys, fixture_tasks: Path, submission, tmp_path: Path) -> None:
    code = main(["--tasks-dir", str(fixture_tasks), "grade", str(submission(GOOD)), "--task", "echo",
                 "--backend", "broken-for-tests", "--out", str(tmp_path / "o")])
    assert code == 1
    r = json.loads((tmp_path / "o" / "result.json").read_text())
    assert r["verdict"] == "error" and r["score"] is None
    assert {c["status"] for c in r["checks"]} == {"error"}
    assert r["errors"][0] == "run main: engine is down"
    html = (tmp_path / "o" / "report.html").read_text()
    assert "not the candidate&#39;s fault" in html or "not the candidate's fault" in html


@pytest.mark.parametrize("options", [{"backend": "process"}, {"backend": "local", "backend_options": {"bwrap": "/nonexistent/bwrap"}}])
def test_reduced_isolation_is_refused_unless_allowed(echo, submission, tmp_path: Path, options: dict) -> None:
    """Fail closed: no bubblewrap means no grade, not a quiet grade on the host."""
    with pytest.raises(BadInput) as exc:
        _grade(echo, submission(GOOD), tmp_path / "o", **options)
    message = str(exc.value)
    assert message.startswith("refusing to run candidate code with reduced isolation (")
    assert "apt-get install bubblewrap" in message and "--allow-reduced-isolation" in message
    assert "\n" not in message and not (tmp_path / "o").exists()
    r = _grade(echo, submission(GOOD, name="s2"), tmp_path / "o2", allow_reduced_isolation=True, **options)
    assert r.isolation.level == "reduced" and r.score == 100.0


def test_cli_refuses_reduced_isolation_in_one_line(capsys, fixture_tasks: Path, submission, tmp_path: Path) -> None:
    for command in ("grade", "check"):
        code = main(["--tasks-dir", str(fixture_tasks), command, str(submission(GOOD, name=command)), "--task", "echo",
                     "--backend", "process", "--out", str(tmp_path / command)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("tunegrade: error: refusing to run candidate code with reduced isolation")
        assert err.count("\n") == 1
