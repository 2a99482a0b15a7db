#!/usr/bin/env python3
"""LoRA supervised fine-tuning of a local causal LM on chat data (reference solution, TRL SFTTrainer).

python train.py --model MODEL_DIR --train TRAIN_JSONL --val VAL_JSONL --out OUT_DIR --seed S

Writes OUT_DIR/adapter/ (PEFT LoRA, safetensors), OUT_DIR/trainer_state.json and
OUT_DIR/metrics.json ({"eval_loss": response-only NLL of the final model on VAL_JSONL}).

TRL notes (1.16): SFTConfig turns bf16 and gradient checkpointing on by default, which on a CPU
makes training several times slower (and without use_cpu=True, bf16 on a CPU-only machine is an
error), so both are set explicitly. transformers 5 renamed gradient_checkpointing to
activation_checkpointing (the old name still works, with a FutureWarning). ``assistant_only_loss=True``
needs a chat template that wraps assistant turns in ``{% generation %}`` (the task's does).
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
HPARAMS = {"learning_rate": 3e-3, "num_train_epochs": 2, "per_device_train_batch_size": 8,
           "per_device_eval_batch_size": 8, "warmup_steps": 0.05, "lr_scheduler_type": "cosine",
           "weight_decay": 0.0, "max_grad_norm": 1.0}


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


def train(args: argparse.Namespace, train_records: list[dict], val_records: list[dict]) -> tuple[Any, Any, Any]:
    """Fine-tune a LoRA adapter with SFTTrainer; returns (peft model, tokenizer, trainer)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    device, dtype = pick_device()
    set_seed(args.seed)  # before the trainer wraps the model: LoRA A matrices come from the torch RNG
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, local_files_only=True)
    peft_config = LoraConfig(task_type="CAUSAL_LM", target_modules=TARGET_MODULES, bias="none", **LORA)

    config = SFTConfig(
        output_dir=str(args.out),  # save_state() writes trainer_state.json here; no checkpoints are saved
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=device == "cpu",
        bf16=device == "cuda" and dtype == torch.bfloat16,  # TRL's default is bf16=True, even on a CPU
        activation_checkpointing=False,  # TRL's default is on (as gradient_checkpointing): slower, and pointless here
        assistant_only_loss=True,  # loss on the {% generation %} parts of the template only
        max_length=None,  # no truncation: records are short
        eval_strategy="epoch",
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **HPARAMS,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in train_records]),
        eval_dataset=Dataset.from_list([{"messages": r["messages"]} for r in val_records]),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_state()
    return trainer.model, tokenizer, trainer


def response_nll(model: Any, tokenizer: Any, records: list[dict[str, Any]]) -> float:
    """Mean -log p over every assistant token of the file (micro-average, nats), prompt tokens masked.

    One record per forward pass: simple, and exact (no padding to reason about)."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for rec in records:
            enc = tokenizer.apply_chat_template(rec["messages"], tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            ids = torch.tensor([enc["input_ids"]], device=device)
            mask = torch.tensor(enc["assistant_masks"], dtype=torch.bool, device=device)[1:]
            logits = model(input_ids=ids).logits[0, :-1]  # logits at t-1 predict token t
            total += F.cross_entropy(logits[mask].float(), ids[0, 1:][mask], reduction="sum").item()
            count += int(mask.sum())
    return total / count


def main() -> None:
    args = parse_args()
    import torch

    train_records, val_records = load_jsonl(args.train), load_jsonl(args.val)
    args.out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, trainer = train(args, train_records, val_records)
    model.save_pretrained(args.out / "adapter", safe_serialization=True)
    model.to(torch.float32)  # measure in fp32, as the grader does, whatever precision training used
    eval_loss = response_nll(model, tokenizer, val_records)
    (args.out / "metrics.json").write_text(json.dumps({"eval_loss": eval_loss}, indent=2) + "\n", encoding="utf-8")
    print(f"eval_loss {eval_loss:.4f} (perplexity {math.exp(eval_loss):.2f}) after {trainer.state.global_step} steps")


if __name__ == "__main__":
    main()
