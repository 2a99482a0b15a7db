"""The grader's own DPO quantities, computed independently of TRL: a pair's completion log-probabilities,
the implicit rewards and their accuracy and margin, and the per-token KL between two models.

Definitions (candidates are told them; the grader measures nothing else)
    A pair is ``{"prompt": [messages], "chosen": [one assistant message], "rejected": [one assistant
    message]}`` (TRL's conversational form). The prompt text is the chat template of the prompt with the
    generation prompt added; a completion's text is the template of prompt + completion minus that
    prefix. Both are tokenized without special tokens, and ``logp(completion | prompt)`` is the sum of
    the completion tokens' log-probabilities after the prompt tokens.

    With a policy and a reference model and ``beta``, a completion's implicit reward is
    ``beta * (logp_policy - logp_reference)``; a pair's margin is the chosen reward minus the rejected
    one, and it counts as correct when the margin is positive. Accuracy and margin are means over
    pairs, each with a percentile bootstrap interval over pairs.

    The drift of a policy from a reference is the mean over counted tokens (see
    :mod:`grader.evaluation.nll`) of ``KL(policy(. | prefix) || reference(. | prefix))``, teacher-forced
    on the given text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grader.evaluation.bootstrap import bootstrap_ci
from grader.evaluation.chat import RecordError, template_error, validate_messages
from grader.evaluation.nll import DEFAULT_BATCH_TOKENS, EncodedExample, length_batches, padded_batch, response_nll


@dataclass(frozen=True)
class EncodedPair:
    """One preference pair as token ids: the prompt, and each completion after it."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    def example(self, completion: list[int]) -> EncodedExample:
        ids = self.prompt + completion
        return EncodedExample(input_ids=ids, counted=[False] * len(self.prompt) + [True] * len(completion))


@dataclass(frozen=True)
class PairLogps:
    """``logp(completion | prompt)`` of each pair's chosen and rejected completion, in the input order."""

    chosen: tuple[float, ...]
    rejected: tuple[float, ...]


@dataclass(frozen=True)
class PreferenceStats:
    """Implicit-reward accuracy and mean margin over pairs, each ``(estimate, lo, hi)``."""

    accuracy: tuple[float, float, float]
    margin: tuple[float, float, float]
    margins: tuple[float, ...]
    n_pairs: int


def _completion(messages: Any, where: str) -> list[dict[str, str]]:
    parsed = validate_messages(messages, where, need_assistant=True)
    if len(parsed) != 1:
        raise RecordError(f"{where}: expected exactly one assistant message, got {len(parsed)} messages")
    return parsed


def encode_pairs(tokenizer: Any, pairs: Sequence[Any]) -> list[EncodedPair]:
    """Tokenize pairs per the module's definition; a malformed pair raises :class:`RecordError`
    naming it (``pairs[i].chosen``)."""
    from jinja2 import TemplateError

    encoded = []
    for i, pair in enumerate(pairs):
        where = f"pairs[{i}]"
        if not isinstance(pair, dict) or not all(k in pair for k in ("prompt", "chosen", "rejected")):
            raise RecordError(f"{where}: expected an object with 'prompt', 'chosen' and 'rejected'")
        prompt = validate_messages(pair["prompt"], f"{where}.prompt", need_assistant=False)
        if prompt[-1]["role"] == "assistant":
            raise RecordError(f"{where}.prompt: ends with an assistant message")
        try:
            prefix = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            texts = [tokenizer.apply_chat_template(prompt + _completion(pair[k], f"{where}.{k}"), tokenize=False)
                     for k in ("chosen", "rejected")]
        except TemplateError as exc:
            raise template_error(exc, where) from None
        if not all(t.startswith(prefix) for t in texts):
            raise RecordError(f"{where}: the chat template renders the completion without the prompt as its prefix")
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (prefix, *(t[len(prefix):] for t in texts))]
        if not ids[1] or not ids[2]:
            raise RecordError(f"{where}: an empty completion")
        encoded.append(EncodedPair(prompt=list(ids[0]), chosen=list(ids[1]), rejected=list(ids[2])))
    return encoded


def pair_logps(model: Any, pairs: Sequence[EncodedPair], batch_tokens: int = DEFAULT_BATCH_TOKENS) -> PairLogps:
    """``logp(completion | prompt)`` of every chosen and rejected completion under ``model``."""
    if not pairs:
        raise ValueError("no pairs to score")
    examples = [p.example(p.chosen) for p in pairs] + [p.example(p.rejected) for p in pairs]
    sums = [-e.nll_sum for e in response_nll(model, examples, batch_tokens).examples]
    return PairLogps(chosen=tuple(sums[: len(pairs)]), rejected=tuple(sums[len(pairs) :]))


def preference_stats(policy: PairLogps, reference: PairLogps, beta: float, seed: int = 0) -> PreferenceStats:
    """Implicit-reward accuracy and mean margin of ``policy`` against ``reference`` at ``beta``."""
    if beta <= 0:
        raise ValueError("beta must be positive")
    if len(policy.chosen) != len(reference.chosen):
        raise ValueError("policy and reference must score the same pairs")
    margins = [beta * ((pc - rc) - (pr - rr))
               for pc, pr, rc, rr in zip(policy.chosen, policy.rejected, reference.chosen, reference.rejected)]
    correct = [1.0 if m > 0 else 0.0 for m in margins]
    return PreferenceStats(accuracy=bootstrap_ci(correct, seed=seed), margin=bootstrap_ci(margins, seed=seed),
                           margins=tuple(margins), n_pairs=len(margins))


def mean_token_kl(policy: Any, reference: Any, encoded: Sequence[EncodedExample],
                  batch_tokens: int = DEFAULT_BATCH_TOKENS) -> tuple[float, list[tuple[float, int]]]:
    """``(mean KL per counted token, per-example (summed KL, counted tokens))`` of ``policy`` from
    ``reference``, in float32; the per-example pairs feed :func:`bootstrap_ci` as values and weights."""
    import torch
    import torch.nn.functional as F

    if not encoded:
        raise ValueError("no examples to score")
    device = next(policy.parameters()).device
    per_example: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    with torch.inference_mode():
        for batch in length_batches([len(e.input_ids) for e in encoded], batch_tokens):
            ids, attention, targets = padded_batch([encoded[i] for i in batch], device)
            logp = [F.log_softmax(m(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1][targets]
                                  .float(), dim=-1) for m in (policy, reference)]
            kl = (logp[0].exp() * (logp[0] - logp[1])).sum(-1).double()
            per_row = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, targets.nonzero()[:, 0], kl)
            for i, total in zip(batch, per_row.tolist()):
                per_example[i] = (total, encoded[i].n_counted)
    tokens = sum(n for _, n in per_example)
    return sum(s for s, _ in per_example) / tokens, per_example
