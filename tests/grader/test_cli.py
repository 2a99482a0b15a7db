"""The CLI contract: commands, exit codes and one-line errors (grader/cli.py)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from grader.cli import main
from grader.constants import TASK_MARKER
from grader.result import load_result

ECHO_GOOD = Path(__file__).resolve().parents[1] / "fixtures" / "tasks" / "echo" / "solutions" / "good"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_tasks_lists_builtin_and_extra(capsys, fixture_tasks: Path) -> None:
    code, out, _ = run(capsys, "--tasks-dir", str(fixture_tasks), "tasks")
    assert code == 0
    assert "data-prep" in out and "Prepare instruction data" in out and "junior" in out
    assert "echo" in out and "5s, 1024 MB, 1 CPU, 0 GPU, network none" in out


def test_tasks_env_var(capsys, fixture_tasks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEGRADE_TASKS", str(fixture_tasks))
    code, out, _ = run(capsys, "tasks")
    assert code == 0 and "echo" in out


def test_unknown_task_is_bad_input(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "grade", str(ECHO_GOOD), "--task", "nope", "--out", str(tmp_path / "o"))
    assert code == 2
    assert one_error_line(err).startswith("tunegrade: error: unknown task 'nope' (known: ab-and-cost, data-prep")


def test_missing_submission_is_bad_input(capsys, tmp_path: Path, fixture_tasks: Path) -> None:
    code, _, err = run(capsys, "--tasks-dir", str(fixture_tasks), "grade", str(tmp_path / "missing"), "--task", "echo",
                       "--out", str(tmp_path / "o"))
    assert code == 2
    assert one_error_line(err) == f"tunegrade: error: submission {tmp_path / 'missing'} does not exist"


def test_hostile_archive_is_bad_input_and_writes_nothing_outside(capsys, tmp_path: Path, fixture_tasks: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.py")
        info.size = 1
        import io

        tar.addfile(info, io.BytesIO(b"x"))
    code, _, err = run(capsys, "--tasks-dir", str(fixture_tasks), "grade", str(archive), "--task", "echo")
    assert code == 2
    assert "path escapes the submission" in one_error_line(err)
    assert not (tmp_path.parent / "escaped.py").exists() and not (tmp_path.parent.parent / "escaped.py").exists()
    assert not list(tmp_path.rglob("escaped.py"))


def test_usage_error_exit_2(capsys) -> None:
    code, _, err = run(capsys, "grade")
    assert code == 2
    assert "Missing argument 'SUBMISSION'" in err


def test_invalid_task_yaml_names_the_key(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "tasks" / "broken"
    bad.mkdir(parents=True)
    (bad / "task.yaml").write_text("schema_version: 1\nid: broken\nversion: '1'\ntitle: t\nsummary: s\n"
                                   "level: junior\nroles: [llm-engineer]\nentry: python x.py {nope}\n"
                                   "data: {generator: g.py, default_hidden_seed: s}\nruns: [{name: main}]\n"
                                   "checks: [{id: runs, title: t}]\ncolour: red\n")
    code, _, err = run(capsys, "--tasks-dir", str(tmp_path / "tasks"), "tasks")
    assert code == 2
    line = one_error_line(err)
    assert "task.yaml: colour: Extra inputs are not permitted" in line


def test_export_never_leaks_hidden_material(capsys, tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    code, _, _ = run(capsys, "export", "data-prep", str(dest))
    assert code == 0
    names = {p.relative_to(dest).as_posix() for p in dest.rglob("*")}
    assert {"README.md", "prepare.py", "CHECKS.md", TASK_MARKER, "raw/tickets.jsonl", "tokenizer/tokenizer.json"} <= names
    forbidden = ("hidden", "solutions", "checks.py", "grading.py", "manifest.json", "generate.py", "task.yaml")
    assert not [n for n in names if any(part in forbidden for part in n.split("/"))]
    pack = Path(__file__).resolve().parents[2] / "tasks" / "data-prep"
    hidden_sources = [p.read_bytes() for p in (pack / "solutions" / "good").rglob("*.py")]
    assert not [n for n in names if (dest / n).is_file() and (dest / n).read_bytes() in hidden_sources]
    assert "`pii-redacted`" not in (dest / "CHECKS.md").read_text()  # hidden-only check stays unnamed
    code, _, err = run(capsys, "export", "data-prep", str(dest))
    assert code == 2 and "exists and is not an empty folder" in one_error_line(err)


def test_grade_writes_result_and_report(capsys, tmp_path: Path, fixture_tasks: Path) -> None:
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "--tasks-dir", str(fixture_tasks), "grade", str(ECHO_GOOD), "--task", "echo",
                         "--out", str(out_dir), "--candidate", "ada")
    assert code == 0, err
    assert out.strip() == str(out_dir / "report.html")
    result = load_result(out_dir / "result.json")
    assert result.candidate == "ada" and result.score == 100.0 and result.verdict == "strong"
    assert [c.status for c in result.checks] == ["pass", "pass"]
    assert not (out_dir / ".scratch").exists()
    html = (out_dir / "report.html").read_text()
    assert "ada" in html and result.submission_sha256 in html and "<script" not in html and "http" not in html.replace("http-equiv", "")


def test_grade_default_out_in_working_dir(capsys, tmp_path: Path, fixture_tasks: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "--tasks-dir", str(fixture_tasks), "grade", str(ECHO_GOOD), "--task", "echo",
                       "--candidate", "Bo Li")
    assert code == 0
    assert out.strip() == "graded/Bo-Li/report.html"


def test_grade_refuses_foreign_out_folder(capsys, tmp_path: Path, fixture_tasks: Path) -> None:
    out_dir = tmp_path / "mine"
    out_dir.mkdir()
    (out_dir / "thesis.tex").write_text("precious")
    code, _, err = run(capsys, "--tasks-dir", str(fixture_tasks), "grade", str(ECHO_GOOD), "--task", "echo",
                       "--out", str(out_dir))
    assert code == 2 and "is not empty and holds no result.json" in one_error_line(err)
    assert (out_dir / "thesis.tex").read_text() == "precious"


def test_grade_json_output(capsys, tmp_path: Path, fixture_tasks: Path) -> None:
    code, out, _ = run(capsys, "--tasks-dir", str(fixture_tasks), "grade", str(ECHO_GOOD), "--task", "echo",
                       "--out", str(tmp_path / "o"), "--json")
    assert code == 0
    assert json.loads(out)["task"] == {"id": "echo", "version": "0.1.0"}


def test_check_uses_public_data_and_marker(capsys, tmp_path: Path, fixture_tasks: Path, submission) -> None:
    sub = submission(ECHO_GOOD.joinpath("main.py").read_text())
    (sub / TASK_MARKER).write_text("echo\n")
    code, out, err = run(capsys, "--tasks-dir", str(fixture_tasks), "check", str(sub), "--out", str(tmp_path / "c"))
    assert code == 0, err
    result = load_result(tmp_path / "c" / "result.json")
    assert result.hidden_variant == "echo@0.1.0#public"
    bad = submission("import sys\nsys.exit(1)\n", name="bad")
    code, _, _ = run(capsys, "--tasks-dir", str(fixture_tasks), "check", str(bad), "--task", "echo",
                     "--out", str(tmp_path / "d"))
    assert code == 3


def test_report_rerenders_cohort(capsys, tmp_path: Path, fixture_tasks: Path, submission) -> None:
    bad = submission("import sys\nsys.exit(1)\n", name="bad")
    for name, src in (("ada", ECHO_GOOD), ("bob", bad)):
        assert main(["--tasks-dir", str(fixture_tasks), "grade", str(src), "--task", "echo", "--candidate", name,
                     "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "report", str(tmp_path / "ada" / "result.json"), str(tmp_path / "bob"),
                       "--out", str(tmp_path / "cohort"))
    assert code == 0
    assert (tmp_path / "cohort" / "index.html").is_file()
    index = (tmp_path / "cohort" / "index.html").read_text()
    assert index.index("ada") < index.index("bob")  # best first
    assert "ada-echo/report.html" in index


def test_report_rejects_bad_result(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "result.json"
    bad.write_text('{"schema_version": 99}')
    code, _, err = run(capsys, "report", str(bad), "--out", str(tmp_path / "r"))
    assert code == 2 and "newer than this tunegrade understands" in one_error_line(err)
