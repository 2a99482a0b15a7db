"""task.yaml: what a task pack declares (entry command, inputs, runs, limits, checks)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from grader.schema import Strict, load_model, repeated
from sandbox.base import Limits

TASK_SCHEMA_VERSION = 1
CHECK_TIMEOUT_S = 600.0
Level = Literal["junior", "middle", "senior", "lead", "principal"]
Role = Literal["data-scientist", "llm-engineer"]
LEVELS: tuple[str, ...] = ("junior", "middle", "senior", "lead", "principal")
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class InputSpec(Strict):
    """A read-only input folder mounted for every run."""

    asset: str | None = Field(None, description="Folder relative to the task pack (e.g. a tokenizer); public.")
    generated: bool = Field(False, description="Produced by the task's data generator (hidden) or taken from public/.")
    base_model: bool = Field(False, description="The base model chosen at grading time (--base-model).")

    @model_validator(mode="after")
    def _one_source(self) -> InputSpec:
        if [bool(self.asset), self.generated, self.base_model].count(True) != 1:
            raise ValueError("give exactly one of `asset`, `generated: true` or `base_model: true`")
        return self


class Budget(Strict):
    """What a good solution needs, in figures the host's load does not move: CPU-seconds (user + system,
    every process of the run) and peak memory, as the sandbox measures them; GPU-seconds and peak GPU
    memory on GPU runs. Exceeding it is a finding (within-budget), not a kill. Wall time is no budget:
    it is the hard limit only (see limits), because it depends on what else runs on the host."""

    cpu_s: float = Field(gt=0, description="CPU-seconds allowed, sized for the default base model on a 2-core CPU.")
    reference_cpu_factor: float | None = Field(
        None, gt=0, description="If set, the CPU budget is this multiple of the reference solution's CPU time "
                                "measured on the same host (a slower or busier host moves both); cpu_s applies "
                                "where no reference run was measured.")
    memory_mb: int = Field(gt=0, description="Peak memory of all the run's processes together.")
    gpu_s: float | None = Field(None, gt=0, description="GPU-seconds (wall seconds × GPUs) on GPU runs.")
    gpu_memory_mb: int | None = Field(None, gt=0, description="Peak GPU memory on GPU runs.")


class ReferenceSpec(Strict):
    """The task's own good solution, run by the grader on each grade's inputs (cached per cohort)."""

    solution: str = Field(description="Solution folder, e.g. solutions/good: the 1.0 of normalised scales.")
    seeds: int = Field(1, ge=1, le=8, description="Honest reference runs per cohort, at the grade's seed and the "
                                                   "next ones: their spread calibrates statistical checks.")
    public: bool = Field(False, description="Also run it on the public inputs: the 0 of checks measuring what "
                                            "only the hidden data can teach.")


class RunVariant(Strict):
    """One execution of the entry command; checks compare variants (e.g. same seed twice)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    params: dict[str, str | int | float] = Field(default_factory=dict)
    seed_offset: int = Field(0, description="Added to the grading seed for this run.")
    entry: str | None = Field(None, description="Command with {placeholders} for this run, replacing the task's "
                                                "entry, e.g. a torchrun launch of the same script.")


class CheckSpec(Strict):
    """A check the task uses, its weight in the score, and whether the candidate's self-check runs it."""

    id: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    weight: float = Field(1.0, ge=0)
    visible: bool = Field(False, description="Run by `tunegrade check` on public data.")
    critical: bool = Field(False, description="Failing it caps the verdict at borderline, whatever the score.")
    timeout_s: float = Field(CHECK_TIMEOUT_S, gt=0, description="Time limit of the check (scaled by --time-scale); "
                             "past it the check errors and the grade is incomplete.")
    self_report: bool = Field(False, description="The check compares numbers the submission reports about itself "
                              "with the grader's own: failing it (or partly) is an integrity flag on the cohort page.")
    title: str


class DataSpec(Strict):
    generator: str = Field(description="Python file (relative to the pack) defining generate(dest, seed, assets).")
    public: str = Field("public", description="Folder with the generator's output for the public seed.")
    default_hidden_seed: str = Field(description="Used when no --hidden-seed is given; override it per cohort.")


class TaskSpec(Strict):
    schema_version: int = TASK_SCHEMA_VERSION
    id: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    version: str
    title: str
    summary: str
    level: Level
    roles: list[Role] = Field(min_length=1)
    entry: str = Field(description="Command with {placeholders}: inputs, {out}, {seed} and params.")
    params: dict[str, str | int | float] = Field(default_factory=dict)
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    data: DataSpec
    runs: list[RunVariant] = Field(min_length=1)
    limits: Limits = Field(default_factory=Limits)
    budget: Budget | None = None
    telemetry: bool = Field(False, description="Record run telemetry inside the candidate's Python processes.")
    reference: ReferenceSpec | None = None
    checks: list[CheckSpec] = Field(min_length=1)
    export: list[str] = Field(default_factory=list, description="Extra pack paths given to candidates (besides README.md, starter/, public data).")

    @field_validator("checks")
    @classmethod
    def _unique_checks(cls, v: list[CheckSpec]) -> list[CheckSpec]:
        dup = repeated([c.id for c in v])
        if dup:
            raise ValueError(f"duplicate check ids: {', '.join(dup)}")
        return v

    @model_validator(mode="after")
    def _placeholders_known(self) -> TaskSpec:
        known = {"out", "seed"} | set(self.inputs) | set(self.params)
        unknown = sorted(set(_PLACEHOLDER.findall(self.entry)) - known - {p for r in self.runs for p in r.params})
        if unknown:
            raise ValueError(f"entry uses unknown placeholders: {', '.join(unknown)}")
        for i, run in enumerate(self.runs):  # a run's own entry is filled with its own params only
            unknown = sorted(set(_PLACEHOLDER.findall(run.entry or "")) - known - set(run.params))
            if unknown:
                raise ValueError(f"runs[{i}].entry uses unknown placeholders: {', '.join(unknown)}")
        names = [r.name for r in self.runs]
        if len(set(names)) != len(names):
            raise ValueError("run names must be unique")
        return self

    @property
    def main_run(self) -> str:
        return self.runs[0].name

    def entry_of(self, run: str) -> str:
        """The command run ``run`` executes: its own entry, else the task's."""
        return next(r for r in self.runs if r.name == run).entry or self.entry


def load_task_spec(path: Path) -> TaskSpec:
    return load_model(TaskSpec, path, TASK_SCHEMA_VERSION)
