#!/usr/bin/env python3
"""SFT then DPO with LoRA on a local causal LM (second reference solution: SFT with hand-made labels on a
plain transformers Trainer, then TRL's DPOTrainer against an explicit, frozen copy of the SFT model).

python pipeline.py --model MODEL_DIR --sft-data SFT_JSONL --pref-data PREF_JSONL --out OUT_DIR --seed S
torchrun --nproc_per_node 2 pipeline.py ...   (the same, data-parallel: gloo on a CPU, NCCL on GPUs)

1. SFT: each chat is tokenized with the model's chat template, whose {% generation %} blocks give an
   assistant-token mask; every other token gets the label -100, so only the replies are learned. A
   LoRA adapter (peft ``get_peft_model``, attention and MLP projections) is trained for 26 steps by a
   plain ``transformers.Trainer`` with a padding collator written here.
2. The SFT adapter is saved to OUT_DIR/sft/adapter/ and merged into the base. The merged SFT model is
   written to a temporary folder outside OUT_DIR and loaded back as an explicit, frozen ``ref_model``.
3. DPO: TRL's ``DPOTrainer`` trains a fresh LoRA adapter on the merged SFT model against that
   reference. The last tenth of PREF_JSONL (at least 16 pairs) is held out of DPO training and
   evaluated with the final model; that evaluation is the last entry of the logs that
   ``save_state`` writes to OUT_DIR/dpo/trainer_state.json. The adapter goes to OUT_DIR/dpo/adapter/
   (LoRA on the base with the SFT adapter merged), and the settings to OUT_DIR/pipeline.json.

How it differs from the other reference (TRL SFTTrainer, ``ref_model=None``, every tenth pair held
out): no TRL in the SFT stage, the reference is a separate model instead of the policy with its
adapter disabled, LoRA also on the MLP, other learning rates, beta 0.2 and a contiguous eval split.

Under torchrun each rank trains on its share of every global batch (per-device batch = global batch
// world size, so the schedule is the single-process one). Only rank 0 writes files: it saves the
merged SFT model while the other ranks wait at a barrier, then all ranks load the reference from it.
Adapters are written with ``save_pretrained`` (safetensors); ``Trainer.save_model`` would also
write training_args.bin, a pickle.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: read when torch loads

import torch  # after the environment above

GLOBAL_BATCH = 8
EVAL_FRACTION, MIN_EVAL = 0.1, 16  # the last tenth of the pairs, at least 16, is held out of DPO training
SFT = {"r": 8, "lora_alpha": 16, "learning_rate": 5e-3, "max_steps": 26,
       "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
DPO = {"r": 8, "lora_alpha": 16, "learning_rate": 1e-3, "max_steps": 12, "beta": 0.2,
       "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


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


def eval_lines(n: int) -> list[int]:
    """0-based lines of the preference file held out of DPO training: the last tenth, at least MIN_EVAL."""
    k = min(n, max(MIN_EVAL, math.ceil(n * EVAL_FRACTION)))
    return list(range(n - k, n))


def training_kwargs(out: Path, seed: int, world_size: int, lr: float, steps: int) -> dict[str, Any]:
    """Settings shared by the transformers and TRL configs."""
    cuda = torch.cuda.is_available()
    kwargs = {
        "output_dir": str(out),
        "seed": seed,
        "data_seed": seed,
        "use_cpu": not cuda,
        "bf16": cuda and torch.cuda.is_bf16_supported(),  # TRL defaults to bf16, even on a CPU
        "gradient_checkpointing": False,  # TRL defaults to on
        "learning_rate": lr,
        "max_steps": steps,
        "per_device_train_batch_size": GLOBAL_BATCH // world_size,
        "per_device_eval_batch_size": GLOBAL_BATCH // world_size,
        "lr_scheduler_type": "linear",
        "warmup_steps": 2,
        "weight_decay": 0.0,
        "logging_steps": 5,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    if world_size > 1:  # accelerate rejects a DDP backend in a single process
        kwargs["ddp_backend"] = "nccl" if cuda else "gloo"
    return kwargs


def tokenize_chat(tokenizer: Any, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """Token ids of one chat, with labels only on the assistant tokens (the template's generation blocks)."""
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    if not any(mask):
        raise ValueError("the chat template marked no assistant tokens: it needs {% generation %} blocks")
    return {"input_ids": ids, "attention_mask": [1] * len(ids),
            "labels": [t if m else -100 for t, m in zip(ids, mask)]}


class PadCollator:
    """Right-pads a batch: input_ids with the pad token, labels with -100, attention_mask with 0."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = {"input_ids": pad_token_id, "attention_mask": 0, "labels": -100}

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        return {key: torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows])
                for key, fill in self.pad.items()}


def sft_stage(args: argparse.Namespace, world_size: int, tokenizer: Any) -> Any:
    """LoRA SFT on the chats with a plain Trainer; returns the trained PEFT model."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

    set_seed(args.seed)
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, local_files_only=True)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=SFT["r"], lora_alpha=SFT["lora_alpha"],
                                            lora_dropout=0.0, target_modules=SFT["target_modules"]))
    rows = [tokenize_chat(tokenizer, r["messages"]) for r in load_jsonl(args.sft_data)]
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**training_kwargs(args.out / "sft", args.seed, world_size,
                                                 SFT["learning_rate"], SFT["max_steps"])),
        train_dataset=Dataset.from_list(rows),
        data_collator=PadCollator(tokenizer.pad_token_id),
    )
    trainer.train()
    return trainer.model


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def shared_tempdir(rank: int) -> Path:
    """A temporary folder made by rank 0, its path sent to every rank."""
    path = [tempfile.mkdtemp(prefix="sft-merged-") if rank == 0 else None]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(path, src=0)
    return Path(path[0])


def dpo_stage(args: argparse.Namespace, world_size: int, policy: Any, reference: Any, tokenizer: Any) -> Any:
    """DPO with a fresh LoRA adapter on the merged SFT model against a frozen copy of it; returns the trainer."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    set_seed(args.seed + 1)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in load_jsonl(args.pref_data)]
    held = set(eval_lines(len(rows)))
    config = DPOConfig(beta=DPO["beta"], max_length=None,
                       **training_kwargs(args.out / "dpo", args.seed, world_size,
                                         DPO["learning_rate"], DPO["max_steps"]))
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=config,
        train_dataset=Dataset.from_list([r for i, r in enumerate(rows) if i not in held]),
        eval_dataset=Dataset.from_list([r for i, r in enumerate(rows) if i in held]),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", r=DPO["r"], lora_alpha=DPO["lora_alpha"],
                               lora_dropout=0.0, target_modules=DPO["target_modules"]),
    )
    trainer.train()
    trainer.evaluate()  # the final model on the held-out pairs: the last entry of log_history
    return trainer


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = parse_args()
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if GLOBAL_BATCH % world_size:
        raise SystemExit(f"world size {world_size} does not divide the global batch of {GLOBAL_BATCH}")
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    sft_model = sft_stage(args, world_size, tokenizer)
    if rank == 0:
        sft_model.save_pretrained(args.out / "sft" / "adapter", safe_serialization=True)
    policy = sft_model.merge_and_unload()

    merged_dir = shared_tempdir(rank)
    try:
        if rank == 0:
            policy.save_pretrained(merged_dir, safe_serialization=True)
        barrier()  # the merged model is on disk before anyone reads it
        reference = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32, local_files_only=True)
        barrier()  # every rank has read it before rank 0 removes it
    finally:
        if rank == 0:
            shutil.rmtree(merged_dir, ignore_errors=True)
    reference.eval().requires_grad_(False)

    trainer = dpo_stage(args, world_size, policy, reference, tokenizer)
    trainer.save_state()  # OUT_DIR/dpo/trainer_state.json, written by rank 0 only
    if rank == 0:
        trainer.model.save_pretrained(args.out / "dpo" / "adapter", safe_serialization=True)
        settings = {"beta": DPO["beta"], "world_size": world_size,
                    "eval_pairs": eval_lines(len(load_jsonl(args.pref_data))),
                    "global_batch": GLOBAL_BATCH, "seed": args.seed, "sft": SFT, "dpo": DPO}
        (args.out / "pipeline.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        logged = trainer.state.log_history[-1]
        print(f"DPO on the {len(settings['eval_pairs'])} held-out pairs: reward accuracy "
              f"{logged['eval_rewards/accuracies']:.3f}, margin {logged['eval_rewards/margins']:.3f}")


if __name__ == "__main__":
    main()
