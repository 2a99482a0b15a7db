#!/usr/bin/env python3
"""Turn raw customer-support tickets into chat or Alpaca fine-tuning data (flawed copy of good/: see FLAW.md)."""

from __future__ import annotations

import argparse
import html
import json
import random
import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path

SYSTEM_PROMPT = "You are a friendly and precise customer-support agent."

TAG = re.compile(r"<[^>]*>")
BLOCK_TAG = re.compile(r"<\s*(br|/p|/div)\b[^>]*>", re.IGNORECASE)
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PHONE = re.compile(r"(?:\+1[ .-]?)?(?:\(\d{3}\)\s?|\b\d{3}[.-])\d{3}[.-]\d{4}\b")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--raw", type=Path, required=True, help="folder holding tickets.jsonl")
    p.add_argument("--out", type=Path, required=True, help="folder to write train.jsonl, val.jsonl, stats.json")
    p.add_argument("--format", choices=["chat", "alpaca"], required=True)
    p.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer folder")
    p.add_argument("--max-tokens", type=int, required=True)
    p.add_argument("--val-fraction", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    return p.parse_args()


def clean(text: str) -> str:
    """Strip tags (block tags become line breaks), unescape entities, redact PII, tidy whitespace."""
    text = html.unescape(TAG.sub("", BLOCK_TAG.sub("\n", text)))
    text = PHONE.sub("[PHONE]", EMAIL.sub("[EMAIL]", text))
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def dedup_key(user: str, assistant: str) -> tuple[str, str]:
    return user, assistant


def chat_messages(ex: dict) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": ex["user"]},
        {"role": "assistant", "content": ex["assistant"]},
    ]


def filter_tickets(tickets: list[dict], tokenizer, max_tokens: int) -> tuple[list[dict], dict[str, int]]:
    dropped = {}
    examples = [{**t, "user": clean(t["customer_message"] or ""), "assistant": clean(t["agent_reply"] or "")} for t in tickets]

    kept = [ex for ex in examples if ex["agent_reply"] is not None and ex["assistant"].strip()]
    dropped["empty"], examples = len(examples) - len(kept), kept

    kept = [ex for ex in examples if ex["lang"] == "en"]
    dropped["non_english"], examples = len(examples) - len(kept), kept

    seen: set[tuple[str, str]] = set()
    keep_ids = set()
    for ex in sorted(examples, key=lambda e: datetime.fromisoformat(e["created_at"])):
        k = dedup_key(ex["user"], ex["assistant"])
        if k not in seen:
            seen.add(k)
            keep_ids.add(ex["ticket_id"])
    kept = [ex for ex in examples if ex["ticket_id"] in keep_ids]
    dropped["duplicate"], examples = len(examples) - len(kept), kept

    def n_tokens(ex: dict) -> int:
        return len(tokenizer.apply_chat_template(chat_messages(ex), tokenize=True, return_dict=True)["input_ids"])

    kept = [ex for ex in examples if n_tokens(ex) <= max_tokens]
    dropped["too_long"], examples = len(examples) - len(kept), kept
    return examples, dropped


def split(examples: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Per category, round(val_fraction * n) examples go to val; the rest stay in input order."""
    rng = random.Random(seed)
    by_category: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_category[ex["category"]].append(i)
    val_idx: set[int] = set()
    for category in sorted(by_category):
        idx = by_category[category]
        rng.shuffle(idx)
        val_idx.update(idx[: round(val_fraction * len(idx))])
    train = [ex for i, ex in enumerate(examples) if i not in val_idx]
    val = [ex for i, ex in enumerate(examples) if i in val_idx]
    return train, val


def to_record(ex: dict, fmt: str) -> dict:
    if fmt == "chat":
        return {"messages": chat_messages(ex), "category": ex["category"]}
    return {"instruction": ex["user"], "input": "", "output": ex["assistant"], "category": ex["category"]}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    args = parse_args()
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    with (args.raw / "tickets.jsonl").open(encoding="utf-8") as fh:
        tickets = [json.loads(line) for line in fh if line.strip()]

    examples, dropped = filter_tickets(tickets, tokenizer, args.max_tokens)
    train, val = split(examples, args.val_fraction, args.seed)

    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "train.jsonl", [to_record(ex, args.format) for ex in train])
    write_jsonl(args.out / "val.jsonl", [to_record(ex, args.format) for ex in val])
    stats = {"input": len(tickets), "kept": len(examples), "dropped": dropped, "train": len(train), "val": len(val)}
    (args.out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
