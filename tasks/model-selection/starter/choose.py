#!/usr/bin/env python3
"""Choose the LoRA adapter to ship, with honest intervals and a check for leaked evaluation data.

python choose.py --model MODEL_DIR --candidates DIR --val VAL_JSONL --bench BENCH_JSONL --out OUT_DIR

The command line, reading the data and writing the outputs are done. Your work is in the two
functions marked TODO; README.md says exactly what selection.json and REPORT.md must hold. You may
restructure the file freely as long as the command above keeps working.
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
    p.add_argument("--candidates", type=Path, required=True, help="folder of LoRA adapters, one sub-folder each")
    p.add_argument("--val", type=Path, required=True, help="the team's validation set (chat JSONL)")
    p.add_argument("--bench", type=Path, required=True, help="the public benchmark set (chat JSONL)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    return p.parse_args()


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# --- TODO 1 ------------------------------------------------------------------------------------
def measure(args: argparse.Namespace, val: list[dict[str, Any]], bench: list[dict[str, Any]]) -> dict[str, Any]:
    """Score every adapter under ``args.candidates`` on ``val`` and ``bench``.

    - the metric is the response-only NLL per assistant token (README), of the base model with the
      adapter merged, in float32;
    - keep what each record contributes, so you can put a 95% interval on every number;
    - return whatever ``decide`` needs.
    """
    raise NotImplementedError("TODO 1: measure")


# --- TODO 2 ------------------------------------------------------------------------------------
def decide(measured: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Return ``(selection, report)``: the selection.json object and the text of REPORT.md.

    - give each adapter its val_nll and 95% interval (bench_nll and bench_ci if you like);
    - flag any adapter whose numbers you cannot trust (e.g. "contaminated", "overfit"), with evidence;
    - rank the adapters, best first, and choose one;
    - REPORT.md: the evaluation standard you would set for the team, and this run's results.
    """
    raise NotImplementedError("TODO 2: decide")


def main() -> None:
    args = parse_args()
    selection, report = decide(measure(args, load_jsonl(args.val), load_jsonl(args.bench)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "selection.json").write_text(json.dumps(selection, indent=1) + "\n", encoding="utf-8")
    (args.out / "REPORT.md").write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
