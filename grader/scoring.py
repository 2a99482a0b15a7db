"""Scores stage: the weighted check score, the verdict, and the roll-up onto the rubric level.

Checks that errored are the grader's fault: they are never counted as 0. The grade is then
incomplete and carries no single score (see :func:`grade_score`): what was assessed is listed,
and what was not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from grader.constants import MIN_LEVEL_COVERAGE, VERDICT_BORDERLINE, VERDICT_MEETS, VERDICT_STRONG
from grader.result import PANEL_MAX, CheckRecord, CompetencyRecord, LevelRollup, PanelScore, Verdict
from grader.rubric import Rubric


def weighted_score(checks: list[CheckRecord]) -> float | None:
    counted = [c for c in checks if c.status != "error" and c.weight > 0]
    total = sum(c.weight for c in counted)
    if not total:
        return None
    return round(100 * sum(c.weight * c.score for c in counted) / total, 1)


def grade_score(score: float | None, verdict_: Verdict) -> float | None:
    """The grade's one number: none for an incomplete grade, whose partial score over the checks
    that ran would read as a verdict on work the grader did not assess."""
    return None if verdict_ in ("incomplete", "error") else score


def verdict(score: float | None, checks: list[CheckRecord], infra_errors: list[str]) -> Verdict:
    """Score bands, capped by findings: "strong" needs every check passed, "meets" no critical check failed.

    Sixteen weighted checks would otherwise let a submission that leaks PII into training data
    score 89 and read "strong".
    """
    if score is None:
        return "error"
    if infra_errors or any(c.status == "error" for c in checks):
        return "incomplete"
    all_passed = all(c.status == "pass" for c in checks)
    critical_failed = any(c.status == "fail" and c.critical for c in checks)
    if score >= VERDICT_STRONG and all_passed:
        return "strong"
    if score >= VERDICT_MEETS and not critical_failed:
        return "meets"
    if score >= VERDICT_BORDERLINE:
        return "borderline"
    return "below"


def rollup(rubric: Rubric, level: str, task_id: str, checks: list[CheckRecord],
           panel: Sequence[PanelScore] = ()) -> LevelRollup:
    """Score each competency of ``level`` from the checks of this task that evidence it, and from the
    panel's scores of its panel competencies."""
    return rollup_refs(rubric, level, {f"{task_id}/{c.id}": c for c in checks}, panel)


def _panel_means(panel: Sequence[PanelScore]) -> dict[str, float]:
    """Each panel-scored competency's score, 0-1: the mean of its raters' scores over the scale's top."""
    by_comp: dict[str, list[int]] = {}
    for s in panel:
        by_comp.setdefault(s.competency, []).append(s.score)
    return {comp: sum(scores) / (PANEL_MAX * len(scores)) for comp, scores in by_comp.items()}


def rollup_refs(rubric: Rubric, level: str, by_ref: Mapping[str, CheckRecord],
                panel: Sequence[PanelScore] = ()) -> LevelRollup:
    """:func:`rollup` over checks keyed ``task-id/check-id``, which may come from several tasks (a review)."""
    lvl = next(lv for lv in rubric.levels if lv.level == level)
    panel_score = _panel_means(panel)
    records: list[CompetencyRecord] = []
    for comp in lvl.competencies:
        base = dict(id=comp.id, title=comp.title, quote=comp.quote, weight=comp.weight, note=comp.note)
        if comp.panel and comp.id in panel_score:
            records.append(CompetencyRecord(**base, kind="panel", status="panel-scored",
                                            score=round(panel_score[comp.id], 3)))
            continue
        if comp.panel:
            records.append(CompetencyRecord(**base, kind="panel", status="awaiting-panel"))
            continue
        mine = [by_ref[ref] for ref in comp.checks if ref in by_ref]
        refs = [c.id for c in mine]
        if not mine:
            records.append(CompetencyRecord(**base, kind="checks", status="not-covered", checks=list(comp.checks)))
        elif any(c.status == "error" for c in mine):
            records.append(CompetencyRecord(**base, kind="checks", status="error", checks=refs))
        else:
            weights = [c.weight or 1.0 for c in mine]
            score = sum(w * c.score for w, c in zip(weights, mine)) / sum(weights)
            records.append(CompetencyRecord(**base, kind="checks", status="assessed", score=round(score, 3), checks=refs))
    assessed = [r for r in records if r.status in ("assessed", "panel-scored")]
    assessed_w, total_w = sum(r.weight for r in assessed), sum(r.weight for r in records)
    assessed_score = round(100 * sum(r.weight * (r.score or 0) for r in assessed) / assessed_w, 1) if assessed_w else None
    covered = total_w > 0 and assessed_w / total_w >= MIN_LEVEL_COVERAGE
    return LevelRollup(
        role=rubric.role,
        level=level,
        score=assessed_score if covered else None,
        assessed_score=assessed_score,
        assessed_weight=assessed_w,
        total_weight=total_w,
        assessed_competencies=len(assessed),
        total_competencies=len(records),
        pass_score=lvl.pass_score,
        competencies=records,
    )
