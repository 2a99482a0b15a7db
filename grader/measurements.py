"""Measurements that do not depend on the candidate, kept across grades.

A grade measures the base model and every reference adapter on the cohort's data as well as the
candidate's adapter; only the last is new in each grade of a cohort. The key covers everything the
value depends on (what was measured, on which data, on which device, with which code and library
versions), so a stored value is the value the grade would compute now; anything unreadable is
computed again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from grader.constants import cache_root
from grader.environment import environment

T = TypeVar("T")
STORE_DIR = "measurements"
EVALUATION_CODE = Path(__file__).resolve().parent / "evaluation"


@functools.cache
def _code_digest() -> str:
    """The grader's evaluation code: a change to how a measurement is made is another measurement."""
    h = hashlib.sha256()
    for source in sorted(EVALUATION_CODE.rglob("*.py")):
        h.update(f"{source.relative_to(EVALUATION_CODE).as_posix()}\0".encode() + source.read_bytes())
    return h.hexdigest()


@functools.cache
def _source_digest(path: str) -> str:
    """Once per process, as the module it digests is loaded once."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def device_key(device: str) -> str:
    """Where a measurement runs, as far as that can change its last bits: the GPU's model, or the CPU's
    architecture and torch's thread count (a float32 reduction's order can follow the threads)."""
    import torch

    from grader.evaluation import resolve_device

    target = resolve_device(device)
    if target.startswith("cuda"):
        return f"{target}:{torch.cuda.get_device_name(target)}"
    return f"{target}:{platform.machine()}:{torch.get_num_threads()}"


def measurement_key(parts: list[Any], code: Sequence[str | Path] = ()) -> str:
    env = {k: v for k, v in environment().items() if k != "platform"}
    sources = [_source_digest(str(Path(p).resolve())) for p in code]
    return hashlib.sha256(json.dumps([parts, env, _code_digest(), sources], sort_keys=True).encode()).hexdigest()[:32]


def stored(parts: list[Any], compute: Callable[[], T], codec: TypeAdapter[T], *,
           code: Sequence[str | Path] = ()) -> T:
    """``compute()``, or its value from an earlier grade with the same ``parts`` (JSON-able). ``code``: the
    source files outside grader/evaluation that make the measurement (the ``compute`` itself)."""
    path = cache_root() / STORE_DIR / f"{measurement_key(parts, code)}.json"
    try:
        return codec.validate_json(path.read_bytes())
    except (OSError, ValidationError):
        pass
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(codec.dump_json(value))
    os.replace(tmp, path)
    return value
