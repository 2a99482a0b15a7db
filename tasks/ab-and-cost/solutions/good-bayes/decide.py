#!/usr/bin/env python3
"""Decide from A/B logs whether to ship model version B (reference solution: Beta-Binomial posteriors).

Each version's resolution rate gets a Beta(1, 1) prior and a Beta posterior per set of days; the
difference B - A is sampled by Monte Carlo. The lasting effect is judged on the later half of the days
when the posterior says the effect changed between the halves (a novelty effect fades), on all days
otherwise. The sample size uses Cohen's h (arcsine transform).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

DRAWS = 400_000
PRIOR = (1.0, 1.0)
SEED = 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logs", type=Path, required=True, help="interactions.csv: day,user_id,version,resolved")
    p.add_argument("--brief", type=Path, required=True, help="brief.json: alpha, power, baseline rate, MDE")
    p.add_argument("--out", type=Path, required=True, help="folder to write decision.json")
    return p.parse_args()


def daily_counts(path: Path) -> pd.DataFrame:
    """Per day and version: users (n) and resolved tickets (s)."""
    logs = pd.read_csv(path, usecols=["day", "version", "resolved"])
    return logs.groupby(["day", "version"])["resolved"].agg(n="count", s="sum").unstack("version")


def posterior_diff(counts: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Monte Carlo draws of B's rate minus A's under independent Beta posteriors."""
    def rate(version: str) -> np.ndarray:
        n, s = int(counts[("n", version)].sum()), int(counts[("s", version)].sum())
        return rng.beta(PRIOR[0] + s, PRIOR[1] + n - s, DRAWS)

    return rate("B") - rate("A")


def cohen_h_n(baseline: float, mde: float, alpha: float, power: float) -> int:
    """Users per arm for a two-sided test of baseline -> baseline + mde, on the arcsine scale (where each
    arm's estimate has variance 1/n, so their difference 2/n)."""
    h = 2 * math.asin(math.sqrt(baseline + mde)) - 2 * math.asin(math.sqrt(baseline))
    return math.ceil(2 * ((NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)) / h) ** 2)


def main() -> None:
    args = parse_args()
    brief = json.loads(args.brief.read_text(encoding="utf-8"))
    alpha = brief["alpha"]
    counts, rng = daily_counts(args.logs), np.random.default_rng(SEED)
    days = list(counts.index)
    early, late = days[: len(days) // 2], days[len(days) // 2:]
    late_diff = posterior_diff(counts.loc[late], rng)
    prob_changed = float(np.mean(posterior_diff(counts.loc[early], rng) > late_diff))
    changed = not alpha / 2 < prob_changed < 1 - alpha / 2
    window = late if changed else days
    diff = late_diff if changed else posterior_diff(counts, rng)
    prob_better = float(np.mean(diff > 0))
    required = cohen_h_n(brief["baseline_rate"], brief["minimum_detectable_effect"], alpha, brief["power"])
    n_per_arm = int(counts.loc[window, [("n", "A"), ("n", "B")]].sum().min())
    if prob_better > 1 - alpha / 2:
        call = "ship-B"
    elif prob_better < alpha / 2 or n_per_arm >= required:
        call = "keep-A"
    else:
        call = "no-decision"
    decision = {
        "decision": call,
        "test": f"Beta-Binomial posteriors (Beta{PRIOR} priors, {DRAWS} Monte Carlo draws); early vs late posterior",
        "effect": {"estimate": float(np.mean(diff)),
                   "ci": [float(q) for q in np.quantile(diff, [alpha / 2, 1 - alpha / 2])],
                   "window": f"{window[0]}-{window[-1]}"},
        "posterior_prob_b_better": prob_better,
        "required_n_per_arm": required,
        "notes": f"P(effect on days {early[0]}-{early[-1]} > days {late[0]}-{late[-1]}) = {prob_changed:.4f}; "
                 f"{n_per_arm} users per arm in the window, {required} needed for the MDE (Cohen's h)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decision.json").write_text(json.dumps(decision, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
