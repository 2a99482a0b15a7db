#!/usr/bin/env python3
"""Decide from A/B logs whether to ship model version B.

The command line, reading the files and writing decision.json are done. Your work is in
``analyse``: AB.md says what each field of decision.json must hold. You have numpy, pandas and
the standard library (statistics.NormalDist); there is no scipy or statsmodels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logs", type=Path, required=True, help="interactions.csv: day,user_id,version,resolved")
    p.add_argument("--brief", type=Path, required=True, help="brief.json: alpha, power, baseline rate, MDE")
    p.add_argument("--out", type=Path, required=True, help="folder to write decision.json")
    return p.parse_args()


def analyse(logs: pd.DataFrame, brief: dict[str, Any]) -> dict[str, Any]:
    """Return decision.json's content. These placeholders are valid but wrong: replace them.

    - effect: B's resolution rate minus A's (absolute) that lasts, its interval at the brief's alpha,
      and the days it is measured on ("1-14", "8-14", ...). Look at the effect day by day first.
    - decision: "ship-B" only when the evidence says B lastingly resolves more tickets; else "keep-A"
      or "no-decision".
    - p_value (or posterior_prob_b_better for a Bayesian analysis) of that effect.
    - required_n_per_arm: users per version needed to detect brief["minimum_detectable_effect"] over
      brief["baseline_rate"] with the brief's alpha (two-sided) and power.
    """
    return {
        "decision": "no-decision",
        "test": "none yet",
        "effect": {"estimate": 0.0, "ci": [0.0, 0.0], "window": "1-14"},
        "p_value": 1.0,
        "required_n_per_arm": 0,
        "notes": "",
    }


def main() -> None:
    args = parse_args()
    logs = pd.read_csv(args.logs)
    brief = json.loads(args.brief.read_text(encoding="utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decision.json").write_text(json.dumps(analyse(logs, brief), indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
