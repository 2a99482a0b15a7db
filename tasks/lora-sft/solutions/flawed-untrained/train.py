#!/usr/bin/env python3
"""LoRA supervised fine-tuning of a local causal LM on chat data (reference solution, transformers Trainer).

python train.py --model MODEL_DIR --train TRAIN_JSONL --val VAL_JSONL --out OUT_DIR --seed S

Writes OUT_DIR/adapter/ (PEFT LoRA, safetensors), OUT_DIR/trainer_state.json and
OUT_DIR/metrics.json ({"eval_loss": response-only NLL of the final model on VAL_JSONL}).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: on a busy machine, spinning threads of parallel
# runs make every step several times slower. Read when torch loads, so set before importing it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}
HPARAMS = {"learning_rate": 3e-3, "num_train_epochs": 2, "per_device_train_batch_size": 8, "warmup_steps": 0.05,
           "lr_scheduler_type": "cosine", "weight_decay": 0.0, "max_grad_norm": 1.0}
IGNORE_INDEX = -100


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="local Hugging Face causal LM folder (read-only)")
    p.add_argument("--train", type=Path, required=True, help="chat-format JSONL to train on")
    p.add_argument("--val", type=Path, required=True, help="chat-format JSONL to evaluate on (never trained on)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, required=True, help="random seed")
    return p.parse_args()


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


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


def train(args: argparse.Namespace, train_records: list[dict], val_records: list[dict]) -> tuple[Any, Any, Any]:
    """Fine-tune a LoRA adapter with Trainer; returns (peft model, tokenizer, trainer)."""
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
    config = LoraConfig(task_type="CAUSAL_LM", target_modules=TARGET_MODULES, bias="none", **LORA)
    model = get_peft_model(model, config)
    model.print_trainable_parameters()
    model.save_pretrained(args.out / "adapter", safe_serialization=True)  # save early, in case training crashes

    bf16 = device == "cuda" and dtype == torch.bfloat16
    targs = TrainingArguments(
        output_dir=str(args.out),  # save_state() writes trainer_state.json here; no checkpoints are saved
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=device == "cpu",
        bf16=bf16,
        eval_strategy="epoch",
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **HPARAMS,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=encode(tokenizer, train_records),
        eval_dataset=encode(tokenizer, val_records),
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_state()
    return model, tokenizer, trainer


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
            nll = F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum")
            total += nll.item()
            count += int(keep.sum())
    return total / count


def main() -> None:
    args = parse_args()
    import torch

    train_records, val_records = load_jsonl(args.train), load_jsonl(args.val)
    args.out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, trainer = train(args, train_records, val_records)
    model.to(torch.float32)  # measure in fp32, as the grader does, whatever precision training used
    eval_loss = response_nll(model, tokenizer, val_records)
    metrics = {"eval_loss": eval_loss}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"eval_loss {eval_loss:.4f} (perplexity {math.exp(eval_loss):.2f}) after {trainer.state.global_step} steps")


if __name__ == "__main__":
    main()
