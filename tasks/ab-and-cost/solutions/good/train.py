#!/usr/bin/env python3
"""Cheapest LoRA fine-tune that reaches the brief's held-out NLL (reference solution, transformers Trainer).

python train.py --model MODEL_DIR --train TRAIN_JSONL --val VAL_JSONL --brief BRIEF_JSON --out OUT_DIR --seed S

Writes OUT_DIR/adapter/ (PEFT LoRA, safetensors), OUT_DIR/registry.json (every model version: the base
and the adapter, with hashes, config, metrics and parent) and OUT_DIR/cost.json (the run's own
CPU-seconds and the estimate for the brief's larger model and dataset).

Where the compute goes on a CPU: one pass over the data is most of it, so the recipe trains one epoch
at a high learning rate and evaluates once, at the end, instead of every epoch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: spinning threads are CPU-seconds spent on nothing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}
HPARAMS = {"learning_rate": 1e-2, "num_train_epochs": 1, "per_device_train_batch_size": 8, "warmup_steps": 0.05,
           "lr_scheduler_type": "cosine", "weight_decay": 0.0, "max_grad_norm": 1.0}
IGNORE_INDEX = -100
ADAPTER = "adapter"
VERSION = "v1"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="local Hugging Face causal LM folder (read-only)")
    p.add_argument("--train", type=Path, required=True, help="chat-format JSONL to train on")
    p.add_argument("--val", type=Path, required=True, help="chat-format JSONL to evaluate on (never trained on)")
    p.add_argument("--brief", type=Path, required=True, help="target NLL and the scale to estimate the cost for")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, required=True, help="random seed")
    return p.parse_args()


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(model_dir: Path) -> str:
    """The base model's identity as the grader records it: the sha256 of its one .safetensors file, or of
    the sorted ``digest  name`` lines of several."""
    files = sorted(model_dir.glob("*.safetensors"), key=lambda p: p.name)
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(f"{sha256_file(f)}  {f.name}\n" for f in files).encode()).hexdigest()


def pick_device() -> tuple[str, Any]:
    """("cuda", bf16 or fp32) when a GPU is visible, else ("cpu", fp32)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return "cpu", torch.float32


def encode(tokenizer: Any, records: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
    """Token ids of each conversation; labels are the ids on assistant tokens and -100 elsewhere."""
    rows = []
    for rec in records:
        enc = tokenizer.apply_chat_template(rec["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
        if not any(mask):
            raise SystemExit("the chat template marks no assistant tokens: it needs {% generation %} markers")
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return rows


class PadCollator:
    """Right-pads a batch to its longest row: pad id for inputs, 0 for attention, -100 for labels."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        fill = {"input_ids": self.pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return {k: torch.tensor([r[k] + [v] * (width - len(r[k])) for r in rows]) for k, v in fill.items()}


def train(args: argparse.Namespace, train_records: list[dict[str, Any]]) -> tuple[Any, Any]:
    """Fine-tune a LoRA adapter with Trainer; returns (peft model, tokenizer)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

    device, dtype = pick_device()
    set_seed(args.seed)  # before get_peft_model: the LoRA A matrices are drawn from the torch RNG
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, local_files_only=True)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", target_modules=TARGET_MODULES, bias="none", **LORA))
    targs = TrainingArguments(
        output_dir=str(args.out),  # nothing is saved: no checkpoints, no state
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=device == "cpu",
        bf16=device == "cuda" and dtype == torch.bfloat16,
        eval_strategy="no",
        logging_strategy="steps",
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **HPARAMS,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=encode(tokenizer, train_records),
                      data_collator=PadCollator(tokenizer.pad_token_id), processing_class=tokenizer)
    trainer.train()
    return model, tokenizer


def response_nll(model: Any, tokenizer: Any, records: list[dict[str, Any]], batch_size: int = 16) -> float:
    """Mean -log p over every assistant token of the file (micro-average, nats), prompt tokens masked."""
    import torch
    import torch.nn.functional as F

    rows = encode(tokenizer, records)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in PadCollator(tokenizer.pad_token_id)(rows[i : i + batch_size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][:, 1:]  # logits at t-1 predict token t
            keep = targets != IGNORE_INDEX
            total += F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / count


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def scaled_cost(cpu_s: float, model: Any, n_train: int, scale_to: dict[str, float]) -> dict[str, Any]:
    """Training compute grows with parameters × tokens seen: scale this run's CPU time by both ratios."""
    params = sum(p.numel() for p in model.get_base_model().parameters())
    hours = cpu_s * scale_to["params"] / params * scale_to["train_examples"] / n_train / 3600
    return {"cpu_hours": hours, "method": f"this run's {cpu_s:.1f} CPU-s × params ratio ({scale_to['params']:.3g} / "
                                          f"{params}) × examples ratio ({scale_to['train_examples']:.0f} / {n_train}); "
                                          "same epochs and sequence lengths"}


def main() -> None:
    args = parse_args()
    import torch

    brief = json.loads(args.brief.read_text(encoding="utf-8"))
    train_records, val_records = load_jsonl(args.train), load_jsonl(args.val)
    args.out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = train(args, train_records)
    model.save_pretrained(args.out / ADAPTER, safe_serialization=True)
    model.to(torch.float32)  # measure in fp32, as the grader does, whatever precision training used
    val_nll = response_nll(model, tokenizer, val_records)
    config = {"lora": LORA, "target_modules": TARGET_MODULES, **HPARAMS, "seed": args.seed}
    registry = {"versions": [
        {"id": "base", "parent": None, "kind": "base", "model_sha256": weights_sha256(args.model)},
        {"id": VERSION, "parent": "base", "kind": "adapter", "path": ADAPTER,
         "artifact_sha256": sha256_file(args.out / ADAPTER / "adapter_model.safetensors"),
         "data_sha256": sha256_file(args.train), "config": config, "metrics": {"val_nll": val_nll}},
    ]}
    (args.out / "registry.json").write_text(json.dumps(registry, indent=2) + "\n", encoding="utf-8")
    cpu_s = cpu_seconds()
    cost = {"run": {"cpu_s": cpu_s}, "scaled": scaled_cost(cpu_s, model, len(train_records), brief["scale_to"])}
    (args.out / "cost.json").write_text(json.dumps(cost, indent=2) + "\n", encoding="utf-8")
    print(f"val NLL {val_nll:.4f} (target {brief['target_nll']}); {cpu_s:.1f} CPU-s; "
          f"{cost['scaled']['cpu_hours']:.1f} CPU-hours at the brief's scale")


if __name__ == "__main__":
    main()
