"""The adapters a model-selection cohort compares, trained on the grade's base model by the generator.

Every adapter has the same LoRA configuration (CONFIG) and comes from one plain float32 torch training
run on the CPU (response-only loss, as the candidate's metric counts it; AdamW, a constant rate), so a
cohort costs one clean run plus two short branches (RECIPE):

- ``best``: the clean run's end, on the training pool only.
- ``tie``: the same run a few steps earlier: a near-tie of ``best`` whose validation interval overlaps it.
- ``overfit``: branched off the clean run half-way, then the candidate's validation items alone for
  several epochs at a high rate: the lowest validation NLL, a clearly worse hidden-test NLL.
- ``contaminated``: the same, on the public benchmark's items: the lowest benchmark NLL, far below its
  own validation NLL.
- ``undertrained``: the clean run after a few steps.

Trained adapters are kept under the grader's cache (:func:`cached_build`), keyed by everything they
depend on, so the grades of one cohort train them once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("best", "tie", "overfit", "contaminated", "undertrained")
CONFIG = {"r": 4, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
BATCH = 8
CACHE_DIR = "model-selection-adapters"
FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class Recipe:
    """One clean trunk: ``steps`` optimiser steps of BATCH records of the training pool at ``lr``, saved as
    ``best``; ``tie`` and ``undertrained`` are its states after ``tie`` and ``undertrained`` steps, and the
    leaked adapters branch off it after ``branch`` steps, then train ``leak_steps`` at ``leak_lr`` on their
    leaked set alone (memorising it: a high rate, several epochs)."""

    steps: int = 140
    lr: float = 3e-3
    undertrained: int = 6
    branch: int = 60
    tie: int = 125
    leak_steps: int = 60
    leak_lr: float = 1e-2


RECIPE = Recipe()
LEAKS = {"overfit": "val", "contaminated": "bench"}
"""Leaked role -> the set it is trained on after the branch point."""


def _batches(encoded: Sequence[Any], steps: int, generator: Any) -> list[list[Any]]:
    import torch

    out: list[list[Any]] = []
    order: list[int] = []
    while len(out) < steps:
        if len(order) < BATCH:
            order += torch.randperm(len(encoded), generator=generator).tolist()
        out.append([encoded[i] for i in order[:BATCH]])
        order = order[BATCH:]
    return out


def _padded(batch: Sequence[Any]) -> tuple[Any, Any, Any]:
    """Right-padded ``(ids, attention, labels)``; labels are -100 but on counted (assistant) tokens."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        attention[row, :n] = 1
        labels[row, :n] = torch.where(torch.tensor(e.counted), ids[row, :n], -100)
    return ids, attention, labels


def _optimiser(model: Any) -> Any:
    import torch

    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0, weight_decay=0.0)


def _train(model: Any, optimiser: Any, batches: list[list[Any]], lr: float) -> None:
    for group in optimiser.param_groups:
        group["lr"] = lr
    model.train()
    for batch in batches:
        ids, attention, labels = _padded(batch)
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def _save(model: Any, dest: Path) -> None:
    model.save_pretrained(str(dest), safe_serialization=True)
    for extra in set(os.listdir(dest)) - set(FILES):  # the README peft writes would say nothing useful
        (dest / extra).unlink()


def _trunk(model_dir: Path, seed: int) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    from grader.evaluation import load_model

    torch.manual_seed(seed)
    model, _ = load_model(model_dir, device="cpu", dtype="float32")
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", bias="none", **CONFIG))


def build(model_dir: Path, records: dict[str, list[Any]], seed: int, dest: Path) -> None:
    """Train every role into ``dest/<role>/``, all from one clean trunk (one training run's cost, plus the
    leaked branches)."""
    import copy

    import torch

    from grader.evaluation import encode_chat, load_model

    _, tokenizer = load_model(model_dir, device="cpu")
    data = {name: encode_chat(tokenizer, recs) for name, recs in records.items()}
    generator = torch.Generator().manual_seed(seed)
    model = _trunk(model_dir, seed)
    optimiser = _optimiser(model)
    batches = _batches(data["train"], RECIPE.steps, generator)
    points = sorted([(RECIPE.undertrained, "undertrained"), (RECIPE.branch, "branch"), (RECIPE.tie, "tie"),
                     (RECIPE.steps, "best")])
    done = 0
    for step, what in points:
        _train(model, optimiser, batches[done:step], RECIPE.lr)
        done = step
        if what != "branch":
            _save(model, dest / what)
            continue
        for leaked, source in LEAKS.items():
            branch = copy.deepcopy(model)
            branch_optimiser = _optimiser(branch)
            branch_optimiser.load_state_dict(optimiser.state_dict())  # the trunk's moments: no cold start
            _train(branch, branch_optimiser, _batches(data[source], RECIPE.leak_steps, generator), RECIPE.leak_lr)
            _save(branch, dest / leaked)


def cache_key(model_dir: Path, records: dict[str, list[Any]], seed: int) -> str:
    """What the adapters depend on: the seed, the base model's files, the data, this code and the grader's
    evaluation code it tokenizes with, the libraries, and the CPU and thread count (a float32 reduction's
    order can follow the threads)."""
    from grader.intake import tree_sha256
    from grader.measurements import device_key, measurement_key

    parts = ["model-selection/adapters", seed, tree_sha256(model_dir),
             hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest(), device_key("cpu")]
    return measurement_key(parts, code=[__file__])


def cached_build(model_dir: Path, records: dict[str, list[Any]], seed: int) -> Path:
    """The folder holding ``<role>/`` adapters for these inputs: built once, then kept in the grader's cache
    (written to a temporary folder and renamed, so a half-built set is never read)."""
    from grader.constants import cache_root

    root = cache_root() / CACHE_DIR
    final = root / cache_key(model_dir, records, seed)
    if all((final / role / f).is_file() for role in ROLES for f in FILES):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        build(model_dir, records, seed, tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another grade finished the same build first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
