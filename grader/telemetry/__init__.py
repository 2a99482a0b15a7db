"""Run telemetry: hooks recorded inside the candidate's Python processes (see read.py for the limits)."""

from grader.telemetry.read import (
    SANDBOX_TELEMETRY,
    SANDBOX_TELEMETRY_SITE,
    SITE_DIR,
    TELEMETRY_FILENAME,
    Telemetry,
    read_telemetry,
    telemetry_env,
    telemetry_mounts,
    trained_fingerprints,
    write_site,
)

__all__ = [
    "SANDBOX_TELEMETRY",
    "SANDBOX_TELEMETRY_SITE",
    "SITE_DIR",
    "TELEMETRY_FILENAME",
    "Telemetry",
    "read_telemetry",
    "telemetry_env",
    "telemetry_mounts",
    "trained_fingerprints",
    "write_site",
]
