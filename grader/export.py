"""Export: the candidate's starter repo. Only public material leaves the task pack.

Written: README.md, starter/, public inputs (each at its input's name), asset inputs (e.g. tokenizer/), the
default base model for model tasks (e.g. model/), CHECKS.md and a marker naming the task. Never: hidden/, solutions/, checks.py, manifests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from grader.basemodels import resolve_base_model
from grader.constants import DEFAULT_BASE_MODEL, TASK_MARKER
from grader.errors import BadInput, GraderFault
from grader.tasks import TaskPack

FORBIDDEN = ("hidden", "solutions", "checks.py", "manifest.json", "task.yaml")


def _checks_md(pack: TaskPack) -> str:
    lines = [
        f"# Self-check for {pack.spec.title}",
        "",
        "Run the visible checks on the public data before you submit:",
        "",
        "    tunegrade check .",
        "",
        "The grade re-runs your code on hidden inputs with every check below, and with further",
        "checks you cannot run here. Numbers your code reports about itself are compared with",
        "the grader's own measurements, never taken on trust.",
        "",
        "| check | what it verifies |",
        "| --- | --- |",
    ]
    lines += [f"| `{c.id}` | {c.title} |" for c in pack.spec.checks if c.visible]
    return "\n".join(lines) + "\n"


def _copy(src: Path, dest: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", *FORBIDDEN))
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def export_task(pack: TaskPack, dest: Path) -> Path:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BadInput(f"{dest} exists and is not an empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    _copy(pack.dir / "README.md", dest / "README.md")
    _copy(pack.dir / "starter", dest)
    for name in pack.generated_inputs():  # every input at its own name, as the entry command calls it
        _copy(pack.public_dir / name, dest / name)
    for name, path in pack.asset_inputs().items():
        _copy(path, dest / name)
    if pack.base_model_inputs():
        base = resolve_base_model(DEFAULT_BASE_MODEL)
        for name in pack.base_model_inputs():
            _copy(base.path, dest / name)
    for extra in pack.spec.export:
        if any(part in FORBIDDEN for part in Path(extra).parts):
            raise GraderFault(f"task {pack.id}: export lists forbidden path {extra}")
        _copy(pack.dir / extra, dest / extra)
    (dest / "CHECKS.md").write_text(_checks_md(pack), encoding="utf-8")
    (dest / TASK_MARKER).write_text(f"{pack.id}\n", encoding="utf-8")
    return dest
