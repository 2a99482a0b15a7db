#!/usr/bin/env python3
"""LoRA supervised fine-tuning of a local causal LM on chat data.

python train.py --model MODEL_DIR --train TRAIN_JSONL --val VAL_JSONL --out OUT_DIR --seed S

The command line and reading the data are done. Your work is in the two functions marked TODO;
README.md says exactly what the outputs must be. You may restructure the file freely (or use TRL's
SFTTrainer instead of Trainer) as long as the command above keeps working.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: faster on a busy machine


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="local Hugging Face causal LM folder (read-only)")
    p.add_argument("--train", type=Path, required=True, help="chat-format JSONL to train on")
    p.add_argument("--val", type=Path, required=True, help="chat-format JSONL to evaluate on (never train on it)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, required=True, help="random seed")
    return p.parse_args()


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def pick_device() -> tuple[str, Any]:
    """("cuda", bf16 or fp32) when a GPU is visible, else ("cpu", fp32). Never bf16 on a CPU."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return "cpu", torch.float32


# --- TODO 1 ------------------------------------------------------------------------------------
def train(args: argparse.Namespace, train_records: list[dict[str, Any]], val_records: list[dict[str, Any]]) -> tuple[Any, Any, Any]:
    """Fine-tune a LoRA adapter on ``train_records`` and return ``(peft_model, tokenizer, trainer)``.

    - load the tokenizer and the model from ``args.model`` (on the device of ``pick_device()``);
    - wrap the model with a LoRA adapter on at least q_proj, k_proj, v_proj and o_proj;
    - labels: the assistant tokens only (-100 elsewhere), from the chat template's assistant mask;
    - evaluate on ``val_records`` at least once during training (it must appear as ``eval_loss``);
    - seed everything with ``args.seed``; save no checkpoints; call ``trainer.save_state()`` so that
      ``args.out / "trainer_state.json"`` is written.
    """
    raise NotImplementedError("TODO 1: train")


# --- TODO 2 ------------------------------------------------------------------------------------
def response_nll(model: Any, tokenizer: Any, records: list[dict[str, Any]]) -> float:
    """The response-only NLL of ``records`` under ``model``, exactly as README.md defines it:
    mean -log p over every assistant token of the file (micro-average, nats)."""
    raise NotImplementedError("TODO 2: response_nll")


def main() -> None:
    args = parse_args()
    train_records, val_records = load_jsonl(args.train), load_jsonl(args.val)
    args.out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, trainer = train(args, train_records, val_records)
    model.save_pretrained(args.out / "adapter", safe_serialization=True)  # LoRA weights only, no pickles
    eval_loss = response_nll(model, tokenizer, val_records)
    (args.out / "metrics.json").write_text(json.dumps({"eval_loss": eval_loss}, indent=2) + "\n", encoding="utf-8")
    print(f"eval_loss {eval_loss:.4f}")


if __name__ == "__main__":
    main()
