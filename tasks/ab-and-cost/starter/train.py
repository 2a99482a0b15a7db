#!/usr/bin/env python3
"""Fine-tune a LoRA adapter to the brief's held-out NLL at the least compute, and record what it produced.

python train.py --model MODEL_DIR --train TRAIN_JSONL --val VAL_JSONL --brief BRIEF_JSON --out OUT_DIR --seed S

The command line, reading the data and hashing files are done. Your work is in the three functions
marked TODO; README.md says exactly what each output must hold. You may restructure the file freely
(Trainer, TRL's SFTTrainer or your own loop) as long as the command above keeps working.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: spinning ones cost CPU-seconds


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="local Hugging Face causal LM folder (read-only)")
    p.add_argument("--train", type=Path, required=True, help="chat-format JSONL to train on")
    p.add_argument("--val", type=Path, required=True, help="chat-format JSONL to evaluate on (never train on it)")
    p.add_argument("--brief", type=Path, required=True, help="brief.json: target_nll and scale_to")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, required=True, help="random seed")
    return p.parse_args()


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- TODO 1 ------------------------------------------------------------------------------------
def train(args: argparse.Namespace, train_records: list[dict[str, Any]]) -> tuple[Any, Any]:
    """Fine-tune a LoRA adapter on ``train_records`` and return ``(peft_model, tokenizer)``, spending as
    few CPU-seconds as you can while reaching ``target_nll`` on held-out data (keep a margin: the grader
    measures on a hidden set). Labels: the assistant tokens only."""
    raise NotImplementedError("TODO 1: train")


# --- TODO 2 ------------------------------------------------------------------------------------
def registry(args: argparse.Namespace, model: Any, tokenizer: Any, val_records: list[dict[str, Any]]) -> dict[str, Any]:
    """registry.json's content: every model version this run produced (the base, each adapter written
    under ``args.out``), with hashes, config, metrics (val_nll) and parent, as README.md defines them."""
    raise NotImplementedError("TODO 2: registry")


# --- TODO 3 ------------------------------------------------------------------------------------
def cost(args: argparse.Namespace, model: Any, n_train: int, brief: dict[str, Any]) -> dict[str, Any]:
    """cost.json's content: this run's CPU-seconds and the estimate for ``brief["scale_to"]``."""
    raise NotImplementedError("TODO 3: cost")


def main() -> None:
    args = parse_args()
    brief = json.loads(args.brief.read_text(encoding="utf-8"))
    train_records, val_records = load_jsonl(args.train), load_jsonl(args.val)
    args.out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = train(args, train_records)
    model.save_pretrained(args.out / "adapter", safe_serialization=True)  # LoRA weights only, no pickles
    record = registry(args, model, tokenizer, val_records)
    (args.out / "registry.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (args.out / "cost.json").write_text(json.dumps(cost(args, model, len(train_records), brief), indent=2) + "\n",
                                        encoding="utf-8")


if __name__ == "__main__":
    main()
