"""Measurements kept across grades (grader/measurements.py): computed once, recomputed whenever
anything they depend on changes, and never trusted when unreadable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import TypeAdapter

from grader import measurements
from grader.environment import environment
from grader.evaluation import NLLResult

CODEC = TypeAdapter(list[tuple[float, int]])
VALUE = [(1.25, 3), (0.1 + 0.2, 7)]


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    monkeypatch.setenv("TUNEGRADE_CACHE", str(tmp_path))
    return []


def measure(calls: list[int], parts: list) -> list[tuple[float, int]]:  # type: ignore[type-arg]
    def compute() -> list[tuple[float, int]]:
        calls.append(1)
        return VALUE

    return measurements.stored(parts, compute, CODEC)


def test_computed_once_and_read_back_exactly(counted: list[int]) -> None:
    first, second = measure(counted, ["nll", "ref-a", "test"]), measure(counted, ["nll", "ref-a", "test"])
    assert first == second == VALUE and len(counted) == 1
    assert NLLResult.from_examples(second) == NLLResult.from_examples(VALUE)


def test_other_parts_library_versions_or_code_are_other_measurements(counted: list[int],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    measure(counted, ["nll", "ref-a", "test"])
    measure(counted, ["nll", "ref-a", "val"])
    monkeypatch.setattr(measurements, "environment", lambda: environment() | {"torch": "0.0.0-other"})
    measure(counted, ["nll", "ref-a", "test"])
    monkeypatch.setattr(measurements, "environment", environment)
    monkeypatch.setattr(measurements, "_code_digest", lambda: "other evaluation code")
    measure(counted, ["nll", "ref-a", "test"])
    assert len(counted) == 4


@pytest.mark.parametrize("garbage", [b"", b"{not json", b'[[1.0, "x"]]', b"[[1.0, 2, 3]]"])
def test_an_unreadable_entry_is_measured_again(counted: list[int], tmp_path: Path, garbage: bytes) -> None:
    measure(counted, ["nll"])
    (entry,) = (tmp_path / measurements.STORE_DIR).iterdir()
    entry.write_bytes(garbage)
    assert measure(counted, ["nll"]) == VALUE and len(counted) == 2
    assert CODEC.validate_json(entry.read_bytes()) == VALUE
