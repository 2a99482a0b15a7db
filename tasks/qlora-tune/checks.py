"""Checks of the qlora-tune task. A QLoRA adapter looks exactly like a LoRA adapter on disk, so the
quantisation, the trials and the selection are judged from what telemetry recorded inside the run and
from the grader's own measurements; trials.jsonl and best/trial.json are compared with both, never
adopted.
"""

from __future__ import annotations

import math
from typing import Any

from grader.checks import Artifacts, CheckContext, Outcome, check, failed, graded, passed, sibling_module
from grader.checks import adapter_checks as shared
from grader.checks.adapters import AdapterMeasures

t = sibling_module(__file__, "trials")
m = AdapterMeasures("qlora-tune", t.best_adapter)
METRIC_TOLERANCE = (0.002, 0.003)
"""Absolute, plus this fraction of the grader's value. The grader reloads the chosen adapter on the
4-bit base as the trial measured it: on tiny that reproduces an honest trial's NLL to 1e-6 on the
CPU. Measuring the same adapter merged into the full-precision base instead (not the definition)
differs by about 0.5% (0.013 nats at 2.46)."""
COMPUTE_DTYPES = ("torch.float32", "torch.bfloat16")
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6
"""A tracked loss matches the one recorded inside the run when equal at float32 precision: TensorBoard
stores scalars as float32."""


# -- quantisation, trials and the search ---------------------------------------------------------

def _quantization_problems(trial: Any) -> list[str]:
    q = trial.quantization
    if q is None:
        return ["no model facts were recorded at train start"]
    problems = []
    if not q.get("linear4bit"):
        problems.append("no bitsandbytes Linear4bit layer in the model")
    if q.get("full_precision_linear"):
        names = ", ".join(q.get("full_precision_examples") or [])
        problems.append(f"{q['full_precision_linear']} base linear layers in full precision ({names})")
    if q.get("quant_types") and q["quant_types"] != ["nf4"]:
        problems.append(f"quant type {', '.join(map(str, q['quant_types']))}, not nf4")
    if q.get("linear4bit") and q.get("double_quant") != [True]:
        problems.append("not double-quantised")
    if q.get("compute_dtypes") and not set(q["compute_dtypes"]) <= set(COMPUTE_DTYPES):
        problems.append(f"compute dtype {', '.join(q['compute_dtypes'])}")
    if not q.get("lora_layers") or q.get("lora_on_4bit") != q.get("lora_layers"):
        problems.append(f"{q.get('lora_on_4bit') or 0} of {q.get('lora_layers') or 0} LoRA layers sit on 4-bit layers")
    if not trial.quant4_grad_forwards:
        problems.append("no forward pass went through a 4-bit layer while training")
    return problems


def _quant_summary(trials: list[Any]) -> dict[str, Any]:
    """What telemetry saw of the quantisation, for the report."""
    facts = [tr.quantization or {} for tr in trials]

    def union(key: str) -> list[str]:
        return sorted({str(v) for f in facts for v in (f.get(key) or [])})

    return {"layer_type": "bitsandbytes Linear4bit" if any(f.get("linear4bit") for f in facts) else "none",
            "quant_type": union("quant_types"), "double_quant": union("double_quant"),
            "compute_dtype": union("compute_dtypes"),
            "per_trial": [{"learning_rate": tr.learning_rate, "r": tr.r, "linear4bit": f.get("linear4bit"),
                           "full_precision_linear": f.get("full_precision_linear"),
                           "lora_on_4bit": f.get("lora_on_4bit"), "quant4_grad_forwards": tr.quant4_grad_forwards}
                          for tr, f in zip(trials, facts)]}


@check("quantized-4bit")
def quantized_4bit(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Every Trainer.train of the run trained LoRA layers on bitsandbytes 4-bit NF4, double-quantised base
    layers, with forward passes through them while training: from telemetry, since the files cannot tell."""
    artifacts.require("main")
    seen = [s for s in t.seen_trials(artifacts, ctx) if s.trained]
    if not seen:
        return failed("no training (Trainer.train) was recorded inside the run")
    data = {"quantization": _quant_summary(seen)}
    bad = {i: p for i, s in enumerate(seen) if (p := _quantization_problems(s))}
    if bad:
        first = next(iter(bad))
        return failed(f"{len(bad)} of {len(seen)} training runs were not QLoRA; run {first + 1}: "
                      + "; ".join(bad[first]), **data)
    q = data["quantization"]
    return passed(f"all {len(seen)} training runs trained LoRA on {q['layer_type']} layers ({'/'.join(q['quant_type'])}, "
                  f"double-quantised, compute {'/'.join(q['compute_dtype'])}), with forward passes through them",
                  **data)


def _matched(trials: list[Any], seen: list[Any]) -> list[int | None]:
    """For each trial of trials.jsonl, the index of a distinct trained run with its learning rate and rank."""
    free = [i for i, s in enumerate(seen) if s.trained]
    out: list[int | None] = []
    for trial in trials:
        hit = next((i for i in free if t.same_lr(seen[i].learning_rate, trial.params.learning_rate)
                    and seen[i].r == trial.params.r), None)
        if hit is not None:
            free.remove(hit)
        out.append(hit)
    return out


@check("trials-count")
def trials_count(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """At least K trials in trials.jsonl, with distinct parameters, each matched to a training run seen inside
    the run with the same learning rate and rank."""
    wanted = int(ctx.params["trials"])
    trials, seen = t.trials(artifacts, ctx), t.seen_trials(artifacts, ctx)
    distinct = len({tr.params.key() for tr in trials})
    matched = _matched(trials, seen)
    unseen = [tr.trial for tr, hit in zip(trials, matched) if hit is None]
    data = {"requested": wanted, "listed": len(trials), "distinct_params": distinct,
            "trained_runs": sum(s.trained for s in seen), "unseen_trials": unseen}
    problems = []
    if len(trials) < wanted:
        problems.append(f"{len(trials)} trials listed, {wanted} requested")
    if distinct < wanted:
        problems.append(f"only {distinct} distinct parameter sets among {len(trials)} trials")
    if unseen:
        problems.append(f"no training with the learning rate and rank of trial(s) {', '.join(map(str, unseen[:8]))} "
                        f"was recorded inside the run ({data['trained_runs']} training runs seen)")
    if problems:
        return failed("; ".join(problems), **data)
    return passed(f"{len(trials)} trials with {distinct} distinct parameter sets, each seen training", **data)


@check("search-space")
def search_space(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The learning rate and the LoRA rank both took at least two values, in trials.jsonl and in the
    training runs seen inside the run."""
    trials, seen = t.trials(artifacts, ctx), [s for s in t.seen_trials(artifacts, ctx) if s.trained]
    listed = {"learning_rate": sorted({tr.params.learning_rate for tr in trials}),
              "r": sorted({tr.params.r for tr in trials})}
    trained = {"learning_rate": sorted({s.learning_rate for s in seen if s.learning_rate is not None}),
               "r": sorted({s.r for s in seen if s.r is not None})}
    varied = [k for k in listed if len(listed[k]) >= 2 and len(trained[k]) >= 2]
    data = {"listed": listed, "trained": trained}
    names = {"learning_rate": "learning rate", "r": "LoRA rank"}
    if len(varied) == 2:
        return passed(f"learning rates {', '.join(f'{v:g}' for v in listed['learning_rate'])} and ranks "
                      f"{', '.join(map(str, listed['r']))} were tried", **data)
    fixed = [names[k] for k in listed if k not in varied]
    return graded(len(varied) / 2, f"the {' and the '.join(fixed)} did not vary across the trials (listed "
                  f"{listed}; trained {trained})", **data)


def _trial_table(artifacts: Artifacts, ctx: CheckContext, chosen: int | None, recomputed: float | None = None
                 ) -> list[dict[str, Any]]:
    """The trials for the report: parameters, reported loss, the grader's recomputation for the chosen one."""
    rows = []
    for tr in t.trials(artifacts, ctx):
        row = {"trial": tr.trial, "params": tr.params.model_dump(), "eval_loss": round(tr.eval_loss, 5),
               "chosen": tr.trial == chosen}
        if tr.trial == chosen and recomputed is not None:
            row["recomputed"] = round(recomputed, 5)
        rows.append(row)
    return rows


@check("best-selected")
def best_selected(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """best/trial.json is the line of trials.jsonl with the lowest eval_loss (ties allowed)."""
    trials, chosen = t.trials(artifacts, ctx), t.chosen(artifacts, ctx)
    lowest = min(trials, key=lambda tr: tr.eval_loss)
    line = next((tr for tr in trials if tr.trial == chosen.trial), None)
    data = {"chosen": chosen.trial, "lowest": lowest.trial, "trials": _trial_table(artifacts, ctx, chosen.trial)}
    if line is None:
        return failed(f"best/trial.json names trial {chosen.trial}, which trials.jsonl does not list", **data)
    if line.params.key() != chosen.params.key() or line.eval_loss != chosen.eval_loss:
        return failed(f"best/trial.json differs from trial {chosen.trial}'s line in trials.jsonl", **data)
    if chosen.eval_loss > lowest.eval_loss:
        return failed(f"trial {chosen.trial} was chosen (eval_loss {chosen.eval_loss:.4f}), but trial {lowest.trial} "
                      f"has the lowest eval_loss ({lowest.eval_loss:.4f})", **data)
    return passed(f"trial {chosen.trial} has the lowest eval_loss of {len(trials)} trials ({chosen.eval_loss:.4f})",
                  **data)


@check("best-matches-params")
def best_matches_params(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The saved adapter's rank and alpha (its config and its stored tensors) are the chosen trial's."""
    from grader.evaluation import adapter_tensors, validate_adapter_dir

    chosen = t.chosen(artifacts, ctx)
    adapter = m.adapter_dir(artifacts)
    config = validate_adapter_dir(adapter)
    ranks = sorted({int(x.shape[0]) for n, x in adapter_tensors(adapter).items() if "lora_A" in n})
    data = {"trial": chosen.trial, "trial_r": chosen.params.r, "trial_lora_alpha": chosen.params.lora_alpha,
            "adapter_r": config.r, "adapter_lora_alpha": (config.model_extra or {}).get("lora_alpha"),
            "stored_ranks": ranks}
    problems = []
    if config.r != chosen.params.r or ranks != [chosen.params.r]:
        problems.append(f"rank {config.r} (stored {', '.join(map(str, ranks)) or 'none'}) vs the trial's {chosen.params.r}")
    if data["adapter_lora_alpha"] != chosen.params.lora_alpha:
        problems.append(f"lora_alpha {data['adapter_lora_alpha']} vs the trial's {chosen.params.lora_alpha:g}")
    if problems:
        return failed(f"best/adapter is not trial {chosen.trial}'s adapter: " + "; ".join(problems), **data)
    return passed(f"best/adapter has trial {chosen.trial}'s rank {config.r} and alpha {chosen.params.lora_alpha:g}",
                  **data)


@check("best-reproduces")
def best_reproduces(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The grader reloads best/adapter on the 4-bit base and recomputes the validation NLL; the chosen trial's
    reported eval_loss must agree within tolerance."""
    chosen = t.chosen(artifacts, ctx)
    measured = m.nll_4bit(ctx, m.adapter_dir(artifacts), "val").mean_nll
    tolerance = METRIC_TOLERANCE[0] + METRIC_TOLERANCE[1] * measured
    data = {"trial": chosen.trial, "reported": round(chosen.eval_loss, 5), "measured": round(measured, 5),
            "tolerance": round(tolerance, 4), "trials": _trial_table(artifacts, ctx, chosen.trial, measured)}
    if abs(chosen.eval_loss - measured) <= tolerance:
        return passed(f"trial {chosen.trial}'s eval_loss {chosen.eval_loss:.4f} matches the grader's {measured:.4f} on "
                      f"the 4-bit base (± {tolerance:.4f})", **data)
    return failed(f"trial {chosen.trial} reports eval_loss {chosen.eval_loss:.4f}, but its adapter measures "
                  f"{measured:.4f} on the 4-bit base (tolerance ± {tolerance:.4f})", **data)


# -- tracking ---------------------------------------------------------------------------------------

def _same_curve(tracked: list[tuple[int, float]], recorded: list[tuple[int, float]]) -> bool:
    return bool(recorded) and len(tracked) == len(recorded) and all(
        ts == rs and math.isclose(tv, rv, rel_tol=LOSS_RTOL, abs_tol=LOSS_ATOL)
        for (ts, tv), (rs, rv) in zip(tracked, recorded))


@check("tracking-logged")
def tracking_logged(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """One tracked run (TensorBoard event files under runs/) per trial, whose training loss curve is the
    one recorded inside that trial's training, and which holds a validation loss curve."""
    from grader.tracking import read_tensorboard_runs

    out = artifacts.require("main")
    wanted = int(ctx.params["trials"])
    seen = [s for s in t.seen_trials(artifacts, ctx) if s.trained]
    runs = read_tensorboard_runs(out / "runs")  # none when runs/ was not written
    free = list(range(len(runs)))
    matched, curves, no_eval = 0, [], []
    for number, trial in enumerate(seen):
        hit = next((i for i in free if _same_curve(runs[i].series("train/loss", "loss"), trial.losses)), None)
        if hit is None:
            continue
        free.remove(hit)
        matched += 1
        evals = runs[hit].series("eval/loss", "eval_loss")
        if not evals:
            no_eval.append(runs[hit].name)
        curves.append({"run": runs[hit].name, "learning_rate": trial.learning_rate, "r": trial.r,
                       "train": [[s, round(v, 5)] for s, v in runs[hit].series("train/loss", "loss")][:500],
                       "eval": [[s, round(v, 5)] for s, v in evals][:100]})
    data = {"tracked_runs": [r.name for r in runs], "trained_runs": len(seen), "matched": matched,
            "without_eval": no_eval, "curves": curves}
    if not runs:
        return failed("runs/ holds no TensorBoard run: track each trial (report_to=\"tensorboard\")", **data)
    complete = matched - len(no_eval)
    if complete >= max(wanted, len(seen)):
        return passed(f"{matched} tracked runs, each with the training loss curve recorded inside its trial and a "
                      "validation loss curve", **data)
    missing = []
    if matched < len(seen):
        missing.append(f"{len(seen) - matched} of {len(seen)} trained trials have no tracked run with their loss curve")
    if no_eval:
        missing.append(f"{len(no_eval)} tracked runs hold no validation loss ({', '.join(no_eval[:4])})")
    score = complete / max(wanted, len(seen), 1)
    return graded(score, "; ".join(missing) or f"only {complete} of {wanted} trials tracked", **data)


# -- the adapter, measured by the grader -------------------------------------------------------------

@check("heldout-quality")
def heldout_quality(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.heldout_scale(m, artifacts, ctx)


@check("learned-cohort-data")
def learned_cohort_data(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.learned_cohort_data(m, artifacts, ctx)


@check("eval-uncontaminated")
def eval_uncontaminated(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.eval_uncontaminated(m, artifacts, ctx, gap=False)


@check("general-retention")
def general_retention(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.general_retention(m, artifacts, ctx)


@check("safe-artifacts")
def safe_artifacts(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.safe_artifacts(m, artifacts, ctx)
