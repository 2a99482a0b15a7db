"""The grader's own measurements of LoRA adapters trained on a task's chat data, for tasks whose runs
write an adapter (lora-sft, qlora-tune). Each is computed once per grade (``ctx.memo``); those that do
not depend on the candidate (the base model, the reference adapters) are kept across the grades of a
cohort (:mod:`grader.measurements`).

Data sets: ``train`` and ``val`` (the files the candidate's run received), ``test`` (the hidden
held-out set, never mounted), ``signature`` (the test set, counting only the tokens of the cohort's
sign-off signature, which only training on this cohort's files teaches) and ``general`` (hidden
plain-text documents of the kind the base model was pretrained on, scored as plain text with
:func:`grader.evaluation.encode_text`: what fine-tuning made the model forget).

Adapters are measured merged into the base model in float32, the exact and fast path. An adapter
trained on a 4-bit base (QLoRA) is measured that way too: every model on a normalised scale (the
base, the reference, the candidate) is measured alike, so the quantisation's own small offset
cancels; :meth:`AdapterMeasures.nll_4bit` measures on the 4-bit base where a check must reproduce
the number a QLoRA run reported.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from grader.checks.base import Artifacts, CheckContext, InfraFault
from grader.checks.library import run_telemetry
from grader.intake import tree_sha256
from grader.measurements import device_key, stored
from grader.telemetry import trained_fingerprints
from grader.telemetry.site import tunegrade_fingerprint as fingerprint

SPLITS = {"train": "train.jsonl", "val": "val.jsonl"}
HIDDEN = {"test": "heldout", "signature": "heldout", "general": "general"}
"""Grader-only data sets: the manifest entry naming each one's file in ``ctx.data_dir``."""
GENERAL_MAX_TOKENS = 256
"""A memory guard on each general document (the generator's stay below 200 tokens with tiny's tokenizer)."""
EXAMPLES = TypeAdapter(list[tuple[float, int]])
"""How a stored NLL is kept: each record's (summed NLL, counted tokens), in the input order."""
DTYPE = "float32"
"""The dtype the grader measures merged adapters in; part of a stored measurement's key, with the merge."""
OWN_SHARE = 0.5
"""An example counts as trained on when at least this share of its own n-grams (those no other example
and no training record has) were among the sequences the run trained on."""
MIN_OWN = 2
"""Examples with fewer own n-grams cannot be told apart from the training data and are not judged."""


@dataclass
class TrainedOn:
    """Which validation and test examples the run trained on, from the fingerprints recorded inside it."""

    trained_rows: int
    judged: dict[str, int] = field(default_factory=dict)
    """Examples per split with enough n-grams of their own to be judged."""
    found: dict[str, list[int]] = field(default_factory=dict)
    """Line numbers (1-based) of the examples trained on, per split."""


def manifest_entry(ctx: CheckContext, key: str) -> Any:
    if not ctx.manifest or key not in ctx.manifest:
        raise InfraFault(f"the task's manifest has no {key!r}")
    return ctx.manifest[key]


def records(ctx: CheckContext, name: str) -> list[Any]:
    """The grader's own copy of a data set (trusted: written by the task's generator)."""

    def read() -> list[Any]:
        if name in SPLITS:
            path = ctx.inputs["data"] / SPLITS[name]
        elif ctx.data_dir is not None:
            path = ctx.data_dir / manifest_entry(ctx, HIDDEN[name])
        else:
            raise InfraFault("the grader's held-out data is missing")
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    return ctx.memo(f"records:{'test' if name == 'signature' else name}", read)


def tokenizer(ctx: CheckContext) -> Any:
    """The base model's tokenizer, loaded once per grade."""
    from grader.evaluation import load_model

    return ctx.memo("tokenizer", lambda: load_model(ctx.inputs["model"], device="cpu"))[1]


def encoded(ctx: CheckContext, name: str) -> Any:
    def encode() -> Any:
        from grader.evaluation import encode_chat, encode_phrase, encode_text

        tok = tokenizer(ctx)
        if name == "signature":
            return encode_phrase(tok, records(ctx, "test"), manifest_entry(ctx, "signature")["text"])
        if name == "general":
            texts = [r.get("text") if isinstance(r, dict) else r for r in records(ctx, name)]
            return encode_text(tok, texts, max_tokens=GENERAL_MAX_TOKENS)
        return encode_chat(tok, records(ctx, name))

    return ctx.memo(f"encoded:{name}", encode)


def encoded_digest(ctx: CheckContext, name: str) -> str:
    def digest() -> str:
        rows = [[e.input_ids, e.counted] for e in encoded(ctx, name)]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    return ctx.memo(f"encoded-digest:{name}", digest)


def ci(result: Any) -> tuple[float, float, float]:
    from grader.evaluation import bootstrap_ci

    values, weights = result.bootstrap_inputs()
    return bootstrap_ci(values, weights)


class AdapterMeasures:
    """Measurements of the adapters of one task, whose runs write their adapter at ``layout(out_dir)``."""

    def __init__(self, task: str, layout: Callable[[Path], Path]) -> None:
        self.task = task
        self.layout = layout

    def adapter_dir(self, artifacts: Artifacts) -> Path:
        return self.layout(artifacts.require("main"))

    def reference_adapter(self, artifacts: Artifacts, index: int = 0) -> Path:
        return self.layout(artifacts.reference(index))

    def public_adapter(self, artifacts: Artifacts) -> Path:
        return self.layout(artifacts.public_reference_out())

    def nll(self, ctx: CheckContext, adapter: Path | None, name: str, *, trusted: bool = False) -> Any:
        """Response-only NLL of base (adapter None) or base + adapter, merged in float32; adapters are
        validated first. ``trusted``: the adapter is the grader's own (a reference run's), so, like the
        base model's, its measurement is kept across the grades of a cohort."""

        def compute() -> Any:
            from grader.evaluation import load_adapter, load_model, response_nll

            model, _ = load_model(ctx.inputs["model"], device=ctx.device, dtype=DTYPE)
            if adapter is not None:
                model = load_adapter(model, adapter, merge=True)
            return response_nll(model, encoded(ctx, name))

        def stored_compute() -> Any:
            from grader.evaluation import NLLResult

            parts = [f"{self.task}/nll", ctx.memo("model-digest", lambda: tree_sha256(ctx.inputs["model"])),
                     tree_sha256(adapter) if adapter is not None else None, encoded_digest(ctx, name),
                     device_key(ctx.device), DTYPE, "merged"]
            examples = stored(parts, lambda: [tuple(e) for e in compute().examples], EXAMPLES, code=[__file__])
            return NLLResult.from_examples(examples)

        return ctx.memo(f"nll:{adapter}:{name}", stored_compute if trusted or adapter is None else compute)

    def nll_4bit(self, ctx: CheckContext, adapter: Path, name: str) -> Any:
        """Response-only NLL of the adapter on the base loaded in 4-bit NF4 with double quantisation
        (:func:`grader.evaluation.load_model_4bit`), unmerged: the model a QLoRA trial trained and measured."""

        def compute() -> Any:
            from grader.evaluation import load_adapter, load_model_4bit, response_nll

            model, _ = load_model_4bit(ctx.inputs["model"], device=ctx.device)
            return response_nll(load_adapter(model, adapter, merge=False), encoded(ctx, name))

        return ctx.memo(f"nll-4bit:{adapter}:{name}", compute)

    def trained_on(self, artifacts: Artifacts, ctx: CheckContext) -> TrainedOn | None:
        """Which val/test examples the run trained on; None when the run recorded no trained sequences
        (no telemetry, or its hooks were bypassed)."""

        def compute() -> TrainedOn | None:
            run = artifacts.runs["main"]
            seen = (trained_fingerprints(run.telemetry_path, fingerprint.N, fingerprint.SAMPLE)
                    if run.telemetry_path else None)
            rows = run_telemetry(artifacts, ctx).trained_rows
            if not seen or not rows:
                return None
            grams = {name: [fingerprint.fingerprints(e.input_ids) for e in encoded(ctx, name)]
                     for name in ("train", "val", "test")}
            in_train = set().union(*grams["train"])
            shared = Counter(h for name in ("val", "test") for g in grams[name] for h in g)
            result = TrainedOn(trained_rows=rows)
            for name in ("val", "test"):
                result.judged[name], result.found[name] = 0, []
                for line, g in enumerate(grams[name], start=1):
                    own = {h for h in g if h not in in_train and shared[h] == 1}
                    if len(own) < MIN_OWN:
                        continue
                    result.judged[name] += 1
                    if len(own & seen) >= OWN_SHARE * len(own):
                        result.found[name].append(line)
            return result

        return ctx.memo("trained-on", compute)
