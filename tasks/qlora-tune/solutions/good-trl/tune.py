#!/usr/bin/env python3
"""QLoRA hyperparameter search with TRL's SFTTrainer and a seeded random search (reference solution).

python tune.py --model MODEL_DIR --train TRAIN_JSONL --val VAL_JSONL --out OUT_DIR --trials K --seed S

Another recipe than solutions/good: trials draw a log-uniform learning rate and a rank at random
(seeded), SFTTrainer tokenizes the conversations and masks the prompt itself
(``assistant_only_loss``), each trial runs in its own output folder with the TensorBoard run inside
it, and the validation NLL is computed one record at a time.

TRL notes (1.16): SFTConfig turns bf16 and gradient checkpointing on by default, even on a CPU; both
are set explicitly. transformers 5 reads TensorBoard's folder from TENSORBOARD_LOGGING_DIR when the
trainer is built.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
LR_RANGE = (3e-3, 1.5e-2)  # log-uniform
RANKS = (8, 16, 32)
HPARAMS = {"max_steps": 30, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
           "warmup_steps": 0.1, "lr_scheduler_type": "linear", "weight_decay": 0.0, "max_grad_norm": 1.0}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--val", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--seed", type=int, required=True)
    return p.parse_args()


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def draw(trials: int, seed: int) -> list[dict[str, Any]]:
    """Random search: each trial a log-uniform learning rate and a rank; the first two ranks differ, so
    both dimensions vary whatever the seed."""
    rng = random.Random(seed)
    ranks = rng.sample(RANKS, k=min(trials, len(RANKS))) + [rng.choice(RANKS) for _ in range(trials - len(RANKS))]
    lo, hi = math.log(LR_RANGE[0]), math.log(LR_RANGE[1])
    return [{"learning_rate": float(f"{math.exp(rng.uniform(lo, hi)):.3g}"), "r": r, "lora_alpha": 2 * r,
             "lora_dropout": 0.05} for r in ranks]


def response_nll(model: Any, tokenizer: Any, records: list[dict[str, Any]]) -> float:
    """Mean -log p over every assistant token of the file (micro-average, nats), one record at a time."""
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
            logits = model(input_ids=ids).logits[0, :-1]
            total += F.cross_entropy(logits[mask].float(), ids[0, 1:][mask], reduction="sum").item()
            count += int(mask.sum())
    return total / count


def trial(args: argparse.Namespace, number: int, params: dict[str, Any], tokenizer: Any,
          train_records: list[dict], val_records: list[dict]) -> tuple[float, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, set_seed
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    set_seed(args.seed * 100 + number)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=quant, dtype=torch.float32,
                                                 device_map={"": 0 if cuda else "cpu"}, local_files_only=True)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    folder = args.out / "runs" / f"{number:02d}-lr{params['learning_rate']:g}-r{params['r']}"
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder)
    config = SFTConfig(
        output_dir=str(args.out / "work" / str(number)),
        seed=args.seed * 100 + number,
        learning_rate=params["learning_rate"],
        use_cpu=not cuda,
        bf16=cuda,
        gradient_checkpointing=False,
        assistant_only_loss=True,
        max_length=None,
        eval_strategy="steps",
        eval_steps=15,
        logging_steps=3,
        save_strategy="no",
        report_to="tensorboard",
        disable_tqdm=True,
        **HPARAMS,
    )
    lora = LoraConfig(task_type="CAUSAL_LM", target_modules=TARGET_MODULES, bias="none", r=params["r"],
                      lora_alpha=params["lora_alpha"], lora_dropout=params["lora_dropout"])
    trainer = SFTTrainer(
        model=model, args=config, peft_config=lora, processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in train_records]),
        eval_dataset=Dataset.from_list([{"messages": r["messages"]} for r in val_records]),
    )
    trainer.train()
    return response_nll(trainer.model, tokenizer, val_records), trainer.model


def main() -> None:
    args = parse_args()
    from transformers import AutoTokenizer

    train_records, val_records = load_jsonl(args.train), load_jsonl(args.val)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    results = []
    for number, params in enumerate(draw(args.trials, args.seed)):
        eval_loss, model = trial(args, number, params, tokenizer, train_records, val_records)
        model.save_pretrained(args.out / "work" / str(number) / "adapter")
        results.append({"trial": number, "params": params, "eval_loss": eval_loss})
        print(f"trial {number} {params}: {eval_loss:.4f}", flush=True)
    (args.out / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
    best = min(results, key=lambda r: r["eval_loss"])
    (args.out / "best").mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.out / "work" / str(best["trial"]) / "adapter", args.out / "best" / "adapter")
    (args.out / "best" / "trial.json").write_text(json.dumps(best) + "\n", encoding="utf-8")
    shutil.rmtree(args.out / "work")


if __name__ == "__main__":
    main()
