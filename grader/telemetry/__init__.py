"""Run telemetry: hooks recorded inside the candidate's Python processes (see read.py for the limits)."""

from grader.telemetry.read import (
    ENV_OUTPUT,
    SANDBOX_TELEMETRY,
    SANDBOX_TELEMETRY_SITE,
    SITE_DIR,
    TELEMETRY_FILENAME,
    Telemetry,
    read_telemetry,
    telemetry_env,
    telemetry_mounts,
)

__all__ = [
    "ENV_OUTPUT",
    "SANDBOX_TELEMETRY",
    "SANDBOX_TELEMETRY_SITE",
    "SITE_DIR",
    "TELEMETRY_FILENAME",
    "Telemetry",
    "read_telemetry",
    "telemetry_env",
    "telemetry_mounts",
]
