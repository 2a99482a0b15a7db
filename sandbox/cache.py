"""Where tunegrade keeps repeated work (images, wheelhouses, converted models, reference runs).

Defined here, below the grader, so that the sandbox package and the grader share one rule.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TUNEGRADE_CACHE"


def cache_root() -> Path:
    """$TUNEGRADE_CACHE, else ~/.cache/tunegrade."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tunegrade")
