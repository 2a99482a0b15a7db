"""Checks of the sft-dpo task. The grader builds the SFT and the final model from the run's adapters and
measures them on hidden data itself; the run's own numbers (the DPO metrics its trainer logged) are
compared with those measurements, and how the DPO stage started is read from the telemetry recorded
inside the run, never taken from the candidate's word.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

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
from grader.checks import adapter_checks as shared
from grader.checks.adapters import AdapterMeasures, tokenizer
from grader.checks.library import run_telemetry
from grader.telemetry import Telemetry, read_telemetry

measure = sibling_module(__file__, "measure")
SFT: AdapterMeasures = measure.SFT
DPO = AdapterMeasures("sft-dpo/dpo", measure.dpo_adapter)
DISTRIBUTED = "distributed"
ACCURACY_PASS = 0.9
"""Held-out preference accuracy scored from chance (0.5 → 0) to the reference's (→ 1): full marks from
ACCURACY_PASS of the way. The reference reaches 1.00 on every cohort measured; an honest other recipe 0.99."""
RETENTION_FACTOR, RETENTION_SHARE = 2.0, 0.2
"""The final model's SFT test NLL may exceed the SFT model's by RETENTION_FACTOR times the reference's rise
plus RETENTION_SHARE of what the reference's SFT stage gained over the base (about 0.5 nats on tiny): DPO
lowers the likelihood of chosen replies too, so some rise is honest, and a gentle reference must not make
a bolder honest recipe fail. Measured on tiny (cohorts a, b, c): the reference +0.004 to +0.016,
good-ref-model (beta 0.2, lr 1e-3) +0.025 to +0.075 (+0.12 with 14 DPO steps), the collapsed flaw (beta
0.01, lr 2e-2) +9 to +20."""
DRIFT_FACTOR, DRIFT_MARGIN = 3.0, 0.3
"""The bound on the mean per-token KL(final || SFT): DRIFT_FACTOR times the reference's KL plus DRIFT_MARGIN
nats. Measured on tiny: the reference 0.004 to 0.018, good-ref-model 0.03 to 0.06 (0.10 with 14 DPO steps),
the collapsed flaw 4.9 to 5.6."""
PROBE_SHARE = 0.25
"""The model a DPO run starts from (and its reference) must be within this share of the base-to-SFT
distance of the grader's SFT model on the probe conversation: DPO from the raw base sits at 1.0."""
PROBE_MIN = 0.02
"""Base and SFT models closer than this (nats per token, on the probe) cannot be told apart."""
REPORTED_ACCURACY, REPORTED_MARGIN = (0.05, 0.0), (0.05, 0.10)
"""Tolerances (absolute, share of the grader's value) between the logged final eval_rewards/accuracies and
eval_rewards/margins and the grader's recomputation on the same pairs. TRL logs the mean of per-batch
means (a last, smaller batch weighs as much as a full one: 1.29 against 1.04 per pair on 17 pairs in
batches of 8), so both are computed; the reference's logged margin matches the grader's per-batch
figure to about 0.002."""
EQUIVALENT_NLL, EQUIVALENT_ACCURACY = (0.10, 0.05), 0.10
"""A distributed run is equivalent when its SFT and final models' test NLL are within EQUIVALENT_NLL
(absolute, plus this share of the base-to-reference-SFT improvement) of the single-process run's, and its
held-out preference accuracy within EQUIVALENT_ACCURACY. Ranks see other shuffles of the same data, so
the weights differ; what they learned must not."""


def _out(artifacts: Artifacts, run: str = "main") -> Path:
    return artifacts.require(run)


# -- the SFT stage ------------------------------------------------------------------------------


@check("sft-improves")
def sft_improves(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.heldout_scale(SFT, artifacts, ctx)


@check("learned-cohort-data")
def learned_cohort_data(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.learned_cohort_data(SFT, artifacts, ctx)


@check("safe-artifacts")
def safe_artifacts(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    outcomes = {stage: shared.safe_artifacts(m, artifacts, ctx) for stage, m in (("sft", SFT), ("dpo", DPO))}
    bad = {stage: o for stage, o in outcomes.items() if o.status != "pass"}
    verdict = failed if bad else passed
    return verdict("; ".join(f"{stage}: {o.message}" for stage, o in (bad or outcomes).items()))


# -- the DPO stage ------------------------------------------------------------------------------


def _distance(a: list[float], b: list[float]) -> float:
    return statistics.fmean(abs(x - y) for x, y in zip(a, b, strict=True))


@check("dpo-from-sft")
def dpo_from_sft(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Every DPO training recorded inside the run started from the SFT model and used it as the reference:
    the telemetry's probe of the policy and the reference at train start, against the grader's own base
    and SFT models (built from the run's sft/adapter) on the same tokens."""
    from grader.telemetry.site import tunegrade_probe

    out = _out(artifacts)
    runs = [r for r in run_telemetry(artifacts, ctx).train_runs if r.probe is not None]
    if not runs:
        return failed("no DPO training with a reference model was recorded inside the run (a trainer with a "
                      "`ref_model` attribute, such as TRL's DPOTrainer)")
    expected = tunegrade_probe.probe_ids(tokenizer(ctx))
    base = measure.probe_logprobs(ctx, expected, "base")
    sft = measure.probe_logprobs(ctx, expected, "sft", out)
    span = _distance(base, sft)
    data: dict[str, Any] = {"base_to_sft": round(span, 4), "trainings": []}
    if span < PROBE_MIN:
        return failed(f"the SFT model is indistinguishable from the base model on the probe ({span:.4f} nats per "
                      "token): there is no SFT model to start DPO from", **data)
    problems = []
    for run in runs:
        probe = run.probe
        if probe.ids != expected:
            problems.append(f"trainer {run.trainer_id}: the probe was tokenized differently from the base model's "
                            "tokenizer")
            continue
        seen = {"policy": probe.policy, "reference": probe.reference}
        shares = {k: (_distance(v, sft) / span if v is not None else None) for k, v in seen.items()}
        data["trainings"].append({"trainer": run.trainer_id, "reference_via": probe.reference_via,
                                  **{f"{k}_share": (round(s, 3) if s is not None else None) for k, s in shares.items()}})
        for what, share in shares.items():
            if share is None:
                problems.append(f"trainer {run.trainer_id}: no {what} model could be probed")
            elif share > PROBE_SHARE:
                near_base = _distance(seen[what], base) / span
                problems.append(f"trainer {run.trainer_id}: the {what} is not the SFT model ({share:.2f} of the way "
                                f"from it to the base model's distance; {near_base:.2f} from the base)")
    if problems:
        return failed("; ".join(problems), **data)
    return passed(f"{len(runs)} DPO training(s) started from the SFT model with it as the reference (within "
                  f"{max(max(t['policy_share'], t['reference_share']) for t in data['trainings']):.3f} of the "
                  f"base-to-SFT distance {span:.3f} nats per token)", **data)


def _ref_preference(artifacts: Artifacts, ctx: CheckContext) -> Any:
    ref = artifacts.reference(0)
    return measure.preference(ctx, ref, measure.settings(ref).beta, trusted=True)


@check("preference-accuracy")
def preference_accuracy(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The grader's implicit-reward accuracy and margin on held-out pairs (policy = SFT + DPO, reference =
    SFT, beta from pipeline.json), scored from chance to the reference solution's accuracy."""
    out = _out(artifacts)
    beta = measure.settings(out).beta
    stats, ref = measure.preference(ctx, out, beta), _ref_preference(artifacts, ctx)
    (acc, alo, ahi), (margin, mlo, mhi) = stats.accuracy, stats.margin
    span = ref.accuracy[0] - 0.5
    if span <= 0:
        raise InfraFault(f"the reference solution's held-out accuracy is {ref.accuracy[0]:.3f}; the scale is undefined")
    normalised = (acc - 0.5) / span
    data = {"accuracy": [round(acc, 4), round(alo, 4), round(ahi, 4)],
            "margin": [round(margin, 4), round(mlo, 4), round(mhi, 4)], "beta": beta,
            "reference_accuracy": round(ref.accuracy[0], 4), "pairs": stats.n_pairs, "normalised": round(normalised, 3),
            "scale": {"metric": "held-out preference accuracy (0 = chance)", "base": 0.5,
                      "reference": round(ref.accuracy[0], 4), "value": round(acc, 4)}}
    message = (f"held-out preference accuracy {acc:.3f} [{alo:.3f}, {ahi:.3f}], mean margin {margin:.3f} "
               f"[{mlo:.3f}, {mhi:.3f}] over {stats.n_pairs} pairs at beta {beta:g} (reference accuracy "
               f"{ref.accuracy[0]:.3f})")
    if mlo <= 0:
        return failed(message + ": the final model does not prefer the chosen replies", **data)
    return graded(normalised / ACCURACY_PASS, message, **data)


@check("retention")
def retention(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The final model's NLL on the hidden SFT test chats stays within a tolerance of the SFT model's."""
    from grader.evaluation import paired_bootstrap_delta

    out, ref = _out(artifacts), artifacts.reference(0)
    sft, final = measure.test_nll(ctx, out, "sft"), measure.test_nll(ctx, out, "final")
    ref_sft = measure.test_nll(ctx, ref, "sft", trusted=True).mean_nll
    ref_rise = measure.test_nll(ctx, ref, "final", trusted=True).mean_nll - ref_sft
    gain = SFT.nll(ctx, None, "test").mean_nll - ref_sft
    limit = RETENTION_FACTOR * max(ref_rise, 0.0) + RETENTION_SHARE * max(gain, 0.0)
    values_s, weights = sft.bootstrap_inputs()
    values_f, _ = final.bootstrap_inputs()
    rise, lo, hi = paired_bootstrap_delta(values_s, values_f, weights)
    data = {"sft_nll": round(sft.mean_nll, 4), "final_nll": round(final.mean_nll, 4),
            "rise": [round(rise, 4), round(lo, 4), round(hi, 4)], "reference_rise": round(ref_rise, 4),
            "limit": round(limit, 4), "reference_sft_gain": round(gain, 4)}
    message = (f"held-out SFT NLL {sft.mean_nll:.3f} SFT → {final.mean_nll:.3f} after DPO: {rise:+.3f} nats "
               f"[{lo:+.3f}, {hi:+.3f}]; at most +{limit:.3f} ({RETENTION_FACTOR:g}× the reference's "
               f"{ref_rise:+.3f} + {RETENTION_SHARE:g} of its SFT gain {gain:.3f})")
    if hi <= limit:
        return passed(message, **data)
    if lo > limit:
        return failed(message + ": DPO wrecked what SFT learned", **data)
    return graded((limit - lo) / (hi - lo), message + ": the 95% interval straddles the limit", **data)


@check("drift-bounded")
def drift_bounded(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Mean per-token KL of the final model from the SFT model on the hidden test chats, below a bound
    derived from the reference solution's."""
    out = _out(artifacts)
    kl, lo, hi = measure.drift(ctx, out)
    ref_kl = measure.drift(ctx, artifacts.reference(0), trusted=True)[0]
    bound = DRIFT_FACTOR * ref_kl + DRIFT_MARGIN
    data = {"kl": [round(kl, 4), round(lo, 4), round(hi, 4)], "reference_kl": round(ref_kl, 4), "bound": round(bound, 4)}
    message = (f"KL(final || SFT) {kl:.3f} [{lo:.3f}, {hi:.3f}] nats per token on held-out replies; bound "
               f"{bound:.3f} ({DRIFT_FACTOR:g}× the reference's {ref_kl:.3f} + {DRIFT_MARGIN:g})")
    if hi <= bound:
        return passed(message, **data)
    if lo > bound:
        return failed(message + ": the policy drifted far from the SFT model", **data)
    return graded((bound - lo) / (hi - lo), message + ": the 95% interval straddles the bound", **data)


def _final_eval(out: Path) -> dict[str, float]:
    state = read_json(out / "dpo" / "trainer_state.json")
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise CandidateFault("dpo/trainer_state.json has no log_history list")
    keys = ("eval_rewards/accuracies", "eval_rewards/margins")
    for entry in reversed(history):
        if isinstance(entry, dict) and all(isinstance(entry.get(k), int | float) and not isinstance(entry.get(k), bool)
                                           for k in keys):
            return {k: float(entry[k]) for k in keys}
    raise CandidateFault("dpo/trainer_state.json logs no evaluation with eval_rewards/accuracies and "
                         "eval_rewards/margins")


def _eval_batch(artifacts: Artifacts, ctx: CheckContext) -> int | None:
    """The per-device eval batch size of the last DPO trainer seen inside the run (TRL averages its
    logged metrics over batches of this size)."""
    tel = run_telemetry(artifacts, ctx)
    dpo = [(r.pid, r.trainer_id) for r in tel.train_runs if r.probe is not None]
    sizes = [t.args.get("per_device_eval_batch_size") for t in tel.trainers if (t.pid, t.trainer_id) in dpo[-1:]]
    return sizes[-1] if sizes and isinstance(sizes[-1], int) and sizes[-1] > 0 else None


def _batch_means(values: tuple[float, ...], size: int) -> float:
    chunks = [values[i : i + size] for i in range(0, len(values), size)]
    return statistics.fmean(statistics.fmean(c) for c in chunks)


@check("reported-matches")
def reported_matches(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The final evaluation's reward accuracy and margin in dpo/trainer_state.json match the grader's
    recomputation on the same pairs (pipeline.json's eval_pairs, in that order) within tolerances: as a
    mean over pairs, or as TRL logs it, a mean of per-batch means at the DPO trainer's eval batch size."""
    out = _out(artifacts)
    settings, logged = measure.settings(out), _final_eval(out)
    n = measure.pair_count(ctx)
    outside = [i for i in settings.eval_pairs if i >= n]
    if outside:
        return failed(f"pipeline.json eval_pairs names line {outside[0]}, past the {n} pairs of the file")
    stats = measure.preference(ctx, out, settings.beta, "train", settings.eval_pairs)
    batch = _eval_batch(artifacts, ctx)
    correct = tuple(1.0 if m > 0 else 0.0 for m in stats.margins)
    measured = {"accuracy": [stats.accuracy[0]], "margin": [stats.margin[0]]}
    if batch is not None:
        measured["accuracy"].append(_batch_means(correct, batch))
        measured["margin"].append(_batch_means(stats.margins, batch))
    data: dict[str, Any] = {"pairs": len(settings.eval_pairs), "eval_batch": batch}
    off = []
    for name, key, (absolute, share) in (("accuracy", "eval_rewards/accuracies", REPORTED_ACCURACY),
                                         ("margin", "eval_rewards/margins", REPORTED_MARGIN)):
        reported = logged[key]
        tolerance = absolute + share * abs(measured[name][0])
        closest = min(measured[name], key=lambda v: abs(v - reported))
        data[name] = {"reported": round(reported, 4), "measured": [round(v, 4) for v in measured[name]],
                      "tolerance": round(tolerance, 4)}
        if abs(reported - closest) > tolerance:
            off.append(f"{name} {reported:.3f} logged, {' or '.join(f'{v:.3f}' for v in measured[name])} measured "
                       f"(± {tolerance:.3f})")
    how = f"per pair{f' and per batch of {batch}' if batch else ''}"
    if off:
        return failed(f"the logged final evaluation does not match the grader's on the same {len(settings.eval_pairs)} "
                      f"pairs ({how}): " + "; ".join(off), **data)
    return passed(f"logged accuracy {logged['eval_rewards/accuracies']:.3f} and margin "
                  f"{logged['eval_rewards/margins']:.3f} match the grader's on the same {len(settings.eval_pairs)} "
                  f"pairs ({how})", **data)


# -- the distributed run ------------------------------------------------------------------------


def _rank_processes(tel: Telemetry) -> dict[int, int]:
    """pid -> rank of the processes torchrun started (those with a RANK in their environment)."""
    return {p.pid: p.rank for p in tel.processes if p.rank is not None}


@check("distributed")
def distributed(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The grader's torchrun launch (2 processes, gloo) completed with the single-process run's files and
    equivalent adapters, both ranks trained, and no file was written by more than one rank."""
    from grader.constants import SANDBOX_OUT

    single, dist = _out(artifacts), _out(artifacts, DISTRIBUTED)
    problems: list[str] = []
    data: dict[str, Any] = {}
    files = {p.relative_to(single).as_posix() for p in single.rglob("*") if p.is_file()}
    missing = sorted(f for f in files if not (dist / f).is_file())
    if missing:
        problems.append(f"{len(missing)} files of the single-process run are missing, e.g. {missing[0]}")
    world = measure.settings(dist).world_size
    data["world_size"] = world
    if world != 2:
        problems.append(f"pipeline.json says world_size {world}, but torchrun started 2 processes")
    run = artifacts.runs[DISTRIBUTED]
    tel = read_telemetry(run.telemetry_path) if run.telemetry_path else Telemetry(present=False)
    ranks = _rank_processes(tel)
    trained = sorted({ranks[r.pid] for r in tel.train_runs if r.pid in ranks and r.probe is not None and r.ended})
    data["ranks_trained_dpo"] = trained
    if trained != [0, 1]:
        problems.append(f"DPO training was recorded on rank(s) {trained or 'none'}, not on both ranks 0 and 1")
    shared_writes = sorted(
        (path, sorted({ranks[p] for p in pids if p in ranks}))
        for path, pids in tel.files_written.items()
        if path.startswith(f"{SANDBOX_OUT}/") and len({ranks[p] for p in pids if p in ranks}) > 1)
    data["written_by_several_ranks"] = [p for p, _ in shared_writes[:20]]
    if shared_writes:
        path, by = shared_writes[0]
        problems.append(f"{len(shared_writes)} output files were written by more than one rank, e.g. "
                        f"{path.removeprefix(SANDBOX_OUT + '/')} by ranks {by}")
    if problems:
        return failed("; ".join(problems), **data)
    span = (SFT.nll(ctx, None, "test").mean_nll
            - measure.test_nll(ctx, artifacts.reference(0), "sft", trusted=True).mean_nll)
    tolerance = EQUIVALENT_NLL[0] + EQUIVALENT_NLL[1] * max(span, 0.0)
    beta = measure.settings(single).beta
    for which in ("sft", "final"):
        a, b = measure.test_nll(ctx, single, which).mean_nll, measure.test_nll(ctx, dist, which).mean_nll
        data[f"{which}_nll"] = {"single": round(a, 4), "distributed": round(b, 4)}
        if abs(a - b) > tolerance:
            problems.append(f"the {which} model's held-out NLL is {b:.3f} distributed and {a:.3f} single-process "
                            f"(± {tolerance:.3f})")
    acc_single = measure.preference(ctx, single, beta).accuracy[0]
    acc_dist = measure.preference(ctx, dist, measure.settings(dist).beta).accuracy[0]
    data["accuracy"] = {"single": round(acc_single, 4), "distributed": round(acc_dist, 4)}
    if abs(acc_single - acc_dist) > EQUIVALENT_ACCURACY:
        problems.append(f"held-out preference accuracy is {acc_dist:.3f} distributed and {acc_single:.3f} "
                        f"single-process (± {EQUIVALENT_ACCURACY:g})")
    wall = {name: r.result.duration_s for name, r in artifacts.runs.items() if r.result is not None}
    data["wall_s"] = {k: round(v, 1) for k, v in wall.items()}
    if problems:
        return failed("; ".join(problems), **data)
    return passed(f"torchrun with 2 ranks (gloo) trained on both ranks, wrote each file once, and matches the "
                  f"single-process run (held-out NLL SFT {data['sft_nll']['distributed']:.3f} vs "
                  f"{data['sft_nll']['single']:.3f}, final {data['final_nll']['distributed']:.3f} vs "
                  f"{data['final_nll']['single']:.3f}; accuracy {acc_dist:.3f} vs {acc_single:.3f})", **data)
