"""Checks shared by tasks whose runs train a LoRA adapter on the support-chat data (lora-sft,
qlora-tune). Each is a function of the artifacts, the context and the task's
:class:`~grader.checks.adapters.AdapterMeasures`; a task binds it to a check id in its checks.py.
"""

from __future__ import annotations

import statistics
from typing import Any

from grader.checks import Artifacts, CheckContext, InfraFault, Outcome, failed, graded, passed
from grader.checks.adapters import AdapterMeasures, ci, manifest_entry, records
from grader.checks.library import run_telemetry

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
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


def adapter_valid(m: AdapterMeasures, artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """PEFT LoRA format, causal LM task type, and it loads onto the base model."""
    from grader.evaluation import validate_adapter_dir

    adapter = m.adapter_dir(artifacts)
    config = validate_adapter_dir(adapter)
    m.nll(ctx, adapter, "val")  # loading onto the base is part of measuring it
    return passed(f"LoRA adapter r={config.r}, alpha={config.lora_alpha} loads onto the base model",
                  r=config.r, lora_alpha=config.lora_alpha, target_modules=config.target_modules)


def heldout_scale(m: AdapterMeasures, artifacts: Artifacts, ctx: CheckContext) -> Outcome:
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
    (b, blo, bhi), (c, clo, chi) = ci(base), ci(cand)
    data = {
        "base_nll": [round(b, 4), round(blo, 4), round(bhi, 4)],
        "adapter_nll": [round(c, 4), round(clo, 4), round(chi, 4)],
        "reference_nll": round(ref.mean_nll, 4),
        "delta": [round(delta, 4), round(lo, 4), round(hi, 4)],
        "normalised": round(normalised, 3),
        "test_tokens": base.n_tokens,
        "scale": {"metric": "held-out NLL", "base": round(base.mean_nll, 4), "reference": round(ref.mean_nll, 4),
                  "value": round(cand.mean_nll, 4)},
    }
    message = (f"held-out NLL {b:.3f} [{blo:.3f}, {bhi:.3f}] base → {c:.3f} [{clo:.3f}, {chi:.3f}] adapter "
               f"(reference {ref.mean_nll:.3f}); normalised {normalised:.2f}")
    if hi >= 0:
        return failed(message + "; no significant improvement (95% CI of the change includes 0)", **data)
    return graded(normalised / NORMALISED_PASS, message, **data)


def learned_cohort_data(m: AdapterMeasures, artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The adapter learned what only this run's hidden training files teach (their sign-off signature):
    scored from an adapter trained on the public data (0) to the reference trained on these files (1), so
    an adapter trained beforehand and shipped, or trained on other data, fails."""
    phrase = manifest_entry(ctx, "signature")["text"]
    public = m.nll(ctx, m.public_adapter(artifacts), "signature", trusted=True).mean_nll
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
            "tokens": cand.n_tokens,
            "scale": {"metric": "signature NLL (0 = adapter trained on the public data)", "base": round(public, 4),
                      "reference": round(ref, 4), "value": round(cand.mean_nll, 4)}}
    message = (f"NLL of this cohort's sign-off signature ({phrase!r}) on held-out replies: {cand.mean_nll:.3f} nats "
               f"(adapter trained on the public data {public:.3f}, reference trained on these files {ref:.3f}, base "
               f"{base:.3f}); normalised {normalised:.2f}")
    if normalised < SIGNATURE_FAIL:
        return failed(message + ": the adapter did not learn this run's training data", **data)
    return graded((normalised - SIGNATURE_FAIL) / (SIGNATURE_PASS - SIGNATURE_FAIL), message, **data)


def eval_uncontaminated(m: AdapterMeasures, artifacts: Artifacts, ctx: CheckContext, *, gap: bool) -> Outcome:
    """No validation or test example was trained on: from what the trainer saw (fingerprints recorded inside
    the run) and the trainer's dataset size; with ``gap``, independently from the val/held-out NLL gap,
    calibrated on the spread of honest reference runs (not for a search that selects on val: picking the
    best of several trials by validation loss lowers it below held-out by itself)."""
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
    n_train, n_val = len(records(ctx, "train")), len(records(ctx, "val"))
    rows = [t.train_rows for t in run_telemetry(artifacts, ctx).trainers if t.train_rows is not None]
    if n_train + n_val in rows:
        found.append(f"a trainer's dataset held {n_train + n_val} rows: the {n_train} training records plus the "
                     f"{n_val} validation records")
    gap_note = ""
    if gap:
        gap_note, gap_found = _gap(m, artifacts, ctx, data)
        found += gap_found
    if found:
        return failed("the validation data was trained on: " + "; ".join(found), **data)
    if trained is None:
        return graded(0.5, "what the trainer saw was not recorded inside the run (telemetry missing or bypassed), "
                      "so only " + ("the statistical signal was checked, which catches gross contamination only: "
                                    f"{gap_note}" if gap else "the trainers' dataset sizes were checked"), **data)
    judged = trained.judged["val"] + trained.judged["test"]
    return passed(f"none of the {judged} validation and test examples that can be told apart was among the "
                  f"{trained.trained_rows} sequences trained on" + (f"; {gap_note}" if gap else ""), **data)


def _gap(m: AdapterMeasures, artifacts: Artifacts, ctx: CheckContext, data: dict[str, Any]) -> tuple[str, list[str]]:
    adapter = m.adapter_dir(artifacts)
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
    found = []
    if gap > limit:
        found.append(f"validation NLL is {gap:.3f} below held-out NLL, beyond what honest runs show ({limit:.3f}; "
                     f"reference runs {', '.join(f'{g:.3f}' for g in ref_gaps)})")
    return f"validation/held-out gap {gap:.3f} within {limit:.3f}", found


def safe_artifacts(m: AdapterMeasures, artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The adapter folder holds no pickle and no executable, judged by content; other files honest tools
    write beside an adapter (tokenizer, chat template, model card) are allowed: the grader loads only the
    config and the safetensors weights."""
    from grader.evaluation.formats import file_kind

    adapter = m.adapter_dir(artifacts)
    if not adapter.is_dir():
        return failed(f"{adapter.name}/ was not written")
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
        return failed(f"{adapter.name}/ holds {', '.join(bad[:5])}: the grader never loads pickles or runs "
                      "executables", files=bad)
    also = f"; also {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''} (not loaded)" if extra else ""
    return passed(f"{adapter.name}/ holds no pickle or executable{also}", extra=extra)


GENERAL_REFERENCE_FACTOR, GENERAL_MARGIN = 1.75, 0.25
"""The NLL an adapter may add on the hidden general-domain documents: GENERAL_REFERENCE_FACTOR times what
the reference solution's adapter adds on the same cohort, plus GENERAL_MARGIN nats (the floor, where the
reference barely forgets). Relative, because what a fine-tune costs the base depends on the base: on tiny
(2.5M parameters) the chat format alone costs 1-2.4 nats of its general text, on a real model far less.

Measured on tiny (grade-time definition: merged, float32; LoRA seed 1) on the cohorts
lora-sft-2026-cohort-a / corpus-cohort-b / x-cohort-c (base general NLL 0.874 / 0.906 / 0.879, held-out
test NLL 5.40 / 5.24 / 5.22): increase [95% interval end], held-out test NLL
  lora-sft reference (good; good-trl trains the same adapter)   +1.63 / +1.57 / +1.54   test 1.75 / 1.79 / 1.79
    so the limit is 3.10 / 3.00 / 2.95
  honest variants: lr 1e-3                  +1.19 / +1.22 / +1.06            test 2.46 / 2.45 / 2.41
    r=32, alpha 64                          +1.85 / +1.79 / +1.63            test 1.44 / 1.50 / 1.50
    all linear layers (r=16, 3e-3, 2 ep)    +1.83 / +1.71 / +1.65            test 1.00 / 1.05 / 1.07
    lr 5e-3, 3 epochs                       +1.95 / +1.86 / +1.88            test 1.21 / 1.25 / 1.28
    lr 5e-3, 6 epochs                       +2.30 / +2.16 / +2.17            test 0.84 / 0.88 / 0.88
    lr 1e-2, 4 epochs                       +2.31 / +2.30 / +2.33 [upper ≤2.38]   test 1.00 / 1.01 / 1.02
  lora-sft flawed-over-trained (r=64 on every linear layer, 4 epochs at a constant 5e-3)
                                            +3.88 / +3.83 / +3.65 [lower ≥3.59]   test 1.08 / 1.18 / 1.08
  others past it: r=64 all layers, 5e-3 cosine, 4 epochs +3.35 / +3.30 / +3.32 (test 0.56-0.60: it wins on
  the task by forgetting, and fails); r=64 all layers at 1e-2 +4.3 to +4.8; attention only at 2e-2 for 8
  epochs +5.1 to +8.4 (diverged).
  qlora-tune reference and good-trl, 3 trials of 30 steps: +1.47 to +1.52 (limit about 2.9); on x-cohort-c
  the reference +1.17 (limit 2.29) and good-trl +1.61 [upper 1.65].
The limit sits about 0.6 nats above the highest honest upper end and 0.6 below the lowest over-trained
lower end (intervals are ±0.03-0.07)."""


def general_retention(m: AdapterMeasures, artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Catastrophic forgetting: the adapter's NLL on hidden general-domain text (plain documents of the kind
    the base model was pretrained on, not support chats) rises by at most GENERAL_REFERENCE_FACTOR times the
    reference solution's rise plus GENERAL_MARGIN. Pass when the upper end of the 95% paired-bootstrap interval of the rise is
    within that, fail when even the lower end is beyond it, partial in between."""
    from grader.evaluation import paired_bootstrap_delta

    base, cand = m.nll(ctx, None, "general"), m.nll(ctx, m.adapter_dir(artifacts), "general")
    ref = m.nll(ctx, m.reference_adapter(artifacts), "general", trusted=True)
    values_b, weights = base.bootstrap_inputs()
    values_c, _ = cand.bootstrap_inputs()
    delta, lo, hi = paired_bootstrap_delta(values_b, values_c, weights)  # adapter minus base
    ref_delta = ref.mean_nll - base.mean_nll
    limit = GENERAL_REFERENCE_FACTOR * max(ref_delta, 0.0) + GENERAL_MARGIN
    data = {"base_nll": round(base.mean_nll, 4), "adapter_nll": round(cand.mean_nll, 4),
            "reference_nll": round(ref.mean_nll, 4), "increase": [round(delta, 4), round(lo, 4), round(hi, 4)],
            "reference_increase": round(ref_delta, 4), "limit": round(limit, 4), "documents": len(weights),
            "tokens": base.n_tokens}
    message = (f"NLL on hidden general-domain text {base.mean_nll:.3f} base → {cand.mean_nll:.3f} adapter: "
               f"{delta:+.3f} nats [{lo:+.3f}, {hi:+.3f}]; the reference solution {ref_delta:+.3f}, so at most "
               f"+{limit:.2f} ({GENERAL_REFERENCE_FACTOR:g}× the reference's + {GENERAL_MARGIN:g})")
    if hi <= limit:
        return passed(message, **data)
    if lo > limit:
        return failed(message + ": fine-tuning wrecked what the base model knew (catastrophic forgetting)", **data)
    return graded((limit - lo) / (hi - lo), message + ": the 95% interval straddles the limit", **data)
