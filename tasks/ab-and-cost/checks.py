"""Checks of the ab-and-cost task. Part A (the A/B decision) lives in ab_checks.py and is bound here;
Part B (cost and speed, model versioning) is below. The grader measures the adapter's quality and the
run's compute itself; the run's registry.json and cost.json are compared with those measurements,
never adopted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from grader.checks import (Artifacts, CheckContext, InfraFault, Outcome, check, failed, graded, passed, read_json,
                           sibling_module)
from grader.checks import adapter_checks as shared
from grader.checks.adapters import AdapterMeasures, manifest_entry, records
from sandbox import ExecResult

ab = sibling_module(__file__, "ab_checks")
formats = sibling_module(__file__, "formats")

TRAIN_RUN = "train"
ADAPTER = "adapter"
COST_FULL, COST_ZERO = 1.5, 3.0
"""CPU-seconds of the training run over the reference's, measured on the same host: full marks up to
COST_FULL (CPU time moves by up to about 25% between honest repeats on a busy 2-core host), falling
linearly to 0 at COST_ZERO."""
ESTIMATE_FACTOR = 3.0
"""The scaled cost estimate passes within this factor of the grader's, either way: scaling laws for
compute are rough, but a missed ratio (parameters or examples) is off by far more."""
RUN_CPU_FACTOR = 2.0
"""cost.json's own CPU-seconds may differ from the sandbox's by this factor (a run that measures itself
misses its interpreter's start-up and anything after the measurement)."""
METRIC_TOLERANCE = (0.002, 0.001)
"""As in lora-sft: absolute, plus this fraction of the grader's value."""
MAX_ADAPTERS = 16
"""The grader re-measures every registered adapter's val_nll (about a second each on tiny); a registry of
more adapters than this fails rather than running the check past its time limit."""


class _Measures(AdapterMeasures):
    """The task's adapter is the ``train`` run's (its main run is not named ``main``)."""

    def adapter_dir(self, artifacts: Artifacts) -> Path:
        return self.layout(artifacts.require(TRAIN_RUN))


m = _Measures("ab-and-cost", lambda out: out / ADAPTER)

# -- Part A ------------------------------------------------------------------------------------

ab_decision = ab.ab_decision
ab_effect = ab.ab_effect
ab_power = ab.ab_power


# -- Part B: the adapter -----------------------------------------------------------------------


@check("adapter-valid")
def adapter_valid(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.adapter_valid(m, artifacts, ctx)


@check("learned-cohort-data")
def learned_cohort_data(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """An adapter trained beforehand and shipped costs nothing to 'train': it must have learned this run's files."""
    return shared.learned_cohort_data(m, artifacts, ctx)


@check("safe-artifacts")
def safe_artifacts(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    return shared.safe_artifacts(m, artifacts, ctx)


# -- Part B: cost ------------------------------------------------------------------------------


def _brief(ctx: CheckContext) -> dict[str, Any]:
    return manifest_entry(ctx, "brief")


def _train_result(artifacts: Artifacts) -> tuple[ExecResult, float]:
    """The sandbox's measures of the training run, CPU-seconds included (every process; the run's own
    figure is never used)."""
    artifacts.require(TRAIN_RUN)
    result = artifacts.runs[TRAIN_RUN].result
    if result is None or result.cpu_s is None:
        raise InfraFault("the sandbox measured no CPU time for the training run")
    return result, result.cpu_s


@check("cost-quality")
def cost_quality(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The grader's held-out NLL reaches the brief's target, and the training run's CPU-seconds (sandbox) are at
    most COST_FULL times the reference solution's on the same host, falling to 0 at COST_ZERO."""
    target = float(_brief(ctx)["target_nll"])
    nll = m.nll(ctx, m.adapter_dir(artifacts), "test").mean_nll
    run, cpu_s = _train_result(artifacts)
    artifacts.reference()
    ref = artifacts.references[0].result
    if ref is None or not ref.cpu_s:
        raise InfraFault("the sandbox measured no CPU time for the reference run")
    ratio = cpu_s / ref.cpu_s
    data = {"heldout_nll": round(nll, 4), "target_nll": target, "cpu_s": round(cpu_s, 1),
            "reference_cpu_s": round(ref.cpu_s, 1), "ratio": round(ratio, 2),
            # evidence only: GPU-seconds are wall time on the GPU, which the host's load moves
            "gpu_s": run.gpu_s, "reference_gpu_s": ref.gpu_s, "peak_mb": run.max_rss_mb,
            "gpu_peak_mb": run.gpu_memory_mb}
    quality = f"held-out NLL {nll:.3f} (target {target:g})"
    cost = f"{cpu_s:.0f} CPU-s, {ratio:.1f}× the reference solution's {ref.cpu_s:.0f} on this host"
    if nll > target:
        return failed(f"{quality}: the quality was not reached; {cost}", **data)
    score = (COST_ZERO - ratio) / (COST_ZERO - COST_FULL)
    note = "" if score >= 1 else f" (full marks up to {COST_FULL:g}×, none from {COST_ZERO:g}×)"
    return graded(score, f"{quality} reached with {cost}{note}", **data)


def _grader_estimate(artifacts: Artifacts, ctx: CheckContext) -> tuple[float, dict[str, Any]]:
    """CPU-hours of the same recipe at the brief's scale: the measured CPU-seconds times the ratio of
    parameters and the ratio of training examples (compute ∝ parameters × tokens seen, same epochs)."""
    from grader.basemodels import describe

    scale = _brief(ctx)["scale_to"]
    params = ctx.memo("base-model", lambda: describe(ctx.inputs["model"], name="base")).parameters
    examples = len(records(ctx, "train"))
    _, cpu_s = _train_result(artifacts)
    hours = cpu_s * (scale["params"] / params) * (scale["train_examples"] / examples) / 3600
    return hours, {"measured_cpu_s": round(cpu_s, 1), "base_params": params, "train_examples": examples,
                   "scale_to": scale, "grader_cpu_hours": round(hours, 2)}


@check("cost-reported")
def cost_reported(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """cost.json's estimate for the brief's larger model and dataset is within ESTIMATE_FACTOR of the grader's
    estimate from the measured run; its own CPU-seconds within RUN_CPU_FACTOR of the sandbox's."""
    raw = read_json(artifacts.require(TRAIN_RUN) / formats.COST_FILE)
    try:
        report = formats.CostReport.model_validate(raw)
    except ValidationError as exc:
        return failed(f"{formats.COST_FILE}: {_first_error(exc)}")
    hours, data = _grader_estimate(artifacts, ctx)
    ratio = report.scaled.cpu_hours / hours
    own = report.run.cpu_s / data["measured_cpu_s"] if data["measured_cpu_s"] else 1.0
    data |= {"reported_cpu_hours": report.scaled.cpu_hours, "ratio": round(ratio, 3),
             "reported_cpu_s": report.run.cpu_s, "method": report.scaled.method[:300]}
    message = (f"estimated {report.scaled.cpu_hours:.3g} CPU-hours at the brief's scale; the grader's estimate from "
               f"the measured {data['measured_cpu_s']:.0f} CPU-s is {hours:.3g} ({ratio:.2g}× it)")
    if not 1 / ESTIMATE_FACTOR <= ratio <= ESTIMATE_FACTOR:
        return failed(f"{message}: more than {ESTIMATE_FACTOR:g}× off", **data)
    if not 1 / RUN_CPU_FACTOR <= own <= RUN_CPU_FACTOR:
        return graded(0.5, f"{message}; but the run's own {report.run.cpu_s:.0f} CPU-s is {own:.2g}× the sandbox's "
                      f"measure", **data)
    return passed(f"{message}; the run's own measure {report.run.cpu_s:.0f} CPU-s", **data)


# -- Part B: model versioning ------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


def _adapter_problems(version: Any, out: Path, train_sha: str, ctx: CheckContext) -> list[str]:
    """What does not match between one registered adapter version and the files the run produced."""
    try:
        folder = (out / version.path).resolve()
    except (OSError, ValueError):
        return [f"{version.id}: path {version.path!r} is not a usable path"]
    if not folder.is_relative_to(out.resolve()):
        return [f"{version.id}: path {version.path!r} is outside the run's output folder"]
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return [f"{version.id}: {version.path}/adapter_model.safetensors does not exist"]
    problems = []
    if version.artifact_sha256 != _sha256(weights):
        problems.append(f"{version.id}: artifact_sha256 is not the sha256 of {version.path}/adapter_model.safetensors")
    if version.data_sha256 != train_sha:
        problems.append(f"{version.id}: data_sha256 is not the sha256 of the training file this run received")
    measured = m.nll(ctx, folder, "val").mean_nll
    tolerance = METRIC_TOLERANCE[0] + METRIC_TOLERANCE[1] * measured
    if abs(version.metrics.val_nll - measured) > tolerance:
        problems.append(f"{version.id}: metrics.val_nll {version.metrics.val_nll:.4f} but the grader measures "
                        f"{measured:.4f} (± {tolerance:.4f})")
    return problems


def _lineage_problems(version: Any, by_id: dict[str, Any], base_sha: str) -> list[str]:
    """The parent chain of ``version`` ends at a base that is the grade's base model."""
    seen, current = {version.id}, version
    while current.parent is not None:
        if current.parent not in by_id:
            return [f"{current.id}: parent {current.parent!r} is not a registered version"]
        current = by_id[current.parent]
        if current.id in seen:
            return [f"{version.id}: its parent chain loops"]
        seen.add(current.id)
    if current.kind != "base":
        return [f"{version.id}: its parent chain ends at {current.id!r}, which is not a base"]
    if current.model_sha256 != base_sha:
        return [f"{version.id}: its base {current.id!r} is not the base model this run received (model_sha256)"]
    return []


@check("version-lineage")
def version_lineage(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """registry.json records every adapter the run wrote (by folder), with the sha256 of its weights and of the
    training file, a val_nll the grader reproduces, and a parent chain ending at the grade's base model."""
    from grader.basemodels import describe

    out = artifacts.require(TRAIN_RUN)
    try:
        registry = formats.Registry.model_validate(read_json(out / formats.REGISTRY_FILE))
    except ValidationError as exc:
        return failed(f"{formats.REGISTRY_FILE}: {_first_error(exc)}")
    by_id = {v.id: v for v in registry.versions}
    adapters = [v for v in registry.versions if v.kind == "adapter"]
    if len(adapters) > MAX_ADAPTERS:
        return failed(f"{len(adapters)} adapter versions registered; the grader re-measures at most {MAX_ADAPTERS}")
    written = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("adapter_config.json"))
    registered = {Path(v.path).as_posix() for v in adapters}
    problems = [f"{folder}/ holds an adapter that is not a registered version" for folder in written
                if folder not in registered]
    if ADAPTER not in registered:
        problems.append(f"the final adapter ({ADAPTER}/) is not a registered version")
    base_sha = ctx.memo("base-model", lambda: describe(ctx.inputs["model"], name="base")).sha256
    train_sha = ctx.memo("train-sha256", lambda: _sha256(ctx.inputs["data"] / "train.jsonl"))
    for version in adapters:
        problems += _adapter_problems(version, out, train_sha, ctx)
        problems += _lineage_problems(version, by_id, base_sha)
    data = {"versions": len(registry.versions), "adapters_written": written, "problems": problems[:20]}
    if problems:
        return failed(f"registry.json does not match the run's artifacts: {'; '.join(problems[:5])}"
                      f"{' ...' if len(problems) > 5 else ''}", **data)
    return passed(f"{len(registry.versions)} versions ({len(adapters)} adapters) match the artifacts: weights and "
                  "training-data hashes, val_nll, and a lineage back to this base model", **data)
