"""A/B logs of the ab-and-cost task (Part A): two model versions served side by side for 14 days.

``write_ab(dest_data, seed)`` writes ``dest_data/ab/interactions.csv`` (``day,user_id,version,resolved``;
each user once, randomised 50/50 within the day) and ``dest_data/ab/brief.json`` (what the candidate is
told), and returns the truth for the manifest. Everything derives from ``seed`` through one
``random.Random`` of its own (``ab:`` + seed, through sha256), so Part B's stream stays independent; the
global random state is never touched. Stdlib only: the checks load this module for its statistics.

Each cohort is one scenario, drawn from the seed:

- ``real``: B resolves a constant ~2 points more tickets; the lasting effect is that difference.
- ``none``: no difference; the lasting effect is 0.
- ``novelty``: B is better at first and the gain decays to 0 (``a * exp(-(day-1)/tau)``); lasting 0.

The data of a scenario are redrawn (deterministically, from the same stream) until they are
representative, so that honest analysis cannot be unlucky and every trap is set:

- real: the pooled two-proportion z-test gives p < 0.001 and its 95% CI holds the truth;
- none: B's observed rate is above A's (a naive shipper ships) but p > 0.2;
- novelty: days 1-3 alone are clearly significant and so is the pooled effect (pooling ships), while
  the later half (days 8-14) has p > 0.2, a CI holding 0, and differs from the first half (p < 0.01);
- real and none: the two halves do not differ (p > 0.2), so a test for a changing effect stays quiet.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
from pathlib import Path
from statistics import NormalDist
from typing import Any, NamedTuple

SCENARIOS = ("real", "none", "novelty")
AB_DIR = "ab"
LOGS_FILE = "interactions.csv"
BRIEF_FILE = "brief.json"
DAYS = 14
EARLY = range(1, 8)
LATE = range(8, DAYS + 1)
FIRST_DAYS = range(1, 4)
ALL_DAYS = range(1, DAYS + 1)
USERS_PER_DAY = (2800, 3200)
ALPHA, POWER = 0.05, 0.8
MDES = (0.01, 0.015, 0.02)
MAX_ATTEMPTS = 400

Day = tuple[int, int, int, int, int]
"""One day's counts: day, users on A, resolved on A, users on B, resolved on B."""


class Comparison(NamedTuple):
    """B minus A on some days: the estimate, its Wald 95% interval, and the pooled z-test's p-value.
    A NamedTuple, not a dataclass: the module is loaded by path, not always registered in sys.modules."""

    n_a: int
    n_b: int
    estimate: float
    se: float
    ci: tuple[float, float]
    p_value: float

    def summary(self) -> dict[str, Any]:
        return {"estimate": round(self.estimate, 5), "ci": [round(v, 5) for v in self.ci],
                "p_value": float(f"{self.p_value:.3g}"), "n_per_arm": [self.n_a, self.n_b]}


def compare(daily: list[Day], days: range, alpha: float = ALPHA) -> Comparison:
    """Two-proportion z-test of B against A on ``days``: pooled SE for the test, unpooled for the interval."""
    rows = [d for d in daily if d[0] in days]
    n_a, s_a, n_b, s_b = (sum(d[i] for d in rows) for i in range(1, 5))
    p_a, p_b = s_a / n_a, s_b / n_b
    pooled = (s_a + s_b) / (n_a + n_b)
    z_test = (p_b - p_a) / math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    return Comparison(n_a, n_b, p_b - p_a, se, (p_b - p_a - z * se, p_b - p_a + z * se),
                      2 * (1 - NormalDist().cdf(abs(z_test))))


def change_p_value(daily: list[Day]) -> float:
    """Two-sided p-value that the effect differs between the first and the later half."""
    early, late = compare(daily, EARLY), compare(daily, LATE)
    z = (early.estimate - late.estimate) / math.hypot(early.se, late.se)
    return 2 * (1 - NormalDist().cdf(abs(z)))


def required_n_per_arm(baseline: float, mde: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Users per arm for a two-sided two-proportion z-test to detect ``baseline`` -> ``baseline + mde``."""
    p0, p1 = baseline, baseline + mde
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return math.ceil(z * z * (p0 * (1 - p0) + p1 * (1 - p1)) / mde ** 2)


def _rng(seed: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"ab:{seed}".encode()).digest()[:8], "big"))


def _daily_effects(scenario: str, rng: random.Random) -> tuple[list[float], float]:
    """B's gain on each day and the lasting gain."""
    if scenario == "real":
        lift = round(rng.uniform(0.02, 0.025), 4)
        return [lift] * DAYS, lift
    if scenario == "none":
        return [0.0] * DAYS, 0.0
    amplitude, tau = rng.uniform(0.07, 0.09), rng.uniform(1.5, 2.5)
    return [amplitude * math.exp(-(day - 1) / tau) for day in ALL_DAYS], 0.0


def _draw(rng: random.Random, baseline: float, effects: list[float]) -> list[list[tuple[str, int]]]:
    """Per day, each user's (version, resolved)."""
    days = []
    for effect in effects:
        users = []
        for _ in range(rng.randint(*USERS_PER_DAY)):
            version = "B" if rng.random() < 0.5 else "A"
            rate = baseline + (effect if version == "B" else 0.0)
            users.append((version, int(rng.random() < rate)))
        days.append(users)
    return days


def _count(days: list[list[tuple[str, int]]]) -> list[Day]:
    out = []
    for day, users in enumerate(days, start=1):
        a = [r for v, r in users if v == "A"]
        b = [r for v, r in users if v == "B"]
        out.append((day, len(a), sum(a), len(b), sum(b)))
    return out


def representative(scenario: str, daily: list[Day], lasting: float) -> bool:
    """Whether the cohort's data show its scenario the way the module docstring requires."""
    pooled, late = compare(daily, ALL_DAYS), compare(daily, LATE)
    change = change_p_value(daily)
    if scenario == "real":
        return pooled.p_value < 0.001 and pooled.ci[0] <= lasting <= pooled.ci[1] and change > 0.2
    if scenario == "none":
        return pooled.estimate > 0 and pooled.p_value > 0.2 and change > 0.2
    first = compare(daily, FIRST_DAYS)
    return (first.estimate > 0 and first.p_value < 0.001 and pooled.estimate > 0 and pooled.p_value < ALPHA
            and late.p_value > 0.2 and late.ci[0] <= lasting <= late.ci[1] and change < 0.01)


def brief(baseline: float, mde: float) -> dict[str, Any]:
    return {
        "versions": {"A": "the current fine-tuned model", "B": "the new fine-tuned model"},
        "metric": "resolved: 1 if the user's support ticket was resolved without escalation, else 0",
        "effect": "B's resolution rate minus A's, absolute (0.012 = 1.2 percentage points)",
        "question": "Ship B only if it resolves more tickets than A for good: judge the lasting effect, "
                    "not the first days' one.",
        "alpha": ALPHA,
        "alternative": "two-sided",
        "power": POWER,
        "baseline_rate": baseline,
        "minimum_detectable_effect": mde,
    }


def write_ab(dest_data: Path, seed: str) -> dict[str, Any]:
    """Write the cohort's logs and brief under ``dest_data/ab``; return the truth for the manifest."""
    rng = _rng(seed)
    scenario = rng.choice(SCENARIOS)
    baseline, mde = round(rng.uniform(0.25, 0.35), 2), rng.choice(MDES)
    effects, lasting = _daily_effects(scenario, rng)
    for _ in range(MAX_ATTEMPTS):
        days = _draw(rng, baseline, effects)
        daily = _count(days)
        if representative(scenario, daily, lasting):
            break
    else:
        raise RuntimeError(f"no representative {scenario} cohort in {MAX_ATTEMPTS} draws for seed {seed!r}")
    out = dest_data / AB_DIR
    out.mkdir(parents=True, exist_ok=True)
    ids = iter(rng.sample(range(100_000, 1_000_000), sum(len(users) for users in days)))
    with (out / LOGS_FILE).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["day", "user_id", "version", "resolved"])
        for day, users in enumerate(days, start=1):
            writer.writerows((day, f"u{next(ids)}", version, resolved) for version, resolved in users)
    (out / BRIEF_FILE).write_text(json.dumps(brief(baseline, mde), indent=1) + "\n", encoding="utf-8")
    return {"scenario": scenario, "lasting_effect": lasting, "baseline_rate": baseline, "mde": mde,
            "alpha": ALPHA, "power": POWER, "required_n_per_arm": required_n_per_arm(baseline, mde),
            "daily_effect": [round(e, 5) for e in effects], "daily": [list(d) for d in daily]}
