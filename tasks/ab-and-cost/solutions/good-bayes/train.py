#!/usr/bin/env python3
"""Cheap LoRA fine-tune with a hand-written torch loop (alternative good solution: no Trainer).

python train.py --model MODEL_DIR --train TRAIN_JSONL --val VAL_JSONL --brief BRIEF_JSON --out OUT_DIR --seed S

Writes OUT_DIR/adapter/ (PEFT LoRA, safetensors), OUT_DIR/registry.json and OUT_DIR/cost.json.

Cost levers: batches of similar length (little padding), one epoch at a high learning rate, no
evaluation until the end, and no Trainer (its import and bookkeeping are CPU-seconds too).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of burning CPU

LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
LR, EPOCHS, BATCH, WARMUP = 1e-2, 1, 8, 3
IGNORE = -100


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, help_text in (("model", "base model folder"), ("train", "chat JSONL to train on"),
                            ("val", "chat JSONL to evaluate on"), ("brief", "the task's brief.json"),
                            ("out", "output folder")):
        p.add_argument(f"--{name}", type=Path, required=True, help=help_text)
    p.add_argument("--seed", type=int, required=True)
    return p.parse_args()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def base_digest(model_dir: Path) -> str:
    """sha256 of the single weights file, or of sorted ``digest  name`` lines of several (as the grader)."""
    files = sorted(model_dir.glob("*.safetensors"), key=lambda p: p.name)
    if len(files) == 1:
        return digest(files[0])
    return hashlib.sha256("".join(f"{digest(f)}  {f.name}\n" for f in files).encode()).hexdigest()


def tokenize(tokenizer: Any, path: Path) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per conversation; labels keep only the assistant tokens."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            enc = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            ids = list(enc["input_ids"])
            rows.append((ids, [t if keep else IGNORE for t, keep in zip(ids, enc["assistant_masks"])]))
    return rows


def batches(rows: list[tuple[list[int], list[int]]], pad: int, rng: random.Random, device: str) -> list[dict[str, Any]]:
    """Batches of rows of similar length, in random order, right-padded to their longest row."""
    import torch

    order = sorted(range(len(rows)), key=lambda i: (len(rows[i][0]), rng.random()))
    groups = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    rng.shuffle(groups)
    out = []
    for group in groups:
        width = max(len(rows[i][0]) for i in group)
        ids = [rows[i][0] + [pad] * (width - len(rows[i][0])) for i in group]
        labels = [rows[i][1] + [IGNORE] * (width - len(rows[i][1])) for i in group]
        mask = [[1] * len(rows[i][0]) + [0] * (width - len(rows[i][0])) for i in group]
        out.append({k: torch.tensor(v, device=device) for k, v in
                    (("input_ids", ids), ("labels", labels), ("attention_mask", mask))})
    return out


def val_nll(model: Any, data: list[dict[str, Any]]) -> float:
    """Micro-averaged response-only NLL (nats per assistant token)."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for b in data:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
            target = b["labels"][:, 1:]
            total += F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE, reduction="sum").item()
            count += int((target != IGNORE).sum())
    return total / count


def main() -> None:
    args = parse_args()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, local_files_only=True).to(device)
    n_params = sum(p.numel() for p in base.parameters())
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA))
    train_rows = tokenize(tokenizer, args.train)
    steps = EPOCHS * -(-len(train_rows) // BATCH)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP) * (1 - s / steps))
    model.train()
    for epoch in range(EPOCHS):
        for step, batch in enumerate(batches(train_rows, pad, rng, device)):
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if step % 10 == 0:
                print(f"epoch {epoch} step {step} loss {loss.item():.4f}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out / "adapter", safe_serialization=True)
    nll = val_nll(model, batches(tokenize(tokenizer, args.val), pad, rng, device))
    versions = [{"id": "base", "parent": None, "kind": "base", "model_sha256": base_digest(args.model)},
                {"id": f"lora-{time.strftime('%Y%m%d')}-s{args.seed}", "parent": "base", "kind": "adapter",
                 "path": "adapter", "artifact_sha256": digest(args.out / "adapter" / "adapter_model.safetensors"),
                 "data_sha256": digest(args.train), "metrics": {"val_nll": nll},
                 "config": {**LORA, "lr": LR, "epochs": EPOCHS, "batch": BATCH, "warmup_steps": WARMUP,
                            "schedule": "linear decay", "seed": args.seed}}]
    (args.out / "registry.json").write_text(json.dumps({"versions": versions}, indent=2) + "\n", encoding="utf-8")

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu_s = sum(u.ru_utime + u.ru_stime for u in usage)
    scale = json.loads(args.brief.read_text(encoding="utf-8"))["scale_to"]
    factor = scale["params"] / n_params * scale["train_examples"] / len(train_rows)
    cost = {"run": {"cpu_s": cpu_s},
            "scaled": {"cpu_hours": cpu_s * factor / 3600,
                       "method": "compute ∝ parameters × training tokens: this run's CPU-s scaled by both ratios"}}
    (args.out / "cost.json").write_text(json.dumps(cost, indent=2) + "\n", encoding="utf-8")
    print(f"val NLL {nll:.4f}; {cpu_s:.1f} CPU-s; {cost['scaled']['cpu_hours']:.0f} CPU-hours at scale")


if __name__ == "__main__":
    main()
