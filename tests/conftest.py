"""Fixtures shared by every suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from grader.pdf import CHROMIUM_ENV, find_chromium

REQUIRE_BROWSER = "TUNEGRADE_REQUIRE_BROWSER"


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The system Chromium; skipped without one, except where CI sets TUNEGRADE_REQUIRE_BROWSER."""
    found = find_chromium()
    if found is not None and os.access(found, os.X_OK):
        return found
    reason = (f"no Chromium (install Debian's chromium, or set ${CHROMIUM_ENV})" if found is None
              else f"Chromium at {found} is not an executable file")
    if os.environ.get(REQUIRE_BROWSER):
        pytest.fail(f"{REQUIRE_BROWSER} is set but: {reason}")
    pytest.skip(reason)
