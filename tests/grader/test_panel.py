"""Panel input (grader/panel.py, `tunegrade panel-sheet` and `panel-merge`): sheets, merging, agreement."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import krippendorff
import pytest
import yaml

from grader.cli import main
from grader.panel import agreement, load_sheet
from grader.result import PanelScore, load_result, save_result

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib: make helpers importable
from result_helpers import FIXTURE, as_task, data_prep  # noqa: E402

SENIOR_PANEL = ["production-pipelines", "data-curation", "hyperparameter-optimization"]


@pytest.fixture
def graded(tmp_path: Path) -> Path:
    """A stored llm-engineer grade of data-prep (junior: one panel competency)."""
    path = tmp_path / "grade" / "result.json"
    path.parent.mkdir()
    path.write_text(FIXTURE.read_text())
    return path


@pytest.fixture
def senior(tmp_path: Path) -> Path:
    """A stored grade at the senior level, which has three panel competencies."""
    path = tmp_path / "senior" / "result.json"
    path.parent.mkdir()
    save_result(as_task(data_prep(), "sft-dpo"), path)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def sheet(capsys: pytest.CaptureFixture[str], result: Path, rater: str, scores: dict[str, Any],
          comments: dict[str, str] | None = None) -> Path:
    """Write a sheet with `panel-sheet` and fill it in as a rater would."""
    path = result.parent / f"{rater}.yaml"
    code, _, err = run(capsys, "panel-sheet", str(result), "--rater", rater, "--out", str(path))
    assert code == 0, err
    data = yaml.safe_load(path.read_text())
    for entry in data["competencies"]:
        entry["score"] = scores.get(entry["id"])
        entry["comment"] = (comments or {}).get(entry["id"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_sheet_lists_the_levels_panel_competencies_and_round_trips(capsys, senior: Path) -> None:
    code, out, _ = run(capsys, "panel-sheet", str(senior))
    assert code == 0
    assert "# tunegrade panel scoresheet" in out and "0 not shown, 1 below, 2 approaching, 3 meets, 4 exceeds" in out
    path = senior.parent / "blank.yaml"
    path.write_text(out)
    with pytest.raises(Exception, match="rater: Input should be a valid string"):
        load_sheet(path)  # a sheet needs its rater before it can be merged
    filled = load_sheet(sheet(capsys, senior, "ann", {"data-curation": 3}))
    result = load_result(senior)
    assert (filled.candidate, filled.task, filled.role, filled.level, filled.submission_sha256) == (
        result.candidate, "sft-dpo", "llm-engineer", "senior", result.submission_sha256)
    assert [e.id for e in filled.competencies] == SENIOR_PANEL
    assert filled.competencies[0].quote == "Designs production fine-tuning pipelines"
    assert [e.score for e in filled.competencies] == [None, 3, None]


def test_bad_sheet_is_one_line_naming_the_field(capsys, senior: Path) -> None:
    path = sheet(capsys, senior, "ann", {"production-pipelines": 2, "hyperparameter-optimization": 7})
    before = senior.read_text()
    code, _, err = run(capsys, "panel-merge", str(senior), str(path))
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"tunegrade: error: {path}: competencies[2].score: ")
    assert "less than or equal to 4" in line
    assert senior.read_text() == before


def test_sheet_of_another_grade_is_refused(capsys, graded: Path, senior: Path) -> None:
    other = sheet(capsys, senior, "ann", {"data-curation": 3})
    code, _, err = run(capsys, "panel-merge", str(graded), str(other))
    assert code == 2 and "task: the sheet is for 'sft-dpo', this result has 'data-prep'" in one_error_line(err)
    data = yaml.safe_load(other.read_text())
    data["submission_sha256"] = "0" * 64
    other.write_text(yaml.safe_dump(data))
    code, _, err = run(capsys, "panel-merge", str(senior), str(other))
    assert code == 2 and "submission_sha256: the sheet is for '000" in one_error_line(err)
    data = yaml.safe_load(sheet(capsys, senior, "ann", {}).read_text())
    data["competencies"][0]["id"] = "multi-stage-training"  # scored by checks, not by the panel
    other.write_text(yaml.safe_dump(data))
    code, _, err = run(capsys, "panel-merge", str(senior), str(other))
    assert code == 2 and "competencies[0].id: 'multi-stage-training' is not a panel competency" in one_error_line(err)


def test_merge_turns_awaiting_panel_into_panel_scored_and_rescores_the_level(capsys, graded: Path) -> None:
    before = load_result(graded).rollup
    comp = next(c for c in before.competencies if c.kind == "panel")
    assert comp.status == "awaiting-panel" and before.score is None  # 37.5% of the level assessed: no level score
    path = sheet(capsys, graded, "ann", {comp.id: 3}, {comp.id: "explained rank and alpha"})
    code, out, _ = run(capsys, "panel-merge", str(graded), str(path))
    assert code == 0 and out.strip().endswith("report.html")
    after = load_result(graded)
    merged = next(c for c in after.rollup.competencies if c.id == comp.id)
    assert (merged.status, merged.score) == ("panel-scored", 0.75)
    assert after.rollup.assessed_weight == before.assessed_weight + comp.weight
    assert after.rollup.assessed_competencies == before.assessed_competencies + 1
    assert after.rollup.score is not None and after.rollup.score < before.assessed_score
    assert [(s.rater, s.competency, s.score, s.comment) for s in after.panel] == [
        ("ann", comp.id, 3, "explained rank and alpha")]
    assert after.panel_agreement is None  # one rater
    report = (graded.parent / "report.html").read_text()
    assert 'id="panel"' in report and "explained rank and alpha" in report and "3 · meets" in report


def test_unscored_entries_stay_awaiting_panel(capsys, senior: Path) -> None:
    path = sheet(capsys, senior, "ann", {"data-curation": 4})
    assert run(capsys, "panel-merge", str(senior), str(path))[0] == 0
    statuses = {c.id: c.status for c in load_result(senior).rollup.competencies if c.kind == "panel"}
    assert statuses == {"production-pipelines": "awaiting-panel", "data-curation": "panel-scored",
                        "hyperparameter-optimization": "awaiting-panel"}


def test_remerging_a_raters_sheet_replaces_their_scores(capsys, senior: Path) -> None:
    first = sheet(capsys, senior, "ann", {"production-pipelines": 1, "data-curation": 2})
    assert run(capsys, "panel-merge", str(senior), str(first))[0] == 0
    second = sheet(capsys, senior, "ann", {"data-curation": 4})
    assert run(capsys, "panel-merge", str(senior), str(second))[0] == 0
    result = load_result(senior)
    assert [(s.rater, s.competency, s.score) for s in result.panel] == [("ann", "data-curation", 4)]
    assert {c.id: c.status for c in result.rollup.competencies}["production-pipelines"] == "awaiting-panel"


def test_two_raters_agreement_and_disagreement(capsys, senior: Path) -> None:
    ann = sheet(capsys, senior, "ann", dict(zip(SENIOR_PANEL, [3, 2, 4])))
    bob = sheet(capsys, senior, "bob", dict(zip(SENIOR_PANEL, [3, 4, 4])))
    code, _, err = run(capsys, "panel-merge", str(senior), str(ann), str(bob))
    assert code == 0
    result = load_result(senior)
    agree = result.panel_agreement
    assert agree is not None and agree.raters == ["ann", "bob"]
    # By hand: units (3,3), (2,4), (4,4); n2=1, n3=2, n4=3, n=6. Ordinal distances: d(2,3)=1.5²=2.25,
    # d(2,4)=(6-2)²=16, d(3,4)=2.5²=6.25. Observed 2*16/6; expected 2*(2*2.25 + 3*16 + 6*6.25)/30 = 6; alpha = 1/9.
    assert agree.alpha == pytest.approx(1 / 9)
    assert agree.alpha == pytest.approx(
        krippendorff.alpha(reliability_data=[[3, 2, 4], [3, 4, 4]], level_of_measurement="ordinal"))
    assert agree.disagreements == ["data-curation"]
    assert "alpha over 2 raters: 0.111" in err and "disagree by more than one point on: data-curation" in err
    curation = next(c for c in result.rollup.competencies if c.id == "data-curation")
    assert curation.score == 0.75  # (2 + 4) / 2 / 4
    report = (senior.parent / "report.html").read_text()
    assert "Krippendorff" in report and "0.111" in report and "disagree &gt; 1 point" in report


def scores(*rows: tuple[str, str, int]) -> list[PanelScore]:
    return [PanelScore(rater=r, time="2026-01-01T00:00:00+00:00", competency=c, score=s) for r, c, s in rows]


def test_alpha_with_missing_scores_matches_krippendorff() -> None:
    panel = scores(("ann", "a", 1), ("ann", "b", 2), ("ann", "c", 3), ("bob", "a", 1), ("bob", "b", 3),
                   ("bob", "d", 4), ("cy", "c", 3), ("cy", "d", 4))
    agree = agreement(panel, ["a", "b", "c", "d"])
    nan = math.nan
    expected = krippendorff.alpha(reliability_data=[[1, 2, 3, nan], [1, 3, nan, 4], [nan, nan, 3, 4]],
                                  level_of_measurement="ordinal")
    assert agree is not None and agree.alpha == pytest.approx(expected) and agree.disagreements == []


@pytest.mark.parametrize("panel, reason", [
    (scores(("ann", "a", 3), ("bob", "a", 3), ("ann", "b", 3), ("bob", "b", 3)), "one same score"),
    (scores(("ann", "a", 3), ("bob", "a", 3), ("ann", "b", 1)), "one same score"),
    (scores(("ann", "a", 3), ("bob", "b", 1)), "no competency was scored by two raters"),
])
def test_undefined_alpha_is_said_not_raised(panel: list[PanelScore], reason: str) -> None:
    agree = agreement(panel, ["a", "b"])
    assert agree is not None and agree.alpha is None and reason in (agree.alpha_undefined or "")


def test_undefined_alpha_reaches_the_report(capsys, senior: Path) -> None:
    ann = sheet(capsys, senior, "ann", {"data-curation": 3})
    bob = sheet(capsys, senior, "bob", {"data-curation": 3})
    assert run(capsys, "panel-merge", str(senior), str(ann), str(bob))[0] == 0
    assert "undefined: the raters gave one same score" in (senior.parent / "report.html").read_text()
