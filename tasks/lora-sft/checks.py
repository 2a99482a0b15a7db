"""Checks of the lora-sft task. The grader measures the adapter itself; the run's own files are
compared with those measurements and with the telemetry recorded inside the run, never adopted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grader.checks import Artifacts, CandidateFault, CheckContext, InfraFault, Outcome, check, failed, graded, passed
from grader.checks import read_json
from grader.telemetry import Telemetry, read_telemetry

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".joblib")
METRIC_TOLERANCE = (0.02, 0.02)  # absolute, plus this fraction of the grader's value
FULL_FT_FRACTION = 0.5  # more than half the parameters trainable is not LoRA
LOSS_DROP = 0.10  # last quarter's mean loss at least 10% below the first quarter's
NORMALISED_PASS = 0.9  # held-out improvement worth 90% of the reference solution's is full marks
CONTAMINATION_NATS = 0.04  # val-below-test gap allowed beyond the reference solution's own gap


# -- shared measurements (computed once per grade) ---------------------------------------------

def _adapter_dir(artifacts: Artifacts) -> Path:
    return artifacts.require("main") / "adapter"


def _telemetry(artifacts: Artifacts, ctx: CheckContext) -> Telemetry:
    run = artifacts.runs["main"]
    return ctx.memo("telemetry", lambda: read_telemetry(run.telemetry_path) if run.telemetry_path else Telemetry(present=False))


def _records(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _encoded(ctx: CheckContext, name: str) -> Any:
    """The grader's data, encoded once: 'val' (what the candidate saw) and 'test' (hidden)."""

    def encode() -> Any:
        from grader.evaluation import encode_chat, load_model

        _, tokenizer = ctx.memo("tokenizer", lambda: load_model(ctx.inputs["model"], device="cpu"))
        if name == "val":
            path = ctx.inputs["data"] / "val.jsonl"
        else:
            if not ctx.manifest or "heldout" not in ctx.manifest or ctx.data_dir is None:
                raise InfraFault("the task's manifest names no held-out set")
            path = ctx.data_dir / ctx.manifest["heldout"]
        return encode_chat(tokenizer, _records(path))

    return ctx.memo(f"encoded:{name}", encode)


def _nll(ctx: CheckContext, adapter: Path | None, data: str) -> Any:
    """Response-only NLL of base (adapter None) or base+adapter, merged; adapters are validated first."""

    def compute() -> Any:
        from grader.evaluation import load_adapter, load_model, response_nll

        model, _ = load_model(ctx.inputs["model"], device=ctx.device)
        if adapter is not None:
            model = load_adapter(model, adapter, merge=True)
        return response_nll(model, _encoded(ctx, data))

    return ctx.memo(f"nll:{adapter}:{data}", compute)


def _reference_adapter(artifacts: Artifacts) -> Path:
    ref = (artifacts.reference or {}).get("main")
    if ref is None or ref.result is None or not ref.result.ok:
        raise InfraFault("the reference solution's run did not succeed, so there is no scale to score on")
    return ref.out_dir / "adapter"


def _ci(result: Any) -> tuple[float, float, float]:
    from grader.evaluation import bootstrap_ci

    values, weights = result.bootstrap_inputs()
    return bootstrap_ci(values, weights)


# -- checks -------------------------------------------------------------------------------------

@check("adapter-valid")
def adapter_valid(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """PEFT LoRA format, causal LM task type, and it loads onto the base model."""
    from grader.evaluation import validate_adapter_dir

    adapter = _adapter_dir(artifacts)
    config = validate_adapter_dir(adapter)
    _nll(ctx, adapter, "val")  # loading onto the base is part of measuring it
    return passed(f"LoRA adapter r={config.r}, alpha={config.lora_alpha} loads onto the base model",
                  r=config.r, lora_alpha=config.lora_alpha, target_modules=config.target_modules)


@check("lora-only")
def lora_only(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Only LoRA tensors, trained (lora_B non-zero), and not a full fine-tune in disguise."""
    from grader.evaluation import adapter_tensors

    tensors = adapter_tensors(_adapter_dir(artifacts))
    other = sorted(n for n in tensors if "lora_" not in n)
    if other:
        return failed(f"{len(other)} non-LoRA tensors saved, e.g. {other[0]}", non_lora=len(other))
    b = [t for n, t in tensors.items() if "lora_B" in n]
    if not b:
        return failed("no lora_B tensors in the adapter")
    if all(float(t.abs().max()) == 0.0 for t in b):
        return failed("every lora_B tensor is zero: the adapter was never trained", lora_b=len(b))
    tel = _telemetry(artifacts, ctx)
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

    names = list(adapter_tensors(_adapter_dir(artifacts)))
    covered = [m for m in ATTENTION if any(f".{m}." in n for n in names)]
    missing = [m for m in ATTENTION if m not in covered]
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
    tel = _telemetry(artifacts, ctx)
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
    seen = [loss for _, loss in _telemetry(artifacts, ctx).eval_losses]
    if not state_evals:
        return failed("trainer_state.json logs no eval_loss")
    if not seen:
        return graded(0.5, f"trainer_state.json logs {len(state_evals)} eval_loss values, but no evaluation was "
                      "recorded inside the run")
    return passed(f"{len(seen)} evaluations recorded inside the run; last eval_loss {seen[-1]:.4f}",
                  evaluations=len(seen))


@check("heldout-improves")
def heldout_improves(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Grader's response-only NLL on the hidden test set: 0 at the base model, 1 at the reference solution."""
    from grader.evaluation import paired_bootstrap_delta

    adapter = _adapter_dir(artifacts)
    base, cand = _nll(ctx, None, "test"), _nll(ctx, adapter, "test")
    ref = _nll(ctx, _reference_adapter(artifacts), "test")
    span = base.mean_nll - ref.mean_nll
    if span <= 0:
        raise InfraFault(f"the reference solution does not improve on the base model ({ref.mean_nll:.4f} vs "
                         f"{base.mean_nll:.4f}); the scale is undefined")
    normalised = (base.mean_nll - cand.mean_nll) / span
    values_b, weights = base.bootstrap_inputs()
    values_c, _ = cand.bootstrap_inputs()
    delta, lo, hi = paired_bootstrap_delta(values_b, values_c, weights)
    (b, blo, bhi), (c, clo, chi) = _ci(base), _ci(cand)
    data = {
        "base_nll": [round(b, 4), round(blo, 4), round(bhi, 4)],
        "adapter_nll": [round(c, 4), round(clo, 4), round(chi, 4)],
        "reference_nll": round(ref.mean_nll, 4),
        "delta": [round(delta, 4), round(lo, 4), round(hi, 4)],
        "normalised": round(normalised, 3),
        "test_tokens": base.n_tokens,
    }
    message = (f"held-out NLL {b:.3f} [{blo:.3f}, {bhi:.3f}] base → {c:.3f} [{clo:.3f}, {chi:.3f}] adapter "
               f"(reference {ref.mean_nll:.3f}); normalised {normalised:.2f}")
    if hi >= 0:
        return failed(message + "; no significant improvement (95% CI of the change includes 0)", **data)
    return graded(normalised / NORMALISED_PASS, message, **data)


@check("metrics-honest")
def metrics_honest(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """metrics.json eval_loss equals the grader's response-only NLL on the validation file, within tolerance."""
    metrics = read_json(artifacts.require("main") / "metrics.json")
    reported = metrics.get("eval_loss") if isinstance(metrics, dict) else None
    if not isinstance(reported, int | float) or isinstance(reported, bool):
        return failed("metrics.json has no numeric eval_loss")
    measured = _nll(ctx, _adapter_dir(artifacts), "val").mean_nll
    tolerance = METRIC_TOLERANCE[0] + METRIC_TOLERANCE[1] * measured
    data = {"reported": round(float(reported), 5), "measured": round(measured, 5), "tolerance": round(tolerance, 4)}
    if abs(reported - measured) <= tolerance:
        return passed(f"reported eval_loss {reported:.4f} matches the grader's {measured:.4f} (± {tolerance:.3f})", **data)
    return failed(f"reported eval_loss {reported:.4f} but the grader measures {measured:.4f} "
                  f"(tolerance ± {tolerance:.3f})", **data)


@check("eval-uncontaminated")
def eval_uncontaminated(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Validation NLL is not far below held-out NLL, compared with the reference solution's gap."""
    adapter, reference = _adapter_dir(artifacts), _reference_adapter(artifacts)
    gap = _nll(ctx, adapter, "test").mean_nll - _nll(ctx, adapter, "val").mean_nll
    # Val and test are disjoint draws of one distribution; the reference's gap is what the split
    # itself contributes, so a model that never saw val stays within a few hundredths of it.
    ref_gap = _nll(ctx, reference, "test").mean_nll - _nll(ctx, reference, "val").mean_nll
    limit = ref_gap + CONTAMINATION_NATS
    data = {"gap": round(gap, 4), "reference_gap": round(ref_gap, 4), "limit": round(limit, 4)}
    if gap > limit:
        return failed(f"validation NLL is {gap:.3f} below held-out NLL (the reference's gap is {ref_gap:.3f}): "
                      "the validation set was trained on", **data)
    return passed(f"validation and held-out NLL differ by {gap:.3f} (reference {ref_gap:.3f}, limit {limit:.3f})",
                  **data)


def _looks_pickled(path: Path) -> bool:
    head = path.read_bytes()[:4] if path.stat().st_size else b""
    return head[:1] == b"\x80" or head[:2] == b"PK"  # pickle protocol 2+, or torch's zip container


@check("safe-artifacts")
def safe_artifacts(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The adapter folder (what the grader loads) holds only JSON, safetensors and a README."""
    adapter = _adapter_dir(artifacts)
    if not adapter.is_dir():
        return failed("adapter/ was not written")
    bad = []
    for path in sorted(p for p in adapter.rglob("*") if p.is_file()):
        rel = path.relative_to(adapter).as_posix()
        if path.suffix in PICKLE_SUFFIXES or _looks_pickled(path):
            bad.append(f"{rel} (pickle)")
        elif path.stat().st_mode & 0o111:
            bad.append(f"{rel} (executable)")
        elif rel not in ADAPTER_FILES:
            bad.append(f"{rel} (unexpected)")
    if bad:
        return failed(f"adapter/ holds {', '.join(bad[:5])}; the grader loads only safetensors and JSON", files=bad)
    return passed("adapter/ holds only adapter_config.json and adapter_model.safetensors")


@check("within-budget")
def within_budget(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Wall time and peak memory, as the sandbox measured them, within the task's budget."""
    budget = ctx.spec.budget if ctx.spec else None
    if budget is None:
        raise InfraFault("the task declares no budget")
    result = artifacts.runs["main"].result
    if result is None:
        raise InfraFault("the run has no sandbox measurements")
    if result.timed_out:
        return failed(f"killed at the hard limit after {result.duration_s:.0f} s (budget {budget.wall_time_s:.0f} s)")
    peak = max(filter(None, [result.max_rss_mb, _telemetry(artifacts, ctx).peak_rss_mb]), default=None)
    over = []
    if result.duration_s > budget.wall_time_s:
        over.append(f"took {result.duration_s:.0f} s of a {budget.wall_time_s:.0f} s budget")
    if result.oom_killed or (peak is not None and peak > budget.memory_mb):
        over.append(f"peaked at {peak or 0:.0f} MB of a {budget.memory_mb} MB budget")
    data = {"wall_s": round(result.duration_s, 1), "peak_mb": round(peak, 1) if peak else None,
            "budget": budget.model_dump()}
    if over:
        return failed("; ".join(over), **data)
    return passed(f"{result.duration_s:.0f} s and {peak or 0:.0f} MB, within {budget.wall_time_s:.0f} s and "
                  f"{budget.memory_mb} MB", **data)
