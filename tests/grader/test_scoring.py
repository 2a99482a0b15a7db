"""Scores, verdicts and the rubric roll-up (grader/scoring.py)."""

from __future__ import annotations

import pytest

from grader.constants import RUBRICS_DIR
from grader.result import CheckRecord, Evidence
from grader.rubric import load_rubrics
from grader.constants import MIN_LEVEL_COVERAGE
from grader.scoring import grade_score, rollup, verdict, weighted_score


def rec(cid: str, status: str, score: float, weight: float = 1.0, critical: bool = False) -> CheckRecord:
    return CheckRecord(id=cid, title=cid, status=status, score=score, weight=weight, critical=critical,
                       evidence=Evidence(message="m"))


def test_errors_are_left_out_never_zero() -> None:
    checks = [rec("a", "pass", 1, 3), rec("b", "error", 0, 100), rec("c", "fail", 0, 1)]
    assert weighted_score(checks) == 75.0
    assert verdict(75.0, checks, []) == "incomplete"
    assert weighted_score([rec("b", "error", 0)]) is None
    assert verdict(None, [rec("b", "error", 0)], []) == "error"


def test_incomplete_grade_has_no_single_score() -> None:
    """A partial score over the checks that ran would read as a verdict on unassessed work."""
    checks = [rec("a", "pass", 1, 3), rec("b", "error", 0, 100)]
    assert grade_score(weighted_score(checks), verdict(weighted_score(checks), checks, [])) is None
    assert grade_score(100.0, verdict(100.0, [rec("a", "pass", 1)], ["run main: engine down"])) is None
    assert grade_score(80.0, "meets") == 80.0


def test_infra_error_makes_grade_incomplete() -> None:
    assert verdict(100.0, [rec("a", "pass", 1)], ["run main: engine down"]) == "incomplete"


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        ([rec("a", "pass", 1, 9), rec("b", "pass", 1)], "strong"),
        ([rec("a", "pass", 1, 19), rec("b", "partial", 0.5)], "meets"),  # 97.5 but not flawless
        ([rec("a", "pass", 1, 19), rec("b", "fail", 0)], "meets"),
        ([rec("a", "pass", 1, 19), rec("b", "fail", 0, critical=True)], "borderline"),  # 95, critical failed
        ([rec("a", "pass", 1, 6), rec("b", "fail", 0, 4)], "borderline"),
        ([rec("a", "pass", 1, 4), rec("b", "fail", 0, 6)], "below"),
    ],
)
def test_verdict_bands_capped_by_findings(checks: list[CheckRecord], expected: str) -> None:
    assert verdict(weighted_score(checks), checks, []) == expected


def test_rollup_scores_assessed_competencies_and_lists_panel_items() -> None:
    rubric = load_rubrics(RUBRICS_DIR)["data-scientist"]
    junior = rubric.level("junior")
    checked = [c for c in junior.competencies if any(ref.startswith("data-prep/") for ref in c.checks)]
    ids = {ref.split("/", 1)[1] for comp in checked for ref in comp.checks if ref.startswith("data-prep/")}
    checks = [rec(i, "pass", 1) for i in sorted(ids)]
    checks[0] = rec(checks[0].id, "fail", 0)
    roll = rollup(rubric, "junior", "data-prep", checks)
    statuses = {c.id: c.status for c in roll.competencies}
    assert {statuses[c.id] for c in junior.competencies if c.panel} == {"awaiting-panel"}
    assert {statuses[c.id] for c in checked} == {"assessed"}
    others = [c for c in junior.competencies if c.checks and c not in checked]
    assert {statuses[c.id] for c in others} <= {"not-covered"}
    assert roll.assessed_weight == sum(c.weight for c in checked)
    assert roll.total_weight == sum(c.weight for c in junior.competencies)
    assert (roll.assessed_competencies, roll.total_competencies) == (len(checked), len(junior.competencies))
    assert roll.assessed_score is not None and 0 < roll.assessed_score < 100
    covered = roll.assessed_weight / roll.total_weight >= MIN_LEVEL_COVERAGE
    assert roll.score == (roll.assessed_score if covered else None)


def test_level_score_withheld_when_most_of_the_level_is_unassessed() -> None:
    """"level score 100.0" was once shown from 1 of 7 competencies."""
    rubric = load_rubrics(RUBRICS_DIR)["llm-engineer"]
    middle = rubric.level("middle")
    one = next(c for c in middle.competencies if any(ref.startswith("lora-sft/") for ref in c.checks))
    ids = [ref.split("/", 1)[1] for ref in one.checks if ref.startswith("lora-sft/")]
    roll = rollup(rubric, "middle", "lora-sft", [rec(i, "pass", 1) for i in ids])
    assert roll.assessed_competencies == 1 and roll.total_competencies == len(middle.competencies) > 2
    assert roll.assessed_weight / roll.total_weight < MIN_LEVEL_COVERAGE
    assert roll.assessed_score == 100.0 and roll.score is None


def test_rollup_error_and_not_covered() -> None:
    rubric = load_rubrics(RUBRICS_DIR)["data-scientist"]
    junior = rubric.level("junior")
    roll = rollup(rubric, "junior", "other-task", [rec("x", "pass", 1)])
    assert {c.status for c in roll.competencies if not c.kind == "panel"} == {"not-covered"}
    assert roll.score is None
    comp = next(c for c in junior.competencies if c.checks and c.checks[0].startswith("data-prep/"))
    first = comp.checks[0].split("/", 1)[1]
    roll = rollup(rubric, "junior", "data-prep", [rec(first, "error", 0)])
    assert next(c for c in roll.competencies if c.id == comp.id).status == "error"
