"""Promotion review: one person's results across tasks, placed on the five-level ladder of a role.

Each result is graded at its task's level, but a competency of any level may be evidenced by any
task's checks, so every level is re-scored (:func:`grader.scoring.rollup_refs`) from the checks and
panel scores of all the person's results together. Levels above the highest level any task is
pitched at cannot be evidenced here: they read "not assessed by any task", never as failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from grader.constants import MIN_LEVEL_COVERAGE, REPORT_FILE
from grader.errors import BadInput
from grader.report import render_report, slug, templates
from grader.result import CheckRecord, CompetencyRecord, PanelScore, Result
from grader.rubric import Rubric, RubricLevel
from grader.scoring import rollup_refs
from grader.taskspec import LEVELS

REVIEW_FILE = "review.html"
Status = Literal["met", "not-met", "awaiting-panel", "not-assessed"]
LevelState = Literal["met", "not-met", "incomplete", "beyond-tasks"]


@dataclass(frozen=True)
class CheckLink:
    ref: str
    status: str
    href: str | None


@dataclass(frozen=True)
class Cell:
    """One competency on the ladder: its status, and links to the evidence behind it."""

    id: str
    title: str
    quote: str
    kind: str
    weight: float
    status: Status
    score: float | None
    why: str
    checks: list[CheckLink]
    href: str | None


@dataclass(frozen=True)
class Rung:
    level: str
    pass_score: float
    state: LevelState
    score: float | None
    assessed_score: float | None
    coverage: float
    competencies: list[Cell]


@dataclass(frozen=True)
class Evidence:
    """A result used by the review, and where its report lies in the review folder."""

    result: Result
    folder: str

    @property
    def href(self) -> str:
        return f"{self.folder}/{REPORT_FILE}"


@dataclass(frozen=True)
class Review:
    person: str
    rubric: Rubric
    evidence: list[Evidence]
    ladder: list[Rung]
    top_task_level: str | None
    current: str | None
    next: str | None
    blockers: list[Cell]
    warnings: list[str]


def check_results(loaded: Sequence[tuple[Path, Result]], person: str, role: str) -> list[str]:
    """Refuse results of another role (another ladder); warnings for results under another candidate name."""
    for path, result in loaded:
        if result.role != role:
            raise BadInput(f"{path}: graded for role {result.role!r}, not {role!r}: a review places one role's results")
    return [f"{path}: candidate {result.candidate!r}, not {person!r}" for path, result in loaded
            if result.candidate != person]


def _latest_per_task(results: Sequence[Result]) -> tuple[list[Result], list[str]]:
    """A task graded twice (a regrade) counts once, by its latest grade; the others are named in warnings."""
    latest: dict[str, Result] = {}
    for r in results:
        if r.task.id not in latest or r.created_at > latest[r.task.id].created_at:
            latest[r.task.id] = r
    dropped = [f"{r.task.id}: grade of {r.created_at} ignored, a later grade of the task is used"
               for r in results if latest[r.task.id] is not r]
    return list(latest.values()), dropped


def _latest_panel(results: Sequence[Result]) -> list[PanelScore]:
    """One score per rater and competency, the latest merged, whichever result carries it."""
    best: dict[tuple[str, str], PanelScore] = {}
    for s in (s for r in results for s in r.panel):
        key = (s.rater, s.competency)
        if key not in best or s.time > best[key].time:
            best[key] = s
    return list(best.values())


def _cell(comp: CompetencyRecord, refs: list[str], lvl: RubricLevel, beyond: bool, at_level: list[Evidence],
          by_ref: dict[str, tuple[CheckRecord, Evidence]]) -> Cell:
    links = [CheckLink(ref, by_ref[ref][0].status if ref in by_ref else "not run",
                       f"{by_ref[ref][1].href}#check-{ref.split('/', 1)[1]}" if ref in by_ref else None)
             for ref in refs]
    carrier = next((e for e in at_level if any(s.competency == comp.id for s in e.result.panel)),
                   at_level[0] if at_level else None)
    status: Status
    if comp.status in ("assessed", "panel-scored"):
        met = (comp.score or 0) >= lvl.pass_score / 100
        status, why = ("met" if met else "not-met"), f"{comp.score:.2f} against {lvl.pass_score / 100:.2f}"
    elif beyond:
        status, why = "not-assessed", "not assessed by any task"
    elif comp.status == "awaiting-panel" and at_level:
        status, why = "awaiting-panel", "no panel scores merged yet"
    elif comp.status == "awaiting-panel":
        status, why = "not-assessed", f"no result at the {lvl.level} level to merge panel scores into"
    elif comp.status == "error":
        status, why = "not-assessed", "a check errored: the grader's fault, not counted"
    else:
        status, why = "not-assessed", "no result covers it"
    return Cell(id=comp.id, title=comp.title, quote=comp.quote, kind=comp.kind, weight=comp.weight, status=status,
                score=comp.score, why=why, checks=links,
                href=f"{carrier.href}#competency-{comp.id}" if comp.kind == "panel" and carrier else None)


def build_review(person: str, rubric: Rubric, results: Sequence[Result], task_levels: Iterable[str]) -> Review:
    """The ladder of ``rubric`` for ``person``: every level re-scored from all ``results``' checks and panel scores."""
    kept, warnings = _latest_per_task(results)
    warnings += [f"{r.task.id}: graded against rubric {r.rubric.id} v{r.rubric.version}; this review re-scores it "
                 f"against v{rubric.version}" for r in kept if r.rubric.version != rubric.version]
    evidence = [Evidence(r, slug(r.task.id)) for r in sorted(kept, key=lambda r: (LEVELS.index(r.level), r.task.id))]
    by_ref = {f"{e.result.task.id}/{c.id}": (c, e) for e in evidence for c in e.result.checks}
    checks = {ref: c for ref, (c, _) in by_ref.items()}
    panel = _latest_panel(kept)
    top = max((LEVELS.index(lv) for lv in [*task_levels, *(r.level for r in kept)]), default=-1)
    ladder: list[Rung] = []
    for i, lvl in enumerate(rubric.levels):
        roll = rollup_refs(rubric, lvl.level, checks, panel)
        at_level = [e for e in evidence if e.result.level == lvl.level]
        refs = {c.id: c.checks for c in lvl.competencies}
        cells = [_cell(c, refs[c.id], lvl, i > top, at_level, by_ref) for c in roll.competencies]
        state: LevelState
        if i > top:
            state = "beyond-tasks"
        elif any(c.status == "not-met" for c in cells) or (roll.score is not None and roll.score < lvl.pass_score):
            state = "not-met"
        elif roll.score is None:
            state = "incomplete"
        else:
            state = "met"
        coverage = roll.assessed_weight / roll.total_weight if roll.total_weight else 0.0
        ladder.append(Rung(level=lvl.level, pass_score=lvl.pass_score, state=state, score=roll.score,
                           assessed_score=roll.assessed_score, coverage=coverage, competencies=cells))
    climbed = 0
    while climbed < len(ladder) and ladder[climbed].state == "met":
        climbed += 1
    current = ladder[climbed - 1].level if climbed else None
    nxt = ladder[climbed] if climbed < len(ladder) else None
    blockers = [c for c in nxt.competencies if c.status != "met"] if nxt else []
    return Review(person=person, rubric=rubric, evidence=evidence, ladder=ladder,
                  top_task_level=LEVELS[top] if top >= 0 else None, current=current,
                  next=nxt.level if nxt else None, blockers=blockers, warnings=warnings)


def write_review(review: Review, out: Path) -> Path:
    """Render each result's report into ``out/<task>/`` and the review page beside them, so every link resolves."""
    out.mkdir(parents=True, exist_ok=True)
    for e in review.evidence:
        (out / e.folder).mkdir(exist_ok=True)
        render_report(e.result, out / e.folder / REPORT_FILE)
    path = out / REVIEW_FILE
    path.write_text(templates().get_template("review.html.j2").render(v=review, min_coverage=MIN_LEVEL_COVERAGE), encoding="utf-8")
    return path
