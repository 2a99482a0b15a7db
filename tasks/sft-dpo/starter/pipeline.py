#!/usr/bin/env python3
"""SFT then DPO with LoRA on a local causal LM, single-process or under torchrun.

python pipeline.py --model MODEL_DIR --sft-data SFT_JSONL --pref-data PREF_JSONL --out OUT_DIR --seed S
torchrun --standalone --nproc_per_node 2 pipeline.py ...

The command line, the ranks and writing pipeline.json are done. Your work is in the two functions
marked TODO; README.md says exactly what each stage must do and what the outputs must be. You may
restructure the file freely as long as both commands above keep working.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: faster on a busy machine


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


def sft_stage(args: argparse.Namespace, rank: int, world_size: int) -> Any:
    """TODO: LoRA SFT on args.sft_data (loss on the assistant tokens only); rank 0 saves the adapter to
    args.out / "sft" / "adapter"; return the trained PEFT model."""
    raise NotImplementedError("the SFT stage")


def dpo_stage(args: argparse.Namespace, rank: int, world_size: int, sft_model: Any) -> dict[str, Any]:
    """TODO: DPO with a fresh LoRA adapter on the SFT model merged (the reference: the SFT model);
    evaluate the final model on pairs held out of training, save the trainer state to args.out / "dpo",
    rank 0 saves the adapter to args.out / "dpo" / "adapter"; return {"beta": ..., "eval_pairs": [...]}."""
    raise NotImplementedError("the DPO stage")


def main() -> None:
    args = parse_args()
    rank, world_size = world()
    sft_model = sft_stage(args, rank, world_size)
    settings = dpo_stage(args, rank, world_size, sft_model)
    if rank == 0:
        settings = {**settings, "world_size": world_size}
        (args.out / "pipeline.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
