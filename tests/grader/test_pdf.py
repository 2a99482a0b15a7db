"""PDF copies of the pages (grader/pdf.py, `tunegrade report --pdf`): printed by the system Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from grader.cli import main
from grader.pdf import CHROMIUM_ENV, find_chromium, html_to_pdf

ECHO_GOOD = Path(__file__).resolve().parents[1] / "fixtures" / "tasks" / "echo" / "solutions" / "good"


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two stored grades of the echo fixture task: enough for candidate pages and a cohort page."""
    root = tmp_path_factory.mktemp("graded")
    tasks = str(Path(__file__).resolve().parents[1] / "fixtures" / "tasks")
    for name in ("ada", "bob"):
        assert main(["--tasks-dir", tasks, "grade", str(ECHO_GOOD), "--task", "echo", "--candidate", name,
                     "--out", str(root / name)]) == 0
    return root


@pytest.mark.browser
def test_report_pdf_beside_each_page(chromium: Path, graded: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pages"
    capsys.readouterr()
    assert main(["report", str(graded / "ada"), str(graded / "bob"), "--out", str(out), "--pdf"]) == 0
    listed = capsys.readouterr().out.split()
    pages = sorted(out.rglob("*.html"))
    assert len(pages) == 3
    for page in pages:
        pdf = page.with_suffix(".pdf")
        assert str(pdf) in listed
        assert pdf.read_bytes().startswith(b"%PDF")


@pytest.mark.browser
def test_html_to_pdf(chromium: Path, tmp_path: Path) -> None:
    html = tmp_path / "page.html"
    html.write_text("<!doctype html><title>t</title><p>printed</p>", encoding="utf-8")
    pdf = html_to_pdf(html, tmp_path / "out" / "page.pdf")
    assert pdf == tmp_path / "out" / "page.pdf" and pdf.read_bytes().startswith(b"%PDF")


def test_pdf_without_chromium_is_bad_input(graded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys) -> None:
    monkeypatch.delenv(CHROMIUM_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    capsys.readouterr()
    assert main(["report", str(graded / "ada"), "--out", str(tmp_path / "pages"), "--pdf"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tunegrade: error: --pdf needs Chromium"), lines


def test_find_chromium_env_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    browser = tmp_path / "bin" / "chromium"
    browser.parent.mkdir()
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    monkeypatch.setenv("PATH", str(browser.parent))
    monkeypatch.setenv(CHROMIUM_ENV, "/opt/my/chrome")
    assert find_chromium() == Path("/opt/my/chrome")
    monkeypatch.delenv(CHROMIUM_ENV)
    assert find_chromium() == browser
