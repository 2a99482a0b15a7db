"""Checks of the lora-sft task. The grader measures the adapter itself; the run's own files are
compared with those measurements and with the telemetry recorded inside the run, never adopted.
"""

from __future__ import annotations

from typing import Any

from grader.checks import Artifacts, CandidateFault, CheckContext, InfraFault, Outcome, check, failed, graded, passed
from grader.checks import read_json, sibling_module
from grader.checks.library import run_telemetry

m = sibling_module(__file__, "measure")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
METRIC_TOLERANCE = (0.002, 0.001)
"""Absolute, plus this fraction of the grader's value. Honest numerics differ by far less: the exact
definition reproduces the grader's number to 1e-6, a base loaded in bf16 (as on a GPU) and measured in
float32 by 0.0003 at most, everything in bf16 by 0.0006 (tiny, 12 runs; see the README)."""
FULL_FT_FRACTION = 0.5  # more than half the parameters trainable is not LoRA
LOSS_DROP = 0.10  # last quarter's mean loss at least 10% below the first quarter's
NORMALISED_PASS = 0.9  # held-out improvement worth 90% of the reference solution's is full marks
SIGNATURE_PASS, SIGNATURE_FAIL = 0.5, 0.25
"""Share of the way from the public-data adapter's signature NLL to the reference's: full marks from
SIGNATURE_PASS, a fail below SIGNATURE_FAIL. Honest runs of other recipes measured 0.93-0.96."""
GAP_SIGMAS = 4.0
GAP_MIN_SIGMA = 0.005
GAP_RECIPE_SHARE = 0.03
"""The val-below-test gap allowed: the reference runs' mean gap, plus GAP_SIGMAS of their spread over
seeds (at least GAP_MIN_SIGMA), plus GAP_RECIPE_SHARE of the reference's held-out improvement on the
base model, because another honest recipe moves the gap by up to 0.05 nats either way on tiny (the
same as training on val once more): this signal alone catches only gross contamination; the
fingerprints recorded inside the run catch the rest."""
GENERAL_TOLERANCE = 3.0
"""The largest increase of the NLL on the hidden general-domain set (adapter minus base, nats) that
passes. Measured on tiny, grade-time definition (merged, float32), LoRA seed 1, on the cohorts
lora-sft-2026-cohort-a / corpus-cohort-b / x-cohort-c (base general NLL 0.874 / 0.906 / 0.879; base
held-out test NLL 5.40 / 5.24 / 5.22); increase [95% interval upper end over the three], held-out test NLL:
  good and good-trl (the same numbers)   +1.63 / +1.57 / +1.54 [≤1.66]   test 1.75 / 1.79 / 1.79
  honest variants: lr 1e-3                +1.19 / +1.22 / +1.06            test 2.46 / 2.45 / 2.41
    r=32, alpha 64                        +1.85 / +1.79 / +1.63            test 1.44 / 1.50 / 1.50
    all linear layers (r=16, 3e-3, 2 ep)  +1.83 / +1.71 / +1.65            test 1.00 / 1.05 / 1.07
    lr 5e-3, 3 epochs                     +1.95 / +1.86 / +1.88            test 1.21 / 1.25 / 1.28
    lr 5e-3, 6 epochs                     +2.30 / +2.16 / +2.17            test 0.84 / 0.88 / 0.88
    lr 1e-2, 4 epochs                     +2.31 / +2.30 / +2.33 [≤2.38]   test 1.00 / 1.01 / 1.02
  flawed-over-trained (r=64 on every linear layer, 4 epochs at a constant 5e-3)
                                          +3.88 / +3.83 / +3.65 [lower ends ≥3.59]   test 1.08 / 1.18 / 1.08
  others past it: r=64 all layers, 5e-3 cosine, 4 epochs +3.35 / +3.30 / +3.32 (test 0.56-0.60: it wins on
  the task by forgetting, and fails); r=64 all layers at 1e-2 +4.3 to +4.8 (unstable: test 2.3-4.8);
  attention only at 2e-2 for 8 epochs +5.1 to +8.4 (diverged: test 5.0-5.3, no better than the base).
Attention-only LoRA at any sane setting stayed within +2.4: the chat format alone costs tiny 1-2.4 nats
of its general text, and the honest recipes above spread over that range. 3.0 sits about 0.6 nats above
the highest honest upper end and 0.6 below the lowest over-trained lower end (intervals are ±0.03-0.07).
Calibrated on tiny: another base model forgets on another scale, and the figure does not carry over."""


# -- checks -------------------------------------------------------------------------------------

@check("adapter-valid")
def adapter_valid(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """PEFT LoRA format, causal LM task type, and it loads onto the base model."""
    from grader.evaluation import validate_adapter_dir

    adapter = m.adapter_dir(artifacts)
    config = validate_adapter_dir(adapter)
    m.nll(ctx, adapter, "val")  # loading onto the base is part of measuring it
    return passed(f"LoRA adapter r={config.r}, alpha={config.lora_alpha} loads onto the base model",
                  r=config.r, lora_alpha=config.lora_alpha, target_modules=config.target_modules)


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
    """Grader's response-only NLL on the hidden test set: 0 at the base model, 1 at the reference solution."""
    from grader.evaluation import paired_bootstrap_delta

    adapter = m.adapter_dir(artifacts)
    base, cand = m.nll(ctx, None, "test"), m.nll(ctx, adapter, "test")
    ref = m.nll(ctx, m.reference_adapter(artifacts), "test", trusted=True)
    span = base.mean_nll - ref.mean_nll
    if span <= 0:
        raise InfraFault(f"the reference solution does not improve on the base model ({ref.mean_nll:.4f} vs "
                         f"{base.mean_nll:.4f}); the scale is undefined")
    normalised = (base.mean_nll - cand.mean_nll) / span
    values_b, weights = base.bootstrap_inputs()
    values_c, _ = cand.bootstrap_inputs()
    delta, lo, hi = paired_bootstrap_delta(values_b, values_c, weights)
    (b, blo, bhi), (c, clo, chi) = m.ci(base), m.ci(cand)
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


@check("learned-cohort-data")
def learned_cohort_data(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The adapter learned what only this run's hidden training files teach (their sign-off signature):
    scored from an adapter trained on the public data (0) to the reference trained on these files (1), so
    an adapter trained beforehand and shipped, or trained on other data, fails."""
    phrase = m.manifest_entry(ctx, "signature")["text"]
    public = m.nll(ctx, artifacts.public_reference_out() / "adapter", "signature", trusted=True).mean_nll
    ref = m.nll(ctx, m.reference_adapter(artifacts), "signature", trusted=True).mean_nll
    cand = m.nll(ctx, m.adapter_dir(artifacts), "signature")
    base = m.nll(ctx, None, "signature").mean_nll
    span = public - ref
    if span <= 0:
        raise InfraFault(f"the reference does not learn the signature better than a public-data adapter "
                         f"({ref:.3f} vs {public:.3f} nats); the scale is undefined")
    normalised = (public - cand.mean_nll) / span
    data = {"adapter_nll": round(cand.mean_nll, 4), "public_adapter_nll": round(public, 4),
            "reference_nll": round(ref, 4), "base_nll": round(base, 4), "normalised": round(normalised, 3),
            "tokens": cand.n_tokens}
    message = (f"NLL of this cohort's sign-off signature ({phrase!r}) on held-out replies: {cand.mean_nll:.3f} nats (adapter "
               f"trained on the public data {public:.3f}, reference trained on these files {ref:.3f}, base "
               f"{base:.3f}); normalised {normalised:.2f}")
    if normalised < SIGNATURE_FAIL:
        return failed(message + ": the adapter did not learn this run's training data", **data)
    return graded((normalised - SIGNATURE_FAIL) / (SIGNATURE_PASS - SIGNATURE_FAIL), message, **data)


@check("general-retention")
def general_retention(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Catastrophic forgetting: the adapter's NLL on hidden general-domain text (plain documents of the kind
    the base model was pretrained on, not support chats) rises by at most GENERAL_TOLERANCE nats over the
    base model's. Pass when the upper end of the 95% paired-bootstrap interval of the increase is within
    it, fail when even the lower end is beyond it, partial in between (the share of the interval within)."""
    from grader.evaluation import paired_bootstrap_delta

    base, cand = m.nll(ctx, None, "general"), m.nll(ctx, m.adapter_dir(artifacts), "general")
    ref = m.nll(ctx, m.reference_adapter(artifacts), "general", trusted=True)
    values_b, weights = base.bootstrap_inputs()
    values_c, _ = cand.bootstrap_inputs()
    delta, lo, hi = paired_bootstrap_delta(values_b, values_c, weights)
    ref_delta = ref.mean_nll - base.mean_nll
    data = {"base_nll": round(base.mean_nll, 4), "adapter_nll": round(cand.mean_nll, 4),
            "reference_nll": round(ref.mean_nll, 4), "increase": [round(delta, 4), round(lo, 4), round(hi, 4)],
            "reference_increase": round(ref_delta, 4), "tolerance": GENERAL_TOLERANCE, "documents": len(weights),
            "tokens": base.n_tokens}
    message = (f"NLL on held-out general-domain text {base.mean_nll:.3f} base → {cand.mean_nll:.3f} adapter: "
               f"{delta:+.3f} nats [{lo:+.3f}, {hi:+.3f}] (reference solution {ref_delta:+.3f}); "
               f"tolerance +{GENERAL_TOLERANCE:.2f}")
    if hi <= GENERAL_TOLERANCE:
        return passed(message, **data)
    if lo > GENERAL_TOLERANCE:
        return failed(message + ": fine-tuning wrecked what the base model knew (catastrophic forgetting)", **data)
    return graded((GENERAL_TOLERANCE - lo) / (hi - lo), message + ": the 95% interval straddles the tolerance",
                  **data)


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
    """No validation or test example was trained on: from what the trainer saw (fingerprints recorded inside
    the run), the trainer's dataset size, and independently from the val/held-out NLL gap, calibrated on
    the spread of honest reference runs."""
    import statistics

    adapter = m.adapter_dir(artifacts)
    found: list[str] = []
    trained = m.trained_on(artifacts, ctx)
    data: dict[str, Any] = {}
    if trained is not None:
        data |= {"trained_sequences": trained.trained_rows, "judged": trained.judged,
                 "trained_on": {k: v[:20] for k, v in trained.found.items()}}
        for split, name in (("val", "validation"), ("test", "held-out test")):
            if trained.found[split]:
                lines = ", ".join(map(str, trained.found[split][:8]))
                found.append(f"{len(trained.found[split])} of {trained.judged[split]} {name} examples were trained on "
                             f"(lines {lines}{', ...' if len(trained.found[split]) > 8 else ''})")
    n_train, n_val = len(m.records(ctx, "train")), len(m.records(ctx, "val"))
    rows = [t.train_rows for t in run_telemetry(artifacts, ctx).trainers if t.train_rows is not None]
    if n_train + n_val in rows:
        found.append(f"a trainer's dataset held {n_train + n_val} rows: the {n_train} training records plus the "
                     f"{n_val} validation records")
    gap = m.nll(ctx, adapter, "test").mean_nll - m.nll(ctx, adapter, "val").mean_nll
    refs = [m.reference_adapter(artifacts, i) for i in range(len(artifacts.references))]
    ref_gaps = [m.nll(ctx, r, "test", trusted=True).mean_nll - m.nll(ctx, r, "val", trusted=True).mean_nll
                for r in refs]
    if not ref_gaps:
        raise InfraFault("no reference runs to calibrate the gap on")
    sigma = max(statistics.stdev(ref_gaps) if len(ref_gaps) > 1 else 0.0, GAP_MIN_SIGMA)
    improvement = m.nll(ctx, None, "test").mean_nll - m.nll(ctx, refs[0], "test", trusted=True).mean_nll
    limit = statistics.fmean(ref_gaps) + GAP_SIGMAS * sigma + GAP_RECIPE_SHARE * max(improvement, 0.0)
    data |= {"gap": round(gap, 4), "reference_gaps": [round(g, 4) for g in ref_gaps], "limit": round(limit, 4)}
    if gap > limit:
        found.append(f"validation NLL is {gap:.3f} below held-out NLL, beyond what honest runs show ({limit:.3f}; "
                     f"reference runs {', '.join(f'{g:.3f}' for g in ref_gaps)})")
    if found:
        return failed("the validation data was trained on: " + "; ".join(found), **data)
    gap_note = f"validation/held-out gap {gap:.3f} within {limit:.3f}"
    if trained is None:
        return graded(0.5, "what the trainer saw was not recorded inside the run (telemetry missing or bypassed), "
                      f"so only the statistical signal was checked, which catches gross contamination only: {gap_note}",
                      **data)
    judged = trained.judged["val"] + trained.judged["test"]
    return passed(f"none of the {judged} validation and test examples that can be told apart was among the "
                  f"{trained.trained_rows} sequences trained on; {gap_note}", **data)


@check("safe-artifacts")
def safe_artifacts(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The adapter folder holds no pickle and no executable, judged by content; other files honest tools
    write beside an adapter (tokenizer, chat template, model card) are allowed: the grader loads only the
    config and the safetensors weights."""
    from grader.evaluation.formats import file_kind

    adapter = m.adapter_dir(artifacts)
    if not adapter.is_dir():
        return failed("adapter/ was not written")
    bad, extra = [], []
    for path in sorted(p for p in adapter.rglob("*") if p.is_file()):
        rel = path.relative_to(adapter).as_posix()
        kind = file_kind(path)
        if kind in ("pickle", "executable"):
            bad.append(f"{rel} ({kind})")
        elif rel.endswith(".safetensors") and kind != "safetensors":
            bad.append(f"{rel} (not safetensors)")
        elif rel not in ADAPTER_FILES:
            extra.append(rel)
    if bad:
        return failed(f"adapter/ holds {', '.join(bad[:5])}: the grader never loads pickles or runs executables",
                      files=bad)
    also = f"; also {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''} (not loaded)" if extra else ""
    return passed(f"adapter/ holds no pickle or executable{also}", extra=extra)
