"""Checks of the lora-sft task. The grader measures the adapter itself; the run's own files are
compared with those measurements and with the telemetry recorded inside the run, never adopted.
"""

from __future__ import annotations

from typing import Any

from grader.checks import Artifacts, CandidateFault, CheckContext, Outcome, check, failed, graded, passed
from grader.checks import adapter_checks as shared
from grader.checks import read_json
from grader.checks.adapters import AdapterMeasures
from grader.checks.library import run_telemetry

m = AdapterMeasures("lora-sft", lambda out: out / "adapter")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
METRIC_TOLERANCE = (0.002, 0.001)
"""Absolute, plus this fraction of the grader's value. Honest numerics differ by far less: the exact
definition reproduces the grader's number to 1e-6, a base loaded in bf16 (as on a GPU) and measured in
float32 by 0.0003 at most, everything in bf16 by 0.0006 (tiny, 12 runs; see the README)."""
FULL_FT_FRACTION = 0.5  # more than half the parameters trainable is not LoRA
LOSS_DROP = 0.10  # last quarter's mean loss at least 10% below the first quarter's


# -- checks -------------------------------------------------------------------------------------


@check("adapter-valid")
def adapter_valid(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.adapter_valid(m, artifacts, ctx)


@check("lora-only")
def lora_only(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Only LoRA tensors, trained (lora_B non-zero), and not a full fine-tune in disguise."""
    from grader.evaluation import adapter_tensors

    tensors = adapter_tensors(m.adapter_dir(artifacts))
    other = sorted(n for n in tensors if "lora_" not in n)
    if other:
        return failed(f"{len(other)} non-LoRA tensors saved, e.g. {other[0]}", non_lora=len(other))
    b = [t for n, t in tensors.items() if "lora_B" in n]
    if not b:
        return failed("no lora_B tensors in the adapter")
    if all(float(t.abs().max()) == 0.0 for t in b):
        return failed("every lora_B tensor is zero: the adapter was never trained", lora_b=len(b))
    tel = run_telemetry(artifacts, ctx)
    if tel.trainable_params is None or not tel.total_params:
        return graded(0.5, "LoRA tensors are trained, but no training start was recorded inside the run "
                      "to confirm which parameters were trainable", lora_tensors=len(tensors))
    fraction = tel.trainable_params / tel.total_params
    data = {"trainable_params": tel.trainable_params, "total_params": tel.total_params}
    if fraction > FULL_FT_FRACTION:
        return failed(f"full fine-tuning: {tel.trainable_params:,} of {tel.total_params:,} parameters "
                      f"({fraction:.0%}) were trainable when training started", **data)
    return passed(f"{len(tensors)} LoRA tensors, trained; {fraction:.2%} of parameters trainable", **data)


@check("target-modules")
def target_modules(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The adapter's tensors cover q_proj, k_proj, v_proj and o_proj."""
    from grader.evaluation import adapter_tensors

    names = list(adapter_tensors(m.adapter_dir(artifacts)))
    covered = [a for a in ATTENTION if any(f".{a}." in n for n in names)]
    missing = [a for a in ATTENTION if a not in covered]
    if missing:
        return graded(len(covered) / len(ATTENTION), f"LoRA misses {', '.join(missing)}", covered=covered)
    return passed("LoRA covers q_proj, k_proj, v_proj and o_proj", covered=covered)


def _state(artifacts: Artifacts) -> dict[str, Any]:
    state = read_json(artifacts.require("main") / "trainer_state.json")
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise CandidateFault("trainer_state.json has no log_history list")
    return state


def _logged(state: dict[str, Any], key: str) -> list[float]:
    return [float(e[key]) for e in state["log_history"] if isinstance(e, dict) and isinstance(e.get(key), int | float)]


@check("loss-decreases")
def loss_decreases(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Training loss from telemetry falls by at least 10% from the first to the last quarter."""
    tel = run_telemetry(artifacts, ctx)
    losses = [loss for _, loss in tel.losses]
    source = "telemetry"
    if len(losses) < 4:
        losses, source = _logged(_state(artifacts), "loss"), "trainer_state.json only (not confirmed by telemetry)"
    if len(losses) < 4:
        return failed(f"only {len(losses)} training losses were logged; log at least every few steps")
    q = max(1, len(losses) // 4)
    first, last = sum(losses[:q]) / q, sum(losses[-q:]) / q
    drop = (first - last) / first if first > 0 else 0.0
    data = {"first_quarter": round(first, 4), "last_quarter": round(last, 4), "points": len(losses), "source": source}
    score = min(1.0, max(0.0, drop / LOSS_DROP)) * (1.0 if source == "telemetry" else 0.5)
    return graded(score, f"training loss {first:.3f} → {last:.3f} ({drop:+.0%} drop) over {len(losses)} logged "
                  f"steps, from {source}", **data)


@check("eval-logged")
def eval_logged(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """eval_loss appears in trainer_state.json and was logged inside the run."""
    state_evals = _logged(_state(artifacts), "eval_loss")
    seen = [loss for _, loss in run_telemetry(artifacts, ctx).eval_losses]
    if not state_evals:
        return failed("trainer_state.json logs no eval_loss")
    if not seen:
        return graded(0.5, f"trainer_state.json logs {len(state_evals)} eval_loss values, but no evaluation was "
                      "recorded inside the run")
    return passed(f"{len(seen)} evaluations recorded inside the run; last eval_loss {seen[-1]:.4f}",
                  evaluations=len(seen))


@check("heldout-improves")
def heldout_improves(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.heldout_scale(m, artifacts, ctx)


@check("learned-cohort-data")
def learned_cohort_data(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.learned_cohort_data(m, artifacts, ctx)


@check("general-retention")
def general_retention(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.general_retention(m, artifacts, ctx)


@check("metrics-honest")
def metrics_honest(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """metrics.json eval_loss equals the grader's response-only NLL on the validation file, within tolerance."""
    metrics = read_json(artifacts.require("main") / "metrics.json")
    reported = metrics.get("eval_loss") if isinstance(metrics, dict) else None
    if not isinstance(reported, int | float) or isinstance(reported, bool):
        return failed("metrics.json has no numeric eval_loss")
    measured = m.nll(ctx, m.adapter_dir(artifacts), "val").mean_nll
    tolerance = METRIC_TOLERANCE[0] + METRIC_TOLERANCE[1] * measured
    data = {"reported": round(float(reported), 5), "measured": round(measured, 5), "tolerance": round(tolerance, 4)}
    if abs(reported - measured) <= tolerance:
        return passed(f"reported eval_loss {reported:.4f} matches the grader's {measured:.4f} (± {tolerance:.4f})", **data)
    return failed(f"reported eval_loss {reported:.4f} but the grader measures {measured:.4f} "
                  f"(tolerance ± {tolerance:.4f})", **data)


@check("eval-uncontaminated")
def eval_uncontaminated(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.eval_uncontaminated(m, artifacts, ctx, gap=True)


@check("safe-artifacts")
def safe_artifacts(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.safe_artifacts(m, artifacts, ctx)
