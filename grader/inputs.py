"""Inputs stage: the data a grade runs on, laid out so that a run can reach nothing the grader keeps.

The task's generator (or the public copy, for the self-check) writes everything into a private
grader folder: the input folders the runs receive, and the grader's own data beside them (the
manifest of planted cases, held-out sets). Each input folder is then moved into a folder that
holds mounts only, so no grader-only file sits under or beside a path that a run receives, on
any backend (the ``process`` backend shows runs host paths).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grader.basemodels import BaseModel, resolve_base_model
from grader.tasks import TaskPack, copy_public, hidden_variant

GRADER_DIR_PREFIX = "tunegrade-grader-"


@dataclass
class Inputs:
    mounts: dict[str, Path]
    """Input name -> host folder the runs receive (generated inputs, assets, the base model)."""
    manifest: dict[str, Any]
    grader_dir: Path
    """The generator's whole output minus the mounted inputs: grader-only (held-out sets, manifest)."""
    variant: str
    base: BaseModel | None

    def remove(self) -> None:
        shutil.rmtree(self.grader_dir, ignore_errors=True)


def prepare_inputs(pack: TaskPack, mounts_dir: Path, *, public: bool, hidden_seed: str | None,
                   base_model: str) -> Inputs:
    """Generate (or copy the public) inputs; ``mounts_dir`` receives the input folders and nothing else."""
    grader_dir = Path(tempfile.mkdtemp(prefix=GRADER_DIR_PREFIX))  # mode 0700, outside the result folder
    try:
        base = resolve_base_model(base_model) if pack.base_model_inputs() else None
        models = {name: base.path for name in pack.base_model_inputs()} if base else {}
        if public:
            manifest = copy_public(pack, grader_dir)
            variant = f"{pack.id}@{pack.spec.version}#public"
        else:
            seed_text = hidden_seed or pack.spec.data.default_hidden_seed
            manifest = pack.generate(grader_dir, seed_text, models)
            variant = hidden_variant(pack, seed_text)
        mounts_dir.mkdir(parents=True, exist_ok=True)
        mounts = {}
        for name in pack.generated_inputs():
            mounts[name] = mounts_dir / name
            shutil.move(grader_dir / name, mounts[name])
        mounts |= pack.asset_inputs() | models
    except BaseException:
        shutil.rmtree(grader_dir, ignore_errors=True)
        raise
    return Inputs(mounts=mounts, manifest=manifest, grader_dir=grader_dir, variant=variant, base=base)
