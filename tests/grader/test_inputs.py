"""Inputs stage (grader/inputs.py): what a task's generator is given, and what the runs receive."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from grader.basemodels import TINY_DIR
from grader.inputs import prepare_inputs
from grader.tasks import get_task

GENERATOR = '''
import json
from pathlib import Path


def generate(dest, seed, assets):
    (dest / "data").mkdir(parents=True)
    model = Path(assets["model"])
    (dest / "data" / "seen.json").write_text(json.dumps({"config": (model / "config.json").is_file()}))
    return {"assets": sorted(assets), "model": str(model)}
'''


def model_task(tmp_path: Path, echo: Path) -> Path:
    """The echo fixture, given the base model as an input: its generator builds with the model."""
    root = tmp_path / "tasks"
    shutil.copytree(echo, root / "echo")
    spec = yaml.safe_load((root / "echo" / "task.yaml").read_text())
    spec["inputs"]["model"] = {"base_model": True}
    (root / "echo" / "task.yaml").write_text(yaml.safe_dump(spec))
    (root / "echo" / "hidden" / "generate.py").write_text(GENERATOR)
    return root


def test_the_generator_gets_the_grades_base_model(tmp_path: Path, fixture_tasks: Path) -> None:
    pack = get_task("echo", [model_task(tmp_path, fixture_tasks / "echo")])
    inputs = prepare_inputs(pack, tmp_path / "mounts", public=False, hidden_seed="s", base_model="tiny")
    try:
        assert inputs.manifest == {"assets": ["model"], "model": str(TINY_DIR.resolve())}
        assert json.loads((inputs.mounts["data"] / "seen.json").read_text()) == {"config": True}
        assert inputs.mounts["model"] == TINY_DIR.resolve() and inputs.base is not None
    finally:
        inputs.remove()


def test_a_generator_without_a_model_input_gets_only_assets(tmp_path: Path, fixture_tasks: Path) -> None:
    inputs = prepare_inputs(get_task("echo", [fixture_tasks]), tmp_path / "mounts", public=False, hidden_seed="s",
                            base_model="tiny")
    try:
        assert inputs.base is None and set(inputs.mounts) == {"data"}
    finally:
        inputs.remove()
