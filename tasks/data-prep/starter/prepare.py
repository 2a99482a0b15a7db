#!/usr/bin/env python3
"""Turn raw customer-support tickets into chat or Alpaca fine-tuning data.

The command line, reading the tickets and writing the files are done. Your work is in the
four functions marked TODO; README.md says exactly what each must do.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

CATEGORIES = ("billing", "shipping", "account", "technical", "returns")
DROP_REASONS = ("empty", "non_english", "duplicate", "too_long")  # applied in this order


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw", type=Path, required=True, help="folder holding tickets.jsonl")
    p.add_argument("--out", type=Path, required=True, help="folder to write train.jsonl, val.jsonl, stats.json")
    p.add_argument("--format", choices=["chat", "alpaca"], required=True, help="record format to write")
    p.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer folder (its chat template measures length)")
    p.add_argument("--max-tokens", type=int, required=True, help="drop examples whose chat rendering is longer")
    p.add_argument("--val-fraction", type=float, required=True, help="share of each category that goes to val")
    p.add_argument("--seed", type=int, required=True, help="seed of the train/val split")
    return p.parse_args()


def load_tickets(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_tokenizer(path: str) -> Any:
    from transformers import PreTrainedTokenizerFast  # slow import: only when needed

    return PreTrainedTokenizerFast.from_pretrained(path)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# --- TODO 1 ------------------------------------------------------------------------------------
def clean_text(text: str) -> str:
    """Strip HTML tags, then unescape entities, then replace e-mails by [EMAIL] and phones by [PHONE]."""
    raise NotImplementedError("TODO 1: clean_text")


# --- TODO 2 ------------------------------------------------------------------------------------
def apply_filters(tickets: list[dict[str, Any]], tokenizer_dir: str, max_tokens: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Clean every ticket, then drop empty, non-English, duplicate and too-long ones, in that order.

    Returns the kept examples and how many tickets each filter removed (keys: DROP_REASONS).
    Measure lengths with ``load_tokenizer(tokenizer_dir)``.
    """
    raise NotImplementedError("TODO 2: apply_filters")


# --- TODO 3 ------------------------------------------------------------------------------------
def split_train_val(examples: list[dict[str, Any]], val_fraction: float, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Stratified by category, reproducible for a given seed."""
    raise NotImplementedError("TODO 3: split_train_val")


# --- TODO 4 ------------------------------------------------------------------------------------
def to_record(example: dict[str, Any], fmt: str) -> dict[str, Any]:
    """One output line in the chat or the alpaca format."""
    raise NotImplementedError("TODO 4: to_record")


def main() -> None:
    args = parse_args()
    tickets = load_tickets(args.raw / "tickets.jsonl")
    kept, dropped = apply_filters(tickets, args.tokenizer, args.max_tokens)
    train, val = split_train_val(kept, args.val_fraction, args.seed)

    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "train.jsonl", [to_record(ex, args.format) for ex in train])
    write_jsonl(args.out / "val.jsonl", [to_record(ex, args.format) for ex in val])
    stats = {"input": len(tickets), "kept": len(kept), "dropped": dropped, "train": len(train), "val": len(val)}
    (args.out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
