"""Run real Python processes with telemetry on, in a clean environment (no hub, one thread)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grader.telemetry import telemetry_env, write_site


def clean_env(home: Path, telemetry: Path | None) -> dict[str, str]:
    """What the sandbox passes: a minimal environment, offline, plus telemetry when asked."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",  # keep the mounted site dir free of __pycache__
    }
    if telemetry is not None:
        site = home / "telemetry-site"
        write_site(site, str(telemetry))
        env |= telemetry_env(str(site))
    return env


@pytest.fixture(scope="session")
def env_for():
    return clean_env


@pytest.fixture
def run_py(tmp_path: Path):
    """Run ``code`` as a script in tmp_path; returns (completed process, telemetry file path)."""

    def run(
        code: str, *args: str, telemetry: bool = True, name: str = "main.py"
    ) -> tuple[subprocess.CompletedProcess, Path]:
        script = tmp_path / name
        script.write_text(code)
        out = tmp_path / "telemetry.jsonl"
        proc = subprocess.run(
            [sys.executable, str(script), *args],
            check=False,
            cwd=tmp_path,
            env=clean_env(tmp_path, out if telemetry else None),
            capture_output=True,
            text=True,
            timeout=120,
        )
        return proc, out

    return run
