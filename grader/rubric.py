"""rubrics/<role>.yaml: the job-level descriptions of one role, split into assessable competencies.

A rubric keeps each level's description verbatim (from the seed level descriptions) and splits
it into competencies. Each competency quotes the words of the description it stands for, and is
evidenced either by automated checks of task packs (``checks: [task-id/check-id, ...]``) or by
people (``panel: true``; the report lists it as awaiting panel input).

The loader checks what can be checked without the task packs: the five levels in order, every
quote a verbatim part of its level's description, unique competency ids, exactly one kind of
evidence per competency. That every ``task/check`` exists, and that the quotes cover the whole
description, is tested in ``tests/test_rubrics_coverage.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from grader.errors import BadInput
from grader.schema import Strict, load_model
from grader.taskspec import LEVELS, Level, Role

RUBRIC_SCHEMA_VERSION = 1
KEBAB = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
CHECK_REF = r"^[a-z][a-z0-9-]*/[a-z][a-z0-9-]*$"


def _error(loc: tuple[str | int, ...], message: str, value: Any) -> ValidationError:
    """A validation error at ``loc`` below the model being validated; pydantic prefixes the outer path."""
    detail = InitErrorDetails(type=PydanticCustomError("rubric", message), loc=loc, input=value)
    return ValidationError.from_exception_data("Rubric", [detail])


class Competency(Strict):
    """One assessable part of a level description, and where its evidence comes from."""

    id: str = Field(pattern=KEBAB, description="Kebab-case, unique within the rubric.")
    title: str = Field(min_length=1, description="Short name shown in reports.")
    quote: str = Field(min_length=1, description="The words of the level description this stands for, verbatim.")
    weight: float = Field(1.0, gt=0, description="Weight within its level.")
    checks: list[Annotated[str, Field(pattern=CHECK_REF)]] = Field(
        default_factory=list,
        description="Automated evidence: `task-id/check-id` of checks declared in tasks/<task-id>/task.yaml.",
    )
    panel: bool = Field(False, description="Assessed by people; reports list it as awaiting panel input.")
    note: str | None = Field(None, description="How it is assessed; for panel competencies, what evidence to look for.")

    @field_validator("checks")
    @classmethod
    def _unique_refs(cls, v: list[str]) -> list[str]:
        for i, ref in enumerate(v):
            if ref in v[:i]:
                raise _error((i,), f"duplicate check reference {ref!r}", ref)
        return v

    @model_validator(mode="after")
    def _one_kind_of_evidence(self) -> Competency:
        if bool(self.checks) == self.panel:
            raise PydanticCustomError("rubric", "give exactly one of `checks: [task-id/check-id, ...]` or `panel: true`")
        if self.panel and not (self.note and self.note.strip()):
            raise _error(("note",), "a panel competency needs a `note` naming the evidence the panel looks for", None)
        return self


class RubricLevel(Strict):
    """One job level of the role: its description verbatim, and the competencies it splits into."""

    level: Level
    description: str = Field(min_length=1, description="The level description for this role, verbatim from the source.")
    pass_score: float = Field(ge=0, le=100, description="Score (0-100) needed to meet the level.")
    competencies: list[Competency] = Field(min_length=1)

    @model_validator(mode="after")
    def _quotes_verbatim(self) -> RubricLevel:
        for j, comp in enumerate(self.competencies):
            if comp.quote not in self.description:
                raise _error(("competencies", j, "quote"), f"not found in the {self.level} description", comp.quote)
        return self


class Rubric(Strict):
    """The rubric of one role: its five levels, junior to principal."""

    schema_version: int = Field(RUBRIC_SCHEMA_VERSION, ge=1)
    id: str = Field(pattern=KEBAB, description="Matches the file name, e.g. `llm-engineer`.")
    version: str = Field(min_length=1, description="Bumped whenever a description, quote, weight or mapping changes.")
    role: Role
    title: str = Field(min_length=1)
    source: str = Field(min_length=1, description="Where the level descriptions come from.")
    levels: list[RubricLevel]

    @field_validator("levels")
    @classmethod
    def _five_levels_in_order(cls, v: list[RubricLevel]) -> list[RubricLevel]:
        got = tuple(lv.level for lv in v)
        if got != LEVELS:
            raise PydanticCustomError(
                "rubric",
                f"expected {', '.join(LEVELS)} in that order, got {', '.join(got) or 'none'}",
            )
        return v

    @model_validator(mode="after")
    def _unique_competency_ids(self) -> Rubric:
        seen: dict[str, str] = {}
        for i, lv in enumerate(self.levels):
            for j, comp in enumerate(lv.competencies):
                where = f"levels[{i}].competencies[{j}]"
                if comp.id in seen:
                    raise _error(
                        ("levels", i, "competencies", j, "id"),
                        f"duplicate competency id {comp.id!r} (first at {seen[comp.id]})",
                        comp.id,
                    )
                seen[comp.id] = where
        return self

    def level(self, name: str) -> RubricLevel:
        """The level called ``name`` (junior..principal)."""
        for lv in self.levels:
            if lv.level == name:
                return lv
        raise KeyError(name)

    def check_refs(self) -> list[tuple[str, str, str]]:
        """Every (competency id, task id, check id) the rubric relies on, in file order."""
        return [
            (comp.id, *ref.split("/", 1))  # type: ignore[misc]
            for lv in self.levels
            for comp in lv.competencies
            for ref in comp.checks
        ]


def load_rubric(path: Path) -> Rubric:
    """Load and validate one rubric file; errors are one line naming the file and the bad key."""
    rubric = load_model(Rubric, path, RUBRIC_SCHEMA_VERSION)
    if rubric.id != path.stem:
        raise BadInput(f"{path}: id: {rubric.id!r} does not match the file name (expected {path.stem!r})")
    return rubric


def load_rubrics(directory: Path) -> dict[str, Rubric]:
    """Every ``*.yaml`` rubric of ``directory``, keyed by role; one rubric per role."""
    if not directory.is_dir():
        raise BadInput(f"{directory}: no such rubrics folder")
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise BadInput(f"{directory}: no rubrics (*.yaml) found")
    rubrics: dict[str, Rubric] = {}
    origin: dict[str, Path] = {}
    for path in files:
        rubric = load_rubric(path)
        if rubric.role in rubrics:
            raise BadInput(f"{path}: role: {rubric.role!r} already has a rubric ({origin[rubric.role]})")
        rubrics[rubric.role] = rubric
        origin[rubric.role] = path
    return rubrics
