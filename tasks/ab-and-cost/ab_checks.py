"""Part A checks of the ab-and-cost task: the A/B decision, its effect estimate and its power calculation.

The truth is the generator's (``ctx.manifest["ab"]``, from hidden/ab_logs.py): the scenario, the lasting
effect and the day-by-day counts, from which the grader recomputes its own estimates with the same
statistics the generator used to make every cohort representative. decision.json is never believed
beyond what it states.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from grader.checks import (
    Artifacts,
    CandidateFault,
    CheckContext,
    InfraFault,
    Outcome,
    check,
    failed,
    graded,
    passed,
    read_json,
    sibling_module,
)

ab = sibling_module(str(Path(__file__).parent / "hidden" / "generate.py"), "ab_logs")
AB_RUN = "ab"
DECISION_FILE = "decision.json"
RIGHT_CALLS = {"real": ("ship-B",), "none": ("keep-A", "no-decision"), "novelty": ("keep-A", "no-decision")}
WIDTH_RANGE = (0.3, 4.0)
"""The candidate's interval width over the grader's 95% Wald width on the scenario's window: a 99% interval
(1.3x), a Bayesian credible interval (~1x) or half of the days (1.4x) fit; a point (0x) or a vacuous one do not."""
SHOWN_CHARS = 80
"""Of the candidate's free text (test, window) in the report."""
POWER_PASS, POWER_FAIL = 0.10, 0.18
"""Relative error of required_n_per_arm: honest variants (Cohen's h, pooled variance under H0, Fleiss'
continuity correction) are within 3%; the one-sided formula is 21% low and must fail."""


class Effect(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    estimate: float = Field(description="B's resolution rate minus A's, absolute: the lasting effect.")
    ci: tuple[float, float] = Field(description="Its interval, low then high.")
    window: str = Field(description="The days the estimate is taken on, e.g. 8-14.")

    @model_validator(mode="after")
    def _ordered(self) -> Effect:
        if self.ci[0] > self.ci[1]:
            raise ValueError("ci must be [low, high]")
        return self


class Decision(BaseModel):
    """decision.json, written by the ``ab`` run; extra keys are allowed."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    decision: Literal["ship-B", "keep-A", "no-decision"]
    test: str = Field(min_length=1, description="The test or method used.")
    effect: Effect
    p_value: float | None = Field(None, ge=0, le=1)
    posterior_prob_b_better: float | None = Field(None, ge=0, le=1)
    required_n_per_arm: int = Field(ge=0, description="Users per arm the brief's minimum detectable effect needs.")
    notes: str | None = None

    @model_validator(mode="after")
    def _evidence(self) -> Decision:
        if self.p_value is None and self.posterior_prob_b_better is None:
            raise ValueError("give p_value or posterior_prob_b_better")
        return self


def load_decision(artifacts: Artifacts) -> Decision:
    raw = read_json(artifacts.require(AB_RUN) / DECISION_FILE)
    try:
        return Decision.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]]
        raise CandidateFault(f"{DECISION_FILE}: " + "; ".join(lines)) from None


def truth(ctx: CheckContext) -> dict[str, Any]:
    if not ctx.manifest or "ab" not in ctx.manifest:
        raise InfraFault("the generator's manifest has no 'ab' section")
    return ctx.manifest["ab"]


def _daily(t: dict[str, Any]) -> list[Any]:
    return [tuple(d) for d in t["daily"]]


def grader_view(t: dict[str, Any]) -> dict[str, Any]:
    """The grader's own pooled and later-half estimates, for the report."""
    daily = _daily(t)
    return {"scenario": t["scenario"], "lasting_effect": t["lasting_effect"],
            "pooled_days_1_14": ab.compare(daily, ab.ALL_DAYS).summary(),
            "late_days_8_14": ab.compare(daily, ab.LATE).summary(),
            "change_p_value": float(f"{ab.change_p_value(daily):.3g}")}


@check("ab-decision")
def ab_decision(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Ship B exactly when it has a real lasting effect; with none (or a faded novelty) keep A or wait."""
    t, d = truth(ctx), load_decision(artifacts)
    data = {"decision": d.decision, "test": d.test[:SHOWN_CHARS], "right": list(RIGHT_CALLS[t["scenario"]])} | grader_view(t)
    if d.decision in RIGHT_CALLS[t["scenario"]]:
        return passed(f"'{d.decision}' is right: B's lasting effect is {t['lasting_effect']:+g}", **data)
    if d.decision == "ship-B":
        late = data["late_days_8_14"]
        return failed(f"shipped B, which has no lasting effect (days 8-14: {late['estimate']:+.4f}, "
                      f"p={late['p_value']:.3g}; all days p={data['pooled_days_1_14']['p_value']:.3g})", **data)
    return failed(f"'{d.decision}', but B has a real lasting effect of {t['lasting_effect']:+g} "
                  f"(all days p={data['pooled_days_1_14']['p_value']:.3g})", **data)


@check("ab-effect")
def ab_effect(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The effect's interval holds the estimate and the lasting effect, with a plausible width. When the
    grader's own 95% interval on the scenario's window misses the truth too, the data were unlucky and
    the candidate is not blamed."""
    t, d = truth(ctx), load_decision(artifacts)
    lasting, (lo, hi), est = t["lasting_effect"], d.effect.ci, d.effect.estimate
    own = ab.compare(_daily(t), ab.LATE if t["scenario"] == "novelty" else ab.ALL_DAYS)
    ratio = (hi - lo) / (own.ci[1] - own.ci[0])  # inf when hi - lo overflows: too wide
    window = d.effect.window[:SHOWN_CHARS]
    data = {"estimate": est, "ci": [lo, hi], "window": window,
            "width_vs_grader": round(ratio, 3) if math.isfinite(ratio) else None,
            "grader_window": "8-14" if t["scenario"] == "novelty" else "1-14"} | grader_view(t)
    shown = f"{est:+.3g} [{lo:+.3g}, {hi:+.3g}] on days {window}"
    if not lo <= est <= hi:
        return failed(f"the estimate lies outside its own interval: {shown}", **data)
    if not WIDTH_RANGE[0] <= ratio <= WIDTH_RANGE[1]:
        return failed(f"the interval {shown} is {ratio:.3g} times as wide as the grader's 95% interval "
                      f"(accepted: {WIDTH_RANGE[0]}-{WIDTH_RANGE[1]})", **data)
    if lo <= lasting <= hi:
        return passed(f"{shown} holds the lasting effect {lasting:+g}", **data)
    if not own.ci[0] <= lasting <= own.ci[1]:
        return passed(f"{shown} misses the lasting effect {lasting:+g}, as does the grader's own interval: "
                      "the data were unlucky", **data)
    return failed(f"{shown} misses the lasting effect {lasting:+g} (the grader's 95% interval on days "
                  f"{data['grader_window']}: [{own.ci[0]:+.4f}, {own.ci[1]:+.4f}])", **data)


@check("ab-power")
def ab_power(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """required_n_per_arm within 10% of the two-sided normal-approximation sample size of the brief."""
    t, d = truth(ctx), load_decision(artifacts)
    want, got = t["required_n_per_arm"], d.required_n_per_arm
    error = (got - want) / want
    one_sided = ab.required_n_per_arm(t["baseline_rate"], t["mde"], 2 * t["alpha"], t["power"])
    data = {"required_n_per_arm": got, "grader": want, "relative_error": round(error, 4),
            "one_sided_n": one_sided, "baseline_rate": t["baseline_rate"], "mde": t["mde"],
            "alpha": t["alpha"], "power": t["power"]}
    if abs(error) <= POWER_PASS:
        return passed(f"{got} users per arm, {error:+.1%} from the grader's {want}", **data)
    hint = " (the one-sided formula's)" if abs(got - one_sided) <= 0.02 * one_sided else ""
    score = (POWER_FAIL - abs(error)) / (POWER_FAIL - POWER_PASS)
    return graded(score, f"{got} users per arm{hint} is {error:+.1%} from the grader's two-sided {want} "
                  f"(alpha {t['alpha']}, power {t['power']}, {t['baseline_rate']} -> "
                  f"{t['baseline_rate'] + t['mde']:g})", **data)
