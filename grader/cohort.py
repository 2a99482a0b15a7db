"""The cohort page's content, assembled from results alone: one row per grade, one column per check id across
the cohort's tasks, where each candidate sits on the metric checks' scales, the score histogram, and the
checks on which a submission's own numbers disagree with the grader's.

Metric checks describe their scale in their evidence, one convention for all of them:
``evidence.data["scale"] = {"metric": str, "base": float, "reference": float, "value": float}``, where
``base`` is the measure at 0 (the base model, unless the metric's name says otherwise), ``reference`` the
reference solution's at 1 and ``value`` the candidate's. Whether lower is better follows from the order of
base and reference, so NLLs and accuracies need no flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from grader.checks.base import Status
from grader.result import CheckRecord, Result

HISTOGRAM_BINS = 10
"""Scores 0-100 in bins of 10; 100 falls in the last bin."""
INCOMPLETE = ("error", "incomplete")
FLAGGED = ("fail", "partial")
"""A self-report check with one of these statuses is an integrity flag."""


class Scale(BaseModel):
    """A metric check's scale, as its evidence records it (see the module docstring)."""

    metric: str
    base: float
    reference: float
    value: float


def position(value: float, base: float, reference: float) -> float | None:
    """Where ``value`` sits from ``base`` (0) to ``reference`` (1): negative below the base, above 1 past
    the reference. None when the scale is undefined (no span, or a value that is not a number)."""
    span = reference - base
    if span == 0 or not all(math.isfinite(x) for x in (value, base, reference)):
        return None
    return (value - base) / span


def scale_of(check: CheckRecord) -> Scale | None:
    """The check's scale, if its evidence has a well-formed one (result.json is read from disk: anything else
    is treated as no scale rather than an error)."""
    raw = check.evidence.data.get("scale")
    if not isinstance(raw, dict):
        return None
    try:
        return Scale.model_validate(raw)
    except ValidationError:
        return None


@dataclass(frozen=True)
class Column:
    """A check id of the cohort's tasks, titled by the first task that has it."""

    id: str
    title: str


@dataclass(frozen=True)
class Cell:
    """One candidate's outcome on one check; ``position`` on metric checks."""

    status: Status
    score: float
    message: str
    position: float | None = None
    metric: str | None = None

    @property
    def sort_value(self) -> float | None:
        """What the column sorts on: the position where there is one, else the check's score (none for an
        error, which was not assessed)."""
        if self.position is not None:
            return self.position
        return None if self.status == "error" else self.score


@dataclass(frozen=True)
class SelfReportFlag:
    """A self-report check that failed or partly failed: the submission's own numbers disagree with the grader's."""

    check: str
    title: str
    status: Status
    message: str


@dataclass
class Row:
    """One grade: ``key`` names it (its report folder), ``href`` links its report."""

    result: Result
    key: str
    href: str
    cells: dict[str, Cell]
    self_reports: list[SelfReportFlag]
    similar: list[str] = field(default_factory=list)
    """Keys of the submissions whose code is suspiciously similar to this one's."""

    @property
    def flags(self) -> int:
        return len(self.self_reports) + len(self.similar)


@dataclass(frozen=True)
class Ungraded:
    """A batch entry with no result: refused as bad input, or the grader failed before a result existed."""

    name: str
    status: str
    message: str


@dataclass
class Cohort:
    tasks: list[str]
    columns: list[Column]
    graded: list[Row]
    incomplete: list[Row]
    histogram: list[int]
    ungraded: list[Ungraded] = field(default_factory=list)

    @property
    def rows(self) -> list[Row]:
        return self.graded + self.incomplete


def columns(results: list[Result]) -> list[Column]:
    """One column per check id: tasks by id, each task's checks in its order, an id shared by several tasks
    (runs, within-budget) once."""
    seen: dict[str, Column] = {}
    for result in sorted(results, key=lambda r: r.task.id):
        for check in result.checks:
            seen.setdefault(check.id, Column(check.id, check.title))
    return list(seen.values())


def cell(check: CheckRecord) -> Cell:
    scale = scale_of(check) if check.status != "error" else None
    pos = position(scale.value, scale.base, scale.reference) if scale else None
    return Cell(status=check.status, score=check.score, message=check.evidence.message, position=pos,
                metric=scale.metric if scale and pos is not None else None)


def self_report_flags(result: Result) -> list[SelfReportFlag]:
    return [SelfReportFlag(c.id, c.title, c.status, c.evidence.message)
            for c in result.checks if c.self_report and c.status in FLAGGED]


def histogram(scores: list[float | None]) -> list[int]:
    """Counts of scores in bins of 10 from 0 to 100 (100 in the last); missing scores are not counted."""
    width = 100 / HISTOGRAM_BINS
    counts = [0] * HISTOGRAM_BINS
    for score in scores:
        if score is not None:
            counts[min(HISTOGRAM_BINS - 1, max(0, int(score // width)))] += 1
    return counts


def assemble(entries: list[tuple[Result, str, str]], similar: dict[str, list[str]] | None = None,
             ungraded: list[Ungraded] | None = None) -> Cohort:
    """The cohort from (result, key, href) entries, best score first; grades with grader or infrastructure
    errors apart, because they say nothing about the candidate. ``similar`` maps a key to the keys of the
    submissions flagged as similar to it."""
    rows = [Row(result=r, key=key, href=href, cells={c.id: cell(c) for c in r.checks},
                self_reports=self_report_flags(r), similar=sorted((similar or {}).get(key, [])))
            for r, key, href in entries]
    rows.sort(key=lambda row: -(row.result.score or 0))
    graded = [row for row in rows if row.result.verdict not in INCOMPLETE]
    return Cohort(tasks=sorted({r.task.id for r, _, _ in entries}), columns=columns([r for r, _, _ in entries]),
                  graded=graded, incomplete=[row for row in rows if row.result.verdict in INCOMPLETE],
                  histogram=histogram([row.result.score for row in graded]), ungraded=list(ungraded or []))
