#!/usr/bin/env python3
"""Decide from A/B logs whether to ship model version B (reference solution: two-proportion z-tests).

The decision is about B's lasting effect, so the effect is first tested for a change between the
first and the later half of the days (a novelty effect fades); if it changed, only the later half is
judged, otherwise all days are pooled.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from statistics import NormalDist

import pandas as pd

COLUMNS = {"day", "user_id", "version", "resolved"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logs", type=Path, required=True, help="interactions.csv: day,user_id,version,resolved")
    p.add_argument("--brief", type=Path, required=True, help="brief.json: alpha, power, baseline rate, MDE")
    p.add_argument("--out", type=Path, required=True, help="folder to write decision.json")
    return p.parse_args()


def daily_counts(path: Path) -> pd.DataFrame:
    """Per day: users (n_A, n_B) and resolved tickets (s_A, s_B) of each version."""
    logs = pd.read_csv(path)
    if missing := COLUMNS - set(logs.columns):
        raise SystemExit(f"{path}: missing columns {sorted(missing)}")
    if logs["user_id"].duplicated().any():
        raise SystemExit(f"{path}: a user appears more than once")
    table = logs.pivot_table(index="day", columns="version", values="resolved", aggfunc=["count", "sum"])
    return pd.DataFrame({"n_A": table[("count", "A")], "s_A": table[("sum", "A")],
                         "n_B": table[("count", "B")], "s_B": table[("sum", "B")]}).sort_index()


def z_test(counts: pd.DataFrame, alpha: float) -> dict:
    """B minus A on these days: pooled-SE z-test p-value, unpooled-SE (Wald) interval."""
    n_a, s_a, n_b, s_b = (int(counts[c].sum()) for c in ("n_A", "s_A", "n_B", "s_B"))
    p_a, p_b = s_a / n_a, s_b / n_b
    pooled = (s_a + s_b) / (n_a + n_b)
    z = (p_b - p_a) / math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    half = NormalDist().inv_cdf(1 - alpha / 2) * se
    return {"estimate": p_b - p_a, "se": se, "ci": [p_b - p_a - half, p_b - p_a + half],
            "p_value": 2 * (1 - NormalDist().cdf(abs(z))), "n_per_arm": min(n_a, n_b)}


def change_p_value(early: dict, late: dict) -> float:
    """Two-sided p-value that the effect differs between two disjoint sets of days."""
    z = (early["estimate"] - late["estimate"]) / math.hypot(early["se"], late["se"])
    return 2 * (1 - NormalDist().cdf(abs(z)))


def required_n_per_arm(baseline: float, mde: float, alpha: float, power: float) -> int:
    """Normal-approximation sample size per arm of a two-sided two-proportion test."""
    p0, p1 = baseline, baseline + mde
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return math.ceil(z ** 2 * (p0 * (1 - p0) + p1 * (1 - p1)) / mde ** 2)


def decide(result: dict, alpha: float, required: int) -> str:
    """Ship only on a significant gain; without one, keep A if the test had the power, else wait."""
    if result["p_value"] < alpha:
        return "ship-B" if result["estimate"] > 0 else "keep-A"
    return "keep-A" if result["n_per_arm"] >= required else "no-decision"


def main() -> None:
    args = parse_args()
    brief = json.loads(args.brief.read_text(encoding="utf-8"))
    alpha, power = brief["alpha"], brief["power"]
    counts = daily_counts(args.logs)
    days = list(counts.index)
    early, late = days[: len(days) // 2], days[len(days) // 2:]
    early_result, late_result = z_test(counts.loc[early], alpha), z_test(counts.loc[late], alpha)
    change = change_p_value(early_result, late_result)
    window = late if change < alpha else days
    result = late_result if change < alpha else z_test(counts, alpha)
    required = required_n_per_arm(brief["baseline_rate"], brief["minimum_detectable_effect"], alpha, power)
    decision = {
        "decision": decide(result, alpha, required),
        "test": "two-proportion z-test (pooled SE), Wald interval; first vs later half tested for a change",
        "effect": {"estimate": result["estimate"], "ci": result["ci"], "window": f"{window[0]}-{window[-1]}"},
        "p_value": result["p_value"],
        "required_n_per_arm": required,
        "notes": f"effect change between days {early[0]}-{early[-1]} ({early_result['estimate']:+.4f}) and "
                 f"{late[0]}-{late[-1]} ({late_result['estimate']:+.4f}): p={change:.3g}; "
                 f"{result['n_per_arm']} users per arm in the window, {required} needed for the MDE",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decision.json").write_text(json.dumps(decision, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
