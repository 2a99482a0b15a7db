#!/usr/bin/env python3
"""SFT then DPO with LoRA on a local causal LM (reference solution: TRL SFTTrainer, then DPOTrainer on
the SFT-merged model).

python pipeline.py --model MODEL_DIR --sft-data SFT_JSONL --pref-data PREF_JSONL --out OUT_DIR --seed S
torchrun --nproc_per_node 2 pipeline.py ...   (the same, data-parallel: gloo on a CPU, NCCL on GPUs)

Writes OUT_DIR/sft/adapter/ (LoRA on the base), OUT_DIR/dpo/adapter/ (LoRA on the base with the SFT
adapter merged), OUT_DIR/dpo/trainer_state.json (the DPO trainer's logs, ending with an evaluation of
the final model on the pairs held out of DPO training: every tenth line of PREF_JSONL) and
OUT_DIR/pipeline.json (the settings used, with those lines as eval_pairs).

The DPO stage starts from the SFT model, merged, and TRL's reference is that same model: a fresh LoRA
adapter on it, with the adapter disabled, is exactly the SFT model. Under torchrun each rank trains
on its share of every global batch (the per-device batch is divided by the world size, so the
schedule is the single-process one), and only rank 0 writes files.

TRL notes (1.16): its configs turn bf16 and gradient checkpointing on by default, even on a CPU; both
are set explicitly. ``Trainer.save_model`` also writes training_args.bin (a pickle) next to the
adapter, so the adapters are written with ``save_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: read when torch loads

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
GLOBAL_BATCH = 8
EVAL_EVERY = 10  # every 10th pair is held out of DPO training and evaluated at the end
SFT = {"r": 16, "lora_alpha": 32, "learning_rate": 3e-3, "max_steps": 24}
DPO = {"r": 8, "lora_alpha": 16, "learning_rate": 5e-4, "max_steps": 10, "beta": 0.1}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="local Hugging Face causal LM folder (read-only)")
    p.add_argument("--sft-data", type=Path, required=True, help="chat-format JSONL for the SFT stage")
    p.add_argument("--pref-data", type=Path, required=True, help="preference pairs (TRL conversational form)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, required=True, help="random seed")
    return p.parse_args()


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def world() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) for a plain run."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def common(out: Path, seed: int, world_size: int, lr: float, steps: int) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "output_dir": str(out),
        "seed": seed,
        "data_seed": seed,
        "use_cpu": not cuda,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "gradient_checkpointing": False,
        "learning_rate": lr,
        "max_steps": steps,
        "per_device_train_batch_size": GLOBAL_BATCH // world_size,
        "per_device_eval_batch_size": GLOBAL_BATCH // world_size,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "ddp_backend": ("nccl" if cuda else "gloo") if world_size > 1 else None,
    }


def sft_stage(args: argparse.Namespace, world_size: int) -> tuple[Any, Any]:
    """LoRA SFT on the chats (loss on the assistant turns only); returns (peft model, trainer)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, local_files_only=True)
    config = SFTConfig(assistant_only_loss=True, max_length=None,
                       **common(args.out / "sft", args.seed, world_size, SFT["learning_rate"], SFT["max_steps"]))
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in load_jsonl(args.sft_data)]),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", target_modules=TARGET_MODULES, r=SFT["r"],
                               lora_alpha=SFT["lora_alpha"], lora_dropout=0.0),
    )
    trainer.train()
    return trainer.model, tokenizer


def dpo_stage(args: argparse.Namespace, world_size: int, sft_model: Any, tokenizer: Any) -> Any:
    """DPO with a fresh LoRA adapter on the SFT-merged model; the reference is the SFT model."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    set_seed(args.seed + 1)
    merged = sft_model.merge_and_unload()
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in load_jsonl(args.pref_data)]
    held = eval_rows(len(rows))
    config = DPOConfig(beta=DPO["beta"], max_length=None,
                       **common(args.out / "dpo", args.seed, world_size, DPO["learning_rate"], DPO["max_steps"]))
    trainer = DPOTrainer(
        model=merged,
        ref_model=None,  # a PEFT policy's reference is its base with the adapter disabled: the SFT model
        args=config,
        train_dataset=Dataset.from_list([r for i, r in enumerate(rows) if i not in held]),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", target_modules=TARGET_MODULES, r=DPO["r"],
                               lora_alpha=DPO["lora_alpha"], lora_dropout=0.0),
    )
    trainer.train()
    trainer.evaluate(eval_dataset=Dataset.from_list([rows[i] for i in held]))  # the final model's rewards, logged
    return trainer


def eval_rows(n: int) -> list[int]:
    return list(range(0, n, EVAL_EVERY))


def main() -> None:
    args = parse_args()
    rank, world_size = world()
    if GLOBAL_BATCH % world_size:
        raise SystemExit(f"world size {world_size} does not divide the global batch of {GLOBAL_BATCH}")
    sft_model, tokenizer = sft_stage(args, world_size)
    if rank == 0:
        sft_model.save_pretrained(args.out / "sft" / "adapter", safe_serialization=True)
    trainer = dpo_stage(args, world_size, sft_model, tokenizer)
    trainer.save_state()  # trainer_state.json, written by rank 0 only
    if rank == 0:
        trainer.model.save_pretrained(args.out / "dpo" / "adapter", safe_serialization=True)
        settings = {"beta": DPO["beta"], "world_size": world_size, "eval_pairs": eval_rows(len(load_jsonl(args.pref_data))),
                    "global_batch": GLOBAL_BATCH, "seed": args.seed,
                    "sft": SFT, "dpo": DPO, "target_modules": TARGET_MODULES}
        (args.out / "pipeline.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        logged = next(e for e in reversed(trainer.state.log_history) if "eval_rewards/accuracies" in e)
        print(f"DPO on the pairs: reward accuracy {logged['eval_rewards/accuracies']:.3f}, "
              f"margin {logged['eval_rewards/margins']:.3f}")


if __name__ == "__main__":
    main()
