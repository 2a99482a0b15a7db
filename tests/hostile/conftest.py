"""Fixtures of the hostile-submission suite: every case runs on every backend.

A backend that cannot run here is skipped with its reason, except docker when
TUNEGRADE_REQUIRE_DOCKER=1 (CI): then its absence fails the suite.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make the helpers importable

from hostile_harness import Harness  # noqa: E402

from sandbox import SandboxUnavailable, get_backend  # noqa: E402

BACKENDS = ["local", "process", "docker"]
REQUIRE_DOCKER = "TUNEGRADE_REQUIRE_DOCKER"


def _unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run the suite here, or None."""
    try:
        sb = get_backend(name)
    except (KeyError, SandboxUnavailable) as exc:
        return f"backend {name!r} unavailable: {type(exc).__name__}: {exc}"
    if sb.isolation().level != "full" and name == "local":
        return f"local fell back to the process runner ({sb.isolation().notes[0]}); the process cases cover it"
    return None


@pytest.fixture(params=BACKENDS)
def hostile(request, tmp_path: Path):
    reason = _unavailable(request.param)
    if reason is not None:
        if request.param == "docker" and os.environ.get(REQUIRE_DOCKER) == "1":
            pytest.fail(f"{REQUIRE_DOCKER}=1 but {reason}")
        pytest.skip(reason)
    harness = Harness(request.param, tmp_path)
    yield harness
    harness.cleanup()
