"""The files Part B's run writes about itself: registry.json (model versions) and cost.json (its compute).

Candidate files, so they are read leniently: extra keys are allowed (a registry may carry more than the
task asks), but every field a check compares is typed, finite and present.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

REGISTRY_FILE = "registry.json"
COST_FILE = "cost.json"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class Metrics(_Lenient):
    val_nll: float = Field(description="Response-only NLL per token of this version on the validation file.")


class Version(_Lenient):
    """One model version: the base it starts from, or an adapter trained from a parent version."""

    id: str = Field(min_length=1)
    parent: str | None = Field(description="id of the version this one was trained from; null for a base.")
    kind: Literal["base", "adapter"]
    model_sha256: str | None = Field(None, description="base: the weights' sha256, as the grader records it.")
    path: str | None = Field(None, description="adapter: its folder, relative to the run's output folder.")
    artifact_sha256: str | None = Field(None, description="adapter: sha256 of its adapter_model.safetensors.")
    data_sha256: str | None = Field(None, description="adapter: sha256 of the training file's bytes.")
    config: dict[str, object] | None = Field(None, description="adapter: the training configuration.")
    metrics: Metrics | None = None

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Version:
        need = ("model_sha256",) if self.kind == "base" else ("path", "artifact_sha256", "data_sha256", "config",
                                                                "metrics")
        missing = [name for name in need if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.kind} version needs {', '.join(missing)}")
        if self.kind == "base" and self.parent is not None:
            raise ValueError("a base version has no parent")
        if self.kind == "adapter" and self.parent is None:
            raise ValueError("an adapter version needs a parent")
        return self


class Registry(_Lenient):
    versions: list[Version] = Field(min_length=1, max_length=1000)

    @field_validator("versions")
    @classmethod
    def _unique_ids(cls, versions: list[Version]) -> list[Version]:
        ids = [v.id for v in versions]
        if len(set(ids)) != len(ids):
            raise ValueError("version ids must be unique")
        return versions


class RunCost(_Lenient):
    cpu_s: float = Field(description="The run's own measure of its CPU-seconds.")

    @field_validator("cpu_s")
    @classmethod
    def _positive(cls, value: float) -> float:
        return _finite_positive(value)


class ScaledCost(_Lenient):
    cpu_hours: float = Field(description="Estimated CPU-hours of the recipe at the brief's scale_to.")
    method: str = Field(min_length=1, description="How the estimate was made.")

    @field_validator("cpu_hours")
    @classmethod
    def _positive(cls, value: float) -> float:
        return _finite_positive(value)


def _finite_positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a finite number above 0")
    return value


class CostReport(_Lenient):
    run: RunCost
    scaled: ScaledCost
