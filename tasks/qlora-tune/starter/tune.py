#!/usr/bin/env python3
"""QLoRA hyperparameter search on a local causal LM.

python tune.py --model MODEL_DIR --train TRAIN_JSONL --val VAL_JSONL --out OUT_DIR --trials K --seed S

The command line, reading the data and writing the outputs are done. Your work is in the two
functions marked TODO; README.md says exactly what each trial must do and what the outputs must
be. You may restructure the file freely (or use TRL's SFTTrainer) as long as the command above
keeps working.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: faster on a busy machine


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="local Hugging Face causal LM folder (read-only)")
    p.add_argument("--train", type=Path, required=True, help="chat-format JSONL to train on")
    p.add_argument("--val", type=Path, required=True, help="chat-format JSONL to select on (never train on it)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--trials", type=int, default=3, help="number of trials")
    p.add_argument("--seed", type=int, required=True, help="random seed")
    return p.parse_args()


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# --- TODO 1 ------------------------------------------------------------------------------------
def search_space(trials: int, seed: int) -> list[dict[str, Any]]:
    """The parameters of each trial: at least ``learning_rate``, ``r`` and ``lora_alpha``, with the
    learning rate and the rank both varied; ``trials`` distinct parameter sets."""
    raise NotImplementedError("TODO 1: search_space")


# --- TODO 2 ------------------------------------------------------------------------------------
def run_trial(args: argparse.Namespace, number: int, params: dict[str, Any], train_records: list[dict[str, Any]],
              val_records: list[dict[str, Any]]) -> tuple[float, Any]:
    """Train one QLoRA adapter and return ``(validation NLL, peft_model)``:

    - load ``args.model`` in 4-bit NF4 with double quantisation (compute dtype float32 on the CPU,
      bfloat16 on a GPU) and prepare it for k-bit training;
    - a LoRA adapter with ``params`` on at least q_proj, k_proj, v_proj and o_proj, trained on
      ``train_records`` with Trainer (or TRL's SFTTrainer), labels on the assistant tokens only;
    - track the run in TensorBoard under ``args.out / "runs" / f"trial-{number}"``: training loss
      every few steps and the validation loss at least once;
    - return the response-only NLL of the trained model on ``val_records``, exactly as README.md
      defines it.
    """
    raise NotImplementedError("TODO 2: run_trial")


def main() -> None:
    args = parse_args()
    train_records, val_records = load_jsonl(args.train), load_jsonl(args.val)
    args.out.mkdir(parents=True, exist_ok=True)
    trials = []
    for number, params in enumerate(search_space(args.trials, args.seed)):
        eval_loss, model = run_trial(args, number, params, train_records, val_records)
        model.save_pretrained(args.out / "trials" / f"trial-{number}" / "adapter", safe_serialization=True)
        trial = {"trial": number, "params": params, "eval_loss": eval_loss}
        trials.append(trial)
        with (args.out / "trials.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(trial) + "\n")
    best = min(trials, key=lambda t: t["eval_loss"])
    shutil.copytree(args.out / "trials" / f"trial-{best['trial']}" / "adapter", args.out / "best" / "adapter")
    (args.out / "best" / "trial.json").write_text(json.dumps(best, indent=2) + "\n", encoding="utf-8")
    print(f"best: trial {best['trial']} {best['params']}: validation NLL {best['eval_loss']:.4f}")


if __name__ == "__main__":
    main()
