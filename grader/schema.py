"""Shared plumbing for file formats: strict models, versioned files, one-line errors naming the bad key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from grader.errors import BadInput

M = TypeVar("M", bound="Strict")


class Strict(BaseModel):
    """Base for every file format: unknown keys are errors, so typos are caught."""

    model_config = ConfigDict(extra="forbid")


def repeated(ids: list[str]) -> list[str]:
    """The ids that occur more than once, sorted: what a list validator names when ids must be unique."""
    return sorted({i for i in ids if ids.count(i) > 1})


def describe(err: ValidationError) -> str:
    """``a.b[2]: msg; c: msg`` — the pydantic errors, one path each."""
    parts = []
    for e in err.errors():
        loc = ""
        for p in e["loc"]:
            loc += f"[{p}]" if isinstance(p, int) else (f".{p}" if loc else str(p))
        parts.append(f"{loc or '(top)'}: {e['msg']}")
    return "; ".join(parts)


def read_data(path: Path) -> Any:
    """Parse a YAML or JSON file, turning any failure into a BadInput naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read: {exc}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise BadInput(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {str(exc).splitlines()[0]}") from None


def load_model(model: type[M], path: Path, current_version: int) -> M:
    """Load a versioned file: reject newer versions with an upgrade hint, validate the rest."""
    data = read_data(path)
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping at the top level")
    version = data.get("schema_version")
    if isinstance(version, int) and version > current_version:
        raise BadInput(
            f"{path}: schema_version {version} is newer than this tunegrade understands "
            f"({current_version}); upgrade tunegrade"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadInput(f"{path}: {describe(exc)}") from None
