#!/usr/bin/env python3
"""QLoRA hyperparameter search on a local causal LM (reference solution: Trainer + PEFT + bitsandbytes).

python tune.py --model MODEL_DIR --train TRAIN_JSONL --val VAL_JSONL --out OUT_DIR --trials K --seed S

Each trial loads the base in 4-bit NF4 with double quantisation, prepares it for k-bit training,
trains a LoRA adapter with its own learning rate and rank, logs its training and validation loss
curves to TensorBoard (OUT_DIR/runs/trial-N) and measures the response-only validation NLL.
Writes OUT_DIR/trials.jsonl, and OUT_DIR/best/adapter/ + OUT_DIR/best/trial.json for the trial
with the lowest validation NLL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning (read when torch loads, so set before importing it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
SEARCH = [  # (learning rate, LoRA rank), tried in this order; lora_alpha = 2 * r
    (5e-3, 16), (1e-2, 4), (5e-4, 8), (3e-3, 32), (2e-3, 8), (8e-3, 16),
]
TRAINING = {"max_steps": 30, "per_device_train_batch_size": 8, "warmup_steps": 0.1, "lr_scheduler_type": "cosine",
            "weight_decay": 0.0, "max_grad_norm": 1.0}
EVAL_STEPS = 15
IGNORE_INDEX = -100


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="local Hugging Face causal LM folder (read-only)")
    p.add_argument("--train", type=Path, required=True, help="chat-format JSONL to train on")
    p.add_argument("--val", type=Path, required=True, help="chat-format JSONL to select on (never trained on)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--trials", type=int, default=3, help="number of trials")
    p.add_argument("--seed", type=int, required=True, help="random seed")
    return p.parse_args()


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def quantization_config() -> Any:
    """NF4 with double quantisation; compute in bfloat16 on a GPU, float32 on the CPU."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def load_4bit(model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    device_map = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization_config(),
                                                dtype=torch.float32, device_map=device_map, local_files_only=True)


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


def response_nll(model: Any, rows: list[dict[str, list[int]]], pad_id: int, batch_size: int = 16) -> float:
    """Mean -log p over every assistant token of the file (micro-average, nats), prompt tokens masked."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in PadCollator(pad_id)(rows[i : i + batch_size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][:, 1:]  # logits at t-1 predict token t
            keep = targets != IGNORE_INDEX
            total += F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / count


def run_trial(args: argparse.Namespace, number: int, params: dict[str, Any], tokenizer: Any,
              train_rows: list[dict], val_rows: list[dict]) -> tuple[float, Any]:
    """Train one QLoRA adapter; returns (validation NLL, peft model)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(args.seed + number)  # before get_peft_model: the LoRA A matrices are drawn from the torch RNG
    model = load_4bit(args.model)
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(task_type="CAUSAL_LM", target_modules=TARGET_MODULES, bias="none", lora_dropout=0.0,
                      r=params["r"], lora_alpha=params["lora_alpha"])
    model = get_peft_model(model, lora)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(args.out / "runs" / f"trial-{number}")  # read by the callback
    targs = TrainingArguments(
        output_dir=str(args.out / "checkpoints" / f"trial-{number}"),  # nothing is saved there
        seed=args.seed + number,
        data_seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        gradient_checkpointing=False,
        learning_rate=params["learning_rate"],
        eval_strategy="steps",
        eval_steps=EVAL_STEPS,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        report_to="tensorboard",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **TRAINING,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train_rows, eval_dataset=val_rows,
                      data_collator=PadCollator(tokenizer.pad_token_id), processing_class=tokenizer)
    trainer.train()
    return response_nll(model, val_rows, tokenizer.pad_token_id), model


def main() -> None:
    args = parse_args()
    from transformers import AutoTokenizer

    if args.trials < 1:
        raise SystemExit("--trials must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows, val_rows = encode(tokenizer, load_jsonl(args.train)), encode(tokenizer, load_jsonl(args.val))

    trials = []
    for number in range(args.trials):
        lr, r = SEARCH[number % len(SEARCH)]
        params = {"learning_rate": lr, "r": r, "lora_alpha": 2 * r}
        eval_loss, model = run_trial(args, number, params, tokenizer, train_rows, val_rows)
        model.save_pretrained(args.out / "trials" / f"trial-{number}" / "adapter", safe_serialization=True)
        trial = {"trial": number, "params": params, "eval_loss": eval_loss}
        trials.append(trial)
        with (args.out / "trials.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(trial) + "\n")
        print(f"trial {number}: lr {lr:g}, r {r}: validation NLL {eval_loss:.4f}", flush=True)

    best = min(trials, key=lambda t: t["eval_loss"])
    shutil.copytree(args.out / "trials" / f"trial-{best['trial']}" / "adapter", args.out / "best" / "adapter")
    (args.out / "best" / "trial.json").write_text(json.dumps(best, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(args.out / "checkpoints", ignore_errors=True)
    print(f"best: trial {best['trial']} ({best['params']}), validation NLL {best['eval_loss']:.4f}")


if __name__ == "__main__":
    main()
