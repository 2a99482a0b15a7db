"""Finding task packs, loading their checks and generating their inputs.

A task pack is one folder with task.yaml, checks.py, README.md, starter/, public/, hidden/
and solutions/. Packs load from --tasks-dir folders, then $TUNEGRADE_TASKS, then the repo's
own tasks/, so an organisation can keep its hidden material outside this repository.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

from grader.checks import library
from grader.checks.base import CHECK_ATTR, CheckFn
from grader.constants import BUILTIN_TASKS, CHECKS_FILE, MANIFEST_FILE, TASK_FILE, TASKS_ENV
from grader.errors import BadInput, GraderFault
from grader.taskspec import TaskSpec, load_task_spec


def _load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise GraderFault(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _collect_checks(module: ModuleType) -> dict[str, CheckFn]:
    found: dict[str, CheckFn] = {}
    for obj in vars(module).values():
        check_id = getattr(obj, CHECK_ATTR, None)
        if check_id is not None:
            found[check_id] = obj
    return found


@dataclass(frozen=True)
class TaskPack:
    spec: TaskSpec
    dir: Path

    @property
    def id(self) -> str:
        return self.spec.id

    @cached_property
    def checks(self) -> dict[str, CheckFn]:
        """The task's own checks plus the library's; every id task.yaml lists must resolve."""
        own = _collect_checks(_load_module(self.dir / CHECKS_FILE, f"tunegrade_checks_{self.id.replace('-', '_')}"))
        shared = _collect_checks(library)
        clash = sorted(set(own) & set(shared))
        if clash:
            raise GraderFault(f"task {self.id}: checks.py redefines library checks: {', '.join(clash)}")
        merged = shared | own
        missing = [c.id for c in self.spec.checks if c.id not in merged]
        if missing:
            raise GraderFault(f"task {self.id}: task.yaml lists checks with no implementation: {', '.join(missing)}")
        return merged

    def asset_inputs(self) -> dict[str, Path]:
        out = {}
        for name, inp in self.spec.inputs.items():
            if inp.asset:
                path = (self.dir / inp.asset).resolve()
                if not path.exists():
                    raise GraderFault(f"task {self.id}: input {name!r} asset {inp.asset} is missing")
                out[name] = path
        return out

    def base_model_inputs(self) -> list[str]:
        return [name for name, inp in self.spec.inputs.items() if inp.base_model]

    def generated_inputs(self) -> list[str]:
        return [name for name, inp in self.spec.inputs.items() if inp.generated]

    def generate(self, dest: Path, seed: str, models: dict[str, Path] | None = None) -> dict[str, Any]:
        """Run the pack's seeded generator into ``dest`` and write its manifest there (see grader/inputs.py).
        Its ``assets`` are the pack's asset inputs and ``models``, the base model folders chosen for this
        grade by input name: a generator may build inputs with the base model (model-selection trains
        the adapters the candidate compares)."""
        dest.mkdir(parents=True, exist_ok=True)
        module = _load_module(self.dir / self.spec.data.generator, f"tunegrade_gen_{self.id.replace('-', '_')}")
        manifest = module.generate(dest, seed, self.asset_inputs() | (models or {}))
        (dest / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        for name in self.generated_inputs():
            if not (dest / name).is_dir():
                raise GraderFault(f"task {self.id}: generator did not write input {name!r}")
        return manifest

    @property
    def public_dir(self) -> Path:
        return self.dir / self.spec.data.public

    def scaled(self, time: float = 1.0, memory: float = 1.0) -> TaskPack:
        """This pack with its hard limits and budget scaled together.

        task.yaml sizes them for the default base model on a 2-core CPU; a grader running a larger
        base model, or on slower hardware, scales them rather than editing the pack.
        """
        if time == 1.0 and memory == 1.0:
            return self
        spec = self.spec
        limits = spec.limits.model_copy(update={"wall_time_s": spec.limits.wall_time_s * time,
                                                "memory_mb": round(spec.limits.memory_mb * memory)})
        budget = spec.budget and spec.budget.model_copy(update={
            "cpu_s": spec.budget.cpu_s * time,
            "gpu_s": spec.budget.gpu_s and spec.budget.gpu_s * time,
            "memory_mb": round(spec.budget.memory_mb * memory),
            "gpu_memory_mb": spec.budget.gpu_memory_mb and round(spec.budget.gpu_memory_mb * memory),
        })
        return replace(self, spec=spec.model_copy(update={"limits": limits, "budget": budget}))


def hidden_variant(pack: TaskPack, seed: str) -> str:
    """A stable label for a hidden input set; it reveals nothing of a high-entropy seed."""
    digest = hashlib.sha256(f"tunegrade-hidden\0{pack.id}\0{pack.spec.version}\0{seed}".encode()).hexdigest()
    return f"{pack.id}@{pack.spec.version}#{digest[:12]}"


def copy_public(pack: TaskPack, dest: Path) -> dict[str, Any]:
    """The generator's output for the public seed (inputs and grader-side data), as the self-check uses it."""
    src = pack.public_dir
    for name in pack.generated_inputs():
        if not (src / name).is_dir():
            raise GraderFault(f"task {pack.id}: public data has no {name}/ folder")
    shutil.copytree(src, dest, dirs_exist_ok=True)
    manifest_path = src / MANIFEST_FILE
    return json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}


def task_dirs(extra: list[Path] | None = None) -> list[Path]:
    dirs = list(extra or [])
    dirs += [Path(p) for p in os.environ.get(TASKS_ENV, "").split(os.pathsep) if p]
    dirs.append(BUILTIN_TASKS)
    return dirs


def discover(extra: list[Path] | None = None) -> dict[str, TaskPack]:
    """All task packs; a pack found earlier (an organisation's folder) shadows a built-in one."""
    packs: dict[str, TaskPack] = {}
    for root in task_dirs(extra):
        if not root.is_dir():
            if root != BUILTIN_TASKS:
                raise BadInput(f"tasks folder {root} does not exist")
            continue
        for spec_path in sorted(root.glob(f"*/{TASK_FILE}")):
            if spec_path.parent.name.startswith(("_", ".")):
                continue
            spec = load_task_spec(spec_path)
            packs.setdefault(spec.id, TaskPack(spec=spec, dir=spec_path.parent.resolve()))
    return packs


def get_task(task_id: str, extra: list[Path] | None = None) -> TaskPack:
    packs = discover(extra)
    if task_id not in packs:
        known = ", ".join(sorted(packs)) or "none"
        raise BadInput(f"unknown task {task_id!r} (known: {known})")
    return packs[task_id]
