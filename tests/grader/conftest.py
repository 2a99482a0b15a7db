from pathlib import Path

import pytest

FIXTURE_TASKS = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"


@pytest.fixture
def fixture_tasks() -> Path:
    return FIXTURE_TASKS


@pytest.fixture
def submission(tmp_path: Path):
    """Write a one-file submission for the echo fixture task."""

    def make(code: str, name: str = "sub") -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "main.py").write_text(code)
        return d

    return make
