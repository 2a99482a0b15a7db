"""What a check is: a pure function of the run's artifacts and the grading context.

A check never runs commands. It returns an :class:`Outcome`; the runner attaches the id and
weight. A check raises :class:`CandidateFault` when the submission's output is unusable (that
is a ``fail``); any other exception is a grader fault and becomes ``error``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, Field

from grader.taskspec import TaskSpec
from sandbox.base import ExecResult

Status = Literal["pass", "partial", "fail", "error"]


class CandidateFault(Exception):
    """The submission's output cannot be used; the check fails with this message."""


class InfraFault(Exception):
    """What the check needs is missing because the grader or sandbox failed; the check errors."""


class Outcome(BaseModel):
    status: Status
    score: float = Field(ge=0, le=1)
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


def passed(message: str, **data: Any) -> Outcome:
    return Outcome(status="pass", score=1.0, message=message, data=data)


def failed(message: str, **data: Any) -> Outcome:
    return Outcome(status="fail", score=0.0, message=message, data=data)


def graded(score: float, message: str, **data: Any) -> Outcome:
    """pass at 1, fail at 0, partial in between."""
    score = min(1.0, max(0.0, score))
    status: Status = "pass" if score >= 1.0 else "fail" if score <= 0.0 else "partial"
    return Outcome(status=status, score=score, message=message, data=data)


@dataclass
class RunArtifacts:
    """One execution of the entry command: its outcome and its output folder (host path)."""

    name: str
    argv: list[str]
    out_dir: Path
    result: ExecResult | None
    infra_error: str | None = None
    notes: list[str] = field(default_factory=list)
    telemetry_path: Path | None = None

    def describe_failure(self) -> str:
        r = self.result
        assert r is not None
        if r.timed_out:
            return f"run '{self.name}' timed out after {r.duration_s:.0f}s"
        if r.oom_killed:
            return f"run '{self.name}' ran out of memory"
        if r.disk_exceeded:
            return f"run '{self.name}' wrote more than its disk limit to its working copy and outputs and was killed"
        return f"run '{self.name}' exited with status {r.returncode}"


@dataclass
class Artifacts:
    runs: dict[str, RunArtifacts]
    references: list[RunArtifacts] = field(default_factory=list)
    """The reference solution's main run on these inputs, one per reference seed (the grade's seed first)."""
    public_reference: RunArtifacts | None = None
    """The reference solution's main run on the public inputs, where the task asks for it."""

    def reference(self, index: int = 0) -> Path:
        """The output folder of a reference run; the grader's fault if it is missing or failed."""
        if index >= len(self.references):
            raise InfraFault("the task's reference solution was not run")
        return _succeeded(self.references[index], "the reference solution's run")

    def public_reference_out(self) -> Path:
        if self.public_reference is None:
            raise InfraFault("the reference solution was not run on the public inputs")
        return _succeeded(self.public_reference, "the reference solution's run on the public inputs")

    def require(self, name: str) -> Path:
        """The output folder of a run that succeeded; otherwise the check cannot proceed."""
        run = self.runs.get(name)
        if run is None:
            raise InfraFault(f"run '{name}' was not executed")
        if run.infra_error or run.result is None:
            raise InfraFault(f"run '{name}' could not be executed: {run.infra_error}")
        if not run.result.ok:
            raise CandidateFault(run.describe_failure())
        return run.out_dir


def _succeeded(run: RunArtifacts, what: str) -> Path:
    if run.result is None or not run.result.ok:
        reason = run.infra_error or (run.describe_failure() if run.result else "not executed")
        raise InfraFault(f"{what} did not succeed ({reason})")
    return run.out_dir


@dataclass
class CheckContext:
    """What the grader knows: the task, its inputs (host paths), hidden data, planted cases, parameters.

    ``data_dir`` is the generator's whole output, including grader-only data (e.g. a held-out
    test set) that is never mounted into the candidate's sandbox.
    """

    task_dir: Path
    inputs: dict[str, Path]
    params: dict[str, Any]
    seed: int
    manifest: dict[str, Any] | None
    data_dir: Path | None = None
    spec: TaskSpec | None = None
    device: str = "cpu"
    cache: dict[str, Any] = field(default_factory=dict)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """Compute once per grade what several checks need (e.g. the parsed outputs)."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


def sibling_module(anchor: str, name: str) -> ModuleType:
    """Load ``name``.py next to ``anchor`` (a task's checks.py, which the grader loads by path, not as a
    package), once per process."""
    path = Path(anchor).resolve().with_name(f"{name}.py")
    module_name = f"_tunegrade_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


CheckFn = Callable[[Artifacts, CheckContext], Outcome]
CHECK_ATTR = "__tunegrade_check__"


def check(check_id: str) -> Callable[[CheckFn], CheckFn]:
    """Mark a function as the implementation of check ``check_id``."""

    def deco(fn: CheckFn) -> CheckFn:
        setattr(fn, CHECK_ATTR, check_id)
        return fn

    return deco


MAX_JSON_DEPTH = 64
"""Deeper nesting in a candidate's JSON is refused: no honest output needs it, and walking it
recursively (in the parser or in a check) would end in a RecursionError, i.e. a crashed check."""
MAX_INT_DIGITS = 100
"""Longer integers are refused: ``int()`` of more than 4,300 digits raises ``ValueError``, and
``float()`` of a 400-digit one overflows, in any check that touches it."""


def parse_json(text: str, where: str) -> Any:
    """Parse one JSON document a candidate wrote. Anything wrong with it, however exotic, is a
    :class:`CandidateFault` naming ``where``: the candidate can never turn a check into a grader error."""
    try:
        value = json.loads(text, parse_int=_bounded_int)  # NaN and Infinity stay floats, as real tools write them
    except CandidateFault as exc:
        raise CandidateFault(f"{where}: {exc}") from None
    except RecursionError:
        raise CandidateFault(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and every other parse failure
        raise CandidateFault(f"{where}: not valid JSON ({exc})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise CandidateFault(f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise CandidateFault(f"an integer of {len(digits)} digits (at most {MAX_INT_DIGITS} are accepted)")
    return int(digits)


def _depth(value: Any) -> int:
    """Nesting depth without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_jsonl(path: Path, max_lines: int = 1_000_000) -> list[Any]:
    """Parse a candidate's JSONL file; malformed content is the candidate's fault."""
    if not path.is_file():
        raise CandidateFault(f"{path.name} was not written")
    rows = []
    with path.open(encoding="utf-8", errors="strict") as fh:
        for n, line in enumerate(_lines(fh, path.name), start=1):
            if n > max_lines:
                raise CandidateFault(f"{path.name}: more than {max_lines} lines")
            if line.strip():
                rows.append(parse_json(line, f"{path.name} line {n}"))
    return rows


def _lines(fh: Any, name: str) -> Iterator[str]:
    try:
        yield from fh
    except UnicodeDecodeError as exc:
        raise CandidateFault(f"{name}: not UTF-8 ({exc.reason})") from None


def read_json(path: Path, max_bytes: int = 64 << 20) -> Any:
    """Parse a candidate's JSON file (at most ``max_bytes``); see :func:`parse_json`."""
    if not path.is_file():
        raise CandidateFault(f"{path.name} was not written")
    if path.stat().st_size > max_bytes:
        raise CandidateFault(f"{path.name}: larger than {max_bytes >> 20} MiB")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CandidateFault(f"{path.name}: not UTF-8 ({exc.reason})") from None
    return parse_json(text, path.name)
