"""The software a grade ran with: recorded in every result, and part of every cache key that a
library upgrade could invalidate (a reference run trained under other versions is another run)."""

from __future__ import annotations

import functools
import platform
from importlib.metadata import PackageNotFoundError, version

from grader import __version__

ENV_PACKAGES = ("torch", "transformers", "peft", "trl", "tokenizers", "datasets", "accelerate", "safetensors")


@functools.cache
def environment() -> dict[str, str | None]:
    """Python, platform, tunegrade and the ML libraries' versions (None when not installed)."""
    env: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform(),
                                  "tunegrade": __version__}
    for pkg in ENV_PACKAGES:
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    return env
