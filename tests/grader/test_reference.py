"""The reference-run cache key (grader/reference.py): an upgrade never reuses a stale reference."""

from __future__ import annotations

import pytest

from grader import reference
from grader.environment import environment
from grader.tasks import discover

PACK = discover([])["lora-sft"]
SOURCE = PACK.dir / "solutions" / "good"


def key() -> str:
    return reference._key(PACK, SOURCE, "lora-sft@1#abc", "sha", 1234, "local")


@pytest.mark.parametrize("package", ["tunegrade", "torch", "transformers", "peft", "trl", "python"])
def test_key_changes_with_tool_and_library_versions(package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = key()
    monkeypatch.setattr(reference, "environment", lambda: environment() | {package: "0.0.0-other"})
    assert key() != before


def test_key_ignores_the_kernel_and_is_stable(monkeypatch: pytest.MonkeyPatch) -> None:
    before = key()
    assert key() == before
    monkeypatch.setattr(reference, "environment", lambda: environment() | {"platform": "Linux-other-kernel"})
    assert key() == before



def test_half_written_runs_of_dead_graders_are_removed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()  # its pid is now free: a grader that died
    (tmp_path / f"lora-sft-abc.tmp{child.pid}").mkdir()
    (tmp_path / f"lora-sft-def.tmp{os.getpid()}").mkdir()  # a grader still at work
    (tmp_path / "lora-sft-abc").mkdir()
    reference._remove_abandoned(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["lora-sft-abc", f"lora-sft-def.tmp{os.getpid()}"])
