"""The candidate report renders whatever evidence a check left, including none (grader/report.py)."""

from __future__ import annotations

from pathlib import Path

from grader.report import render_report
from grader.result import CheckRecord, Evidence, load_result

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "results" / "panel-data-prep.json"


def test_alignment_section_survives_checks_that_errored(tmp_path: Path) -> None:
    """An sft-dpo grade whose measuring checks errored has evidence without the figures; its report
    must still render (a crash here would turn the grader's fault into a lost grade)."""
    errored = {"dpo-from-sft": {"policy_distance": 0.0}, "preference-accuracy": {}, "retention": {"rise": [0.1, 0.0, 0.2]},
               "drift-bounded": {}, "distributed": {"world_size": 2}, "sft-improves": {}}
    checks = [CheckRecord(id=cid, title=cid, status="error", score=0, weight=1, evidence=Evidence(message="m", data=data))
              for cid, data in errored.items()]
    result = load_result(FIXTURE).model_copy(update={"checks": checks})
    html = render_report(result, tmp_path / "report.html").read_text()
    assert "<h2>Alignment" in html and "Preference accuracy" not in html
