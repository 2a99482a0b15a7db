"""selection.json, the file a model-selection submission writes: its format, and its loader for the checks.

Everything in it is the candidate's: anything malformed is their fault (:class:`CandidateFault`), never
the grader's. Keys this model does not name are ignored, so a submission may add its own evidence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from grader.checks import CandidateFault, read_json

SELECTION_FILE = "selection.json"
REPORT_FILE = "REPORT.md"
METRIC = "val_nll"
Number = Annotated[float, Field(allow_inf_nan=False)]


class Interval(BaseModel):
    """``[lo, hi]`` with ``lo <= hi``."""

    lo: Number
    hi: Number

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, value: object) -> object:
        if isinstance(value, list | tuple) and len(value) == 2:
            return {"lo": value[0], "hi": value[1]}
        raise ValueError("must be a list [lo, hi] of two numbers")

    @model_validator(mode="after")
    def _ordered(self) -> Interval:
        if self.lo > self.hi:
            raise ValueError(f"lo {self.lo} is above hi {self.hi}")
        return self

    @property
    def width(self) -> float:
        return self.hi - self.lo


class AdapterScore(BaseModel):
    model_config = ConfigDict(extra="ignore")

    val_nll: Number
    ci: Interval
    bench_nll: Number | None = None
    bench_ci: Interval | None = None


class Flag(BaseModel):
    model_config = ConfigDict(extra="ignore")

    adapter: str
    flag: str = Field(min_length=1)
    evidence: str

    @field_validator("evidence")
    @classmethod
    def _says_something(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("evidence must say why (it is empty)")
        return value


class Selection(BaseModel):
    model_config = ConfigDict(extra="ignore")

    metric: str
    adapters: dict[str, AdapterScore]
    ranking: list[str]
    chosen: str
    flags: list[Flag] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Selection:
        if self.metric != METRIC:
            raise ValueError(f"metric must be {METRIC!r}, not {self.metric!r}")
        if sorted(self.ranking) != sorted(self.adapters):
            raise ValueError("ranking must list every adapter of `adapters` exactly once")
        if self.chosen not in self.adapters:
            raise ValueError(f"chosen {self.chosen!r} is not one of the adapters")
        unknown = sorted({f.adapter for f in self.flags} - set(self.adapters))
        if unknown:
            raise ValueError(f"flags name unknown adapters: {', '.join(unknown)}")
        return self

    def flagged(self, flag: str | None = None) -> set[str]:
        """Adapters with ``flag`` (any flag when None)."""
        return {f.adapter for f in self.flags if flag is None or f.flag.strip().lower() == flag}


def load_selection(path: Path, names: set[str]) -> Selection:
    """The candidate's selection.json, which must cover exactly the adapters ``names`` it was given."""
    try:
        selection = Selection.model_validate(read_json(path))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise CandidateFault(f"{path.name}: {where}: {first['msg']}") from None
    if set(selection.adapters) != names:
        missing, extra = sorted(names - set(selection.adapters)), sorted(set(selection.adapters) - names)
        raise CandidateFault(f"{path.name}: adapters must be exactly the candidates given"
                             + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; unknown {', '.join(extra)}" if extra else ""))
    return selection
