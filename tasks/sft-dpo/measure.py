"""The grader's own measurements of an SFT→DPO run, for the sft-dpo checks.

A run's output folder holds ``sft/adapter`` (LoRA on the base) and ``dpo/adapter`` (LoRA on the base with
the SFT adapter merged). The grader builds the SFT model (base + SFT, merged in float32) and the final
model (SFT model + DPO, merged) itself and measures them on hidden data: the SFT test chats (NLL, and the
final model's per-token KL from the SFT model) and the held-out preference pairs (implicit-reward
accuracy and margin with the SFT model as the reference, see :mod:`grader.evaluation.preference`). Each
measurement is made once per grade (``ctx.memo``); those of the reference's runs (``trusted``) are kept
across the grades of a cohort (:mod:`grader.measurements`), keyed by both adapters' contents.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from grader.checks import CandidateFault, CheckContext, InfraFault, read_json
from grader.checks.adapters import DTYPE, EXAMPLES, AdapterMeasures, encoded, encoded_digest, manifest_entry, tokenizer
from grader.intake import tree_sha256
from grader.measurements import device_key, stored

SFT = AdapterMeasures("sft-dpo/sft", lambda out: out / "sft" / "adapter")
PAIRS_FILE = "pref.jsonl"
MIN_EVAL_PAIRS = 16
LOGPS = TypeAdapter(tuple[list[float], list[float]])
INTERVAL = TypeAdapter(tuple[float, float, float])
PROBE = TypeAdapter(list[float])


def sft_adapter(out: Path) -> Path:
    return out / "sft" / "adapter"


def dpo_adapter(out: Path) -> Path:
    return out / "dpo" / "adapter"


class Settings(BaseModel):
    """pipeline.json: the settings the run used (other keys are the candidate's own and are kept)."""

    model_config = ConfigDict(extra="allow")

    beta: float = Field(gt=0, description="DPO's beta: the scale of the implicit reward.")
    world_size: int = Field(ge=1, description="Processes that trained (1 for a plain run).")
    eval_pairs: list[int] = Field(min_length=MIN_EVAL_PAIRS, description="0-based lines of the pairs file that the "
                                  "final evaluation logged in dpo/trainer_state.json covered.")

    @field_validator("beta")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    @field_validator("eval_pairs")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or min(v) < 0:
            raise ValueError("must be distinct non-negative line numbers")
        return v


def settings(out: Path) -> Settings:
    raw = read_json(out / "pipeline.json")
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "pipeline.json"
        raise CandidateFault(f"pipeline.json: {where}: {first['msg']}") from None


def _records(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def pair_count(ctx: CheckContext) -> int:
    """Pairs in the file the run received."""
    return ctx.memo("pair-count", lambda: len(_records(ctx.inputs["data"] / PAIRS_FILE)))


def pairs(ctx: CheckContext, name: str, rows: tuple[int, ...] | None = None) -> Any:
    """Encoded pairs: ``heldout`` (grader-only; prompts the candidate never saw) or ``train`` (the file
    the run received), only lines ``rows`` if given."""

    def encode() -> Any:
        from grader.evaluation import encode_pairs

        if name == "heldout":
            if ctx.data_dir is None:
                raise InfraFault("the grader's held-out pairs are missing")
            path = ctx.data_dir / manifest_entry(ctx, "pref_heldout")
        else:
            path = ctx.inputs["data"] / PAIRS_FILE
        records = _records(path)
        return encode_pairs(tokenizer(ctx), records if rows is None else [records[i] for i in rows])

    return ctx.memo(f"pairs:{name}:{rows}", encode)


def _kept(ctx: CheckContext, out: Path, trusted: bool, parts: list[Any], compute: Callable[[], Any],
          codec: TypeAdapter[Any]) -> Any:
    """``compute()``; for a reference run (``trusted``), kept across the grades of a cohort."""
    if not trusted:
        return compute()
    adapters = ctx.memo(f"adapter-digests:{out}", lambda: [tree_sha256(sft_adapter(out)),
                                                             tree_sha256(dpo_adapter(out))])
    key = ["sft-dpo", *parts, _model_digest(ctx), *adapters, device_key(ctx.device), DTYPE, "merged"]
    return stored(key, compute, codec, code=[__file__])


def _model_digest(ctx: CheckContext) -> str:
    return ctx.memo("model-digest", lambda: tree_sha256(ctx.inputs["model"]))


def models(ctx: CheckContext, out: Path) -> tuple[Any, Any]:
    """(SFT model, final model) of one run, built by the grader from its two adapters."""

    def build() -> tuple[Any, Any]:
        from grader.evaluation import load_adapter, load_model

        def fresh() -> Any:
            return load_model(ctx.inputs["model"], device=ctx.device, dtype=DTYPE)[0]

        sft = load_adapter(fresh(), sft_adapter(out))
        final = load_adapter(load_adapter(fresh(), sft_adapter(out)), dpo_adapter(out))
        return sft, final

    return ctx.memo(f"models:{out}", build)


def test_nll(ctx: CheckContext, out: Path, which: str, *, trusted: bool = False) -> Any:
    """Response-only NLL on the hidden SFT test chats of ``which`` ("sft" or "final")."""
    from grader.evaluation import NLLResult, response_nll

    def compute() -> list[tuple[float, int]]:
        sft, final = models(ctx, out)
        return [tuple(e) for e in response_nll(sft if which == "sft" else final, encoded(ctx, "test")).examples]

    def kept() -> Any:
        parts = ["test-nll", which, encoded_digest(ctx, "test")]
        return NLLResult.from_examples(_kept(ctx, out, trusted, parts, compute, EXAMPLES))

    return ctx.memo(f"test-nll:{out}:{which}", kept)


def logps(ctx: CheckContext, out: Path, which: str, name: str, rows: tuple[int, ...] | None = None, *,
          trusted: bool = False) -> Any:
    from grader.evaluation import PairLogps, pair_logps

    def compute() -> tuple[list[float], list[float]]:
        sft, final = models(ctx, out)
        lp = pair_logps(sft if which == "sft" else final, pairs(ctx, name, rows))
        return list(lp.chosen), list(lp.rejected)

    def kept() -> Any:
        digest = ctx.memo(f"pairs-digest:{name}:{rows}", lambda: _digest(pairs(ctx, name, rows)))
        chosen, rejected = _kept(ctx, out, trusted, ["logps", which, digest], compute, LOGPS)
        return PairLogps(chosen=tuple(chosen), rejected=tuple(rejected))

    return ctx.memo(f"logps:{out}:{which}:{name}:{rows}", kept)


def _digest(encoded_pairs: Any) -> str:
    rows = [[p.prompt, p.chosen, p.rejected] for p in encoded_pairs]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def preference(ctx: CheckContext, out: Path, beta: float, name: str = "heldout", rows: list[int] | None = None, *,
               trusted: bool = False) -> Any:
    """Implicit-reward accuracy and margin of the final model against the SFT model on pairs ``name``
    (only lines ``rows``, in that order, if given)."""
    from grader.evaluation import preference_stats

    subset = tuple(rows) if rows is not None else None
    return preference_stats(logps(ctx, out, "final", name, subset, trusted=trusted),
                            logps(ctx, out, "sft", name, subset, trusted=trusted), beta)


def drift(ctx: CheckContext, out: Path, *, trusted: bool = False) -> tuple[float, float, float]:
    """Mean per-token KL(final || SFT) on the hidden test chats' replies, with its bootstrap interval."""
    from grader.evaluation import bootstrap_ci, mean_token_kl

    def compute() -> tuple[float, float, float]:
        sft, final = models(ctx, out)
        _, per_example = mean_token_kl(final, sft, encoded(ctx, "test"))
        return bootstrap_ci([s / n if n else 0.0 for s, n in per_example], [n for _, n in per_example])

    return ctx.memo(f"drift:{out}", lambda: _kept(ctx, out, trusted, ["drift", encoded_digest(ctx, "test")], compute,
                                                   INTERVAL))


def probe_logprobs(ctx: CheckContext, ids: list[int], which: str, out: Path | None = None) -> list[float]:
    """The telemetry probe's per-token log-probabilities under the base model (kept across the grades of a
    cohort) or a run's SFT model."""
    from grader.telemetry.site import tunegrade_probe

    def on_base() -> list[float]:
        from grader.evaluation import load_model

        return tunegrade_probe.token_logprobs(load_model(ctx.inputs["model"], device=ctx.device, dtype=DTYPE)[0], ids)

    def compute() -> list[float]:
        if which != "base":
            return tunegrade_probe.token_logprobs(models(ctx, out)[0], ids)
        key = ["sft-dpo/probe", ids, _model_digest(ctx), device_key(ctx.device), DTYPE]
        return stored(key, on_base, PROBE, code=[__file__, tunegrade_probe.__file__])

    return ctx.memo(f"probe:{which}:{out}:{ids}", compute)
