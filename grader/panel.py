"""Panel input: scoresheets for the competencies people assess, merged into result.json.

A sheet repeats the identity of the grade it was written for (candidate, task, role, level and the
submission's hash), so it cannot be merged into another grade. Raters score on a 0-4 ordinal scale
(``PANEL_SCALE``); a competency's panel score is the raters' mean over 4, judged like a check score.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import krippendorff
import yaml
from pydantic import Field, field_validator

from grader.constants import RUBRICS_DIR
from grader.errors import BadInput
from grader.result import PANEL_MAX, PANEL_SCALE, PanelAgreement, PanelScore, Result
from grader.rubric import Rubric, load_rubrics
from grader.schema import Strict, load_model, repeated
from grader.scoring import rollup

SHEET_SCHEMA_VERSION = 1
SCALE_TEXT = ", ".join(f"{k} {v}" for k, v in PANEL_SCALE.items())
IDENTITY = ("candidate", "task", "role", "level", "submission_sha256")


class SheetEntry(Strict):
    """One panel competency on a sheet; title, quote and note are there for the rater and are not merged."""

    id: str
    title: str = ""
    quote: str = ""
    note: str | None = None
    score: int | None = Field(None, ge=0, le=PANEL_MAX, strict=True, description=f"0-4: {SCALE_TEXT}; empty: not scored.")
    comment: str | None = None


class Sheet(Strict):
    """A rater's scoresheet for the panel competencies of one grade."""

    schema_version: int = Field(SHEET_SCHEMA_VERSION, ge=1)
    candidate: str
    task: str
    role: str
    level: str
    submission_sha256: str
    rater: str = Field(min_length=1)
    competencies: list[SheetEntry] = Field(min_length=1)

    @field_validator("competencies")
    @classmethod
    def _unique_ids(cls, v: list[SheetEntry]) -> list[SheetEntry]:
        dupes = repeated([e.id for e in v])
        if dupes:
            raise ValueError(f"competency listed twice: {', '.join(dupes)}")
        return v


def _identity(result: Result) -> dict[str, str]:
    return {"candidate": result.candidate, "task": result.task.id, "role": result.role, "level": result.level,
            "submission_sha256": result.submission_sha256}


def sheet_text(result: Result, rater: str | None = None) -> str:
    """A blank scoresheet for the grade's panel competencies, as commented YAML for a person to fill in."""
    panel = [c for c in result.rollup.competencies if c.kind == "panel"]
    if not panel:
        raise BadInput(f"the {result.level} level of {result.role} has no panel competencies: nothing to score")
    data = {
        "schema_version": SHEET_SCHEMA_VERSION,
        **_identity(result),
        "rater": rater,
        "competencies": [{"id": c.id, "title": c.title, "quote": c.quote, "note": c.note, "score": None,
                          "comment": None} for c in panel],
    }
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    body = re.sub(r"^rater: null$", "rater:   # your name", body, flags=re.MULTILINE)
    body = re.sub(r"^  score: null$", f"  score:   # 0-4: {SCALE_TEXT}", body, flags=re.MULTILINE)
    body = re.sub(r"^  comment: null$", "  comment:   # what you saw, in a sentence or two", body, flags=re.MULTILINE)
    header = (
        f"# tunegrade panel scoresheet: {result.candidate}, task {result.task.id}, {result.role} at {result.level} level.\n"
        "# Score each competency on the 0-4 ordinal scale against what the level expects:\n"
        f"#   {SCALE_TEXT}.\n"
        "# The competency's panel score is the raters' mean over 4 (3, meets, is 0.75), judged against the\n"
        "# level's pass score like a check score. Leave a score empty to leave that competency awaiting panel.\n"
        "# Title, quote and note are for you; the lines above `rater` tie this sheet to one grade: keep them.\n"
        "# Merge with: tunegrade panel-merge RESULT.json THIS-SHEET.yaml (merging again replaces your scores).\n"
    )
    return header + body


def load_sheet(path: Path) -> Sheet:
    """Read and validate a sheet; any error is one line naming the file and the field."""
    return load_model(Sheet, path, SHEET_SCHEMA_VERSION)


def check_sheet(sheet: Sheet, result: Result, where: Path) -> None:
    """Refuse a sheet written for another grade, or naming competencies the grade's level has no panel for."""
    want = _identity(result)
    for key in IDENTITY:
        got = getattr(sheet, key)
        if got != want[key]:
            raise BadInput(f"{where}: {key}: the sheet is for {got!r}, this result has {want[key]!r}; "
                           "a sheet merges only into the grade it was written for")
    panel = [c.id for c in result.rollup.competencies if c.kind == "panel"]
    for i, entry in enumerate(sheet.competencies):
        if entry.id not in panel:
            raise BadInput(f"{where}: competencies[{i}].id: {entry.id!r} is not a panel competency of the "
                           f"{result.level} level (panel: {', '.join(panel) or 'none'})")


def rubric_for(result: Result) -> Rubric:
    """The rubric the result was graded against: a changed rubric would re-score the level under other rules."""
    rubric = load_rubrics(RUBRICS_DIR).get(result.role)
    if rubric is None:
        raise BadInput(f"no rubric for role {result.role!r} in {RUBRICS_DIR}")
    if (rubric.id, rubric.version) != (result.rubric.id, result.rubric.version):
        raise BadInput(f"the result was graded against rubric {result.rubric.id} v{result.rubric.version}, "
                       f"{RUBRICS_DIR} has {rubric.id} v{rubric.version}: regrade before merging panel scores")
    return rubric


def agreement(panel: Sequence[PanelScore], competencies: Sequence[str]) -> PanelAgreement | None:
    """Krippendorff's ordinal alpha over raters x ``competencies`` (unscored cells missing), and the
    competencies whose raters are more than one point apart; None with fewer than two raters."""
    raters = list(dict.fromkeys(s.rater for s in panel))
    if len(raters) < 2:
        return None
    grid = {(s.rater, s.competency): s.score for s in panel}
    scored = {c: [grid[r, c] for r in raters if (r, c) in grid] for c in competencies}
    disagreements = [c for c, scores in scored.items() if scores and max(scores) - min(scores) > 1]
    paired = [score for scores in scored.values() if len(scores) >= 2 for score in scores]
    alpha, undefined = None, None
    if not paired:
        undefined = "no competency was scored by two raters"
    elif len(set(paired)) < 2:
        undefined = "the raters gave one same score wherever two scored a competency: no variation to measure against"
    else:
        data = [[grid.get((r, c), math.nan) for c in competencies] for r in raters]
        alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))
    return PanelAgreement(raters=raters, alpha=alpha, alpha_undefined=undefined, disagreements=disagreements)


def merge_sheets(result: Result, rubric: Rubric, sheets: Sequence[tuple[Path, Sheet]], time: str) -> Result:
    """The result with the sheets' scores merged: a rater's new sheet replaces all that rater's scores,
    and the roll-up and agreement are recomputed from the merged scores."""
    for where, sheet in sheets:
        check_sheet(sheet, result, where)
    panel = list(result.panel)
    for _, sheet in sheets:
        panel = [s for s in panel if s.rater != sheet.rater]
        panel += [PanelScore(rater=sheet.rater, time=time, competency=e.id, score=e.score, comment=e.comment or None)
                  for e in sheet.competencies if e.score is not None]
    roll = rollup(rubric, result.level, result.task.id, result.checks, panel)
    ids = [c.id for c in roll.competencies if c.kind == "panel"]
    return result.model_copy(update={"panel": panel, "rollup": roll, "panel_agreement": agreement(panel, ids)})
