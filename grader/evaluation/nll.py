"""Response-only negative log-likelihood of chat data: the number candidates must match exactly;
and the NLL of plain text, for how much of its pretraining a model kept.

Definition (candidates get this same text)
------------------------------------------
For a chat-format JSONL file (one record per line, ``{"messages": [{"role": ..., "content": ...},
...], ...}``):

1. Tokenize each record's full conversation with the tokenizer's chat template, without a
   generation prompt: ``tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
   return_assistant_tokens_mask=True)``. ``input_ids`` are the tokens; ``assistant_masks`` marks the
   assistant tokens (the template wraps each assistant turn's content *and its closing*
   ``<|im_end|>`` in ``{% generation %}``; the ``<|im_start|>assistant\\n`` header and the
   newline after ``<|im_end|>`` are not marked).
2. The loss at position ``t`` is ``-log p(token_t | tokens_<t)``, from the model's logits at ``t-1``.
   Only positions whose *target* token ``t`` is an assistant token count (the first token of a
   record has no context and never counts).
3. The file's NLL is the sum of ``-log p`` over every counted token of every record, divided by the
   total number of counted tokens: a micro-average per assistant token (long answers weigh more),
   in nats (natural log). Perplexity is ``exp(NLL)``.

There is no truncation in the definition. :func:`encode_chat` takes an optional ``max_tokens`` cap as
a memory guard for the grader; a task that sets one states it, and records are then cut to their
first ``max_tokens`` tokens (``EncodedExample.truncated`` says which were).

Plain text (the grader's own measure; :func:`encode_text`)
---------------------------------------------------------
For plain documents (strings), as a base model was pretrained on them, with no chat template:

1. Each document is tokenized on its own without special tokens (``tokenizer(text,
   add_special_tokens=False)``), and the tokenizer's eos token is appended: that is how the tiny
   base model's builder separates and ends documents in pretraining (tasks/_shared/build_tiny_model.py,
   ``_pack``), so the model learned to predict it.
2. Every token after the first counts, the eos included; the first token has no context.
3. As above: the summed ``-log p`` over every counted token of every document, divided by the total
   number of counted tokens, in nats. Documents are scored one by one (not packed together), so no
   document is read in the context of another.

``max_tokens`` cuts a document (and its eos) to its first ``max_tokens`` tokens, as for chats.

Implementation notes (why it is fast and still equal to the naive loop): examples are sorted by
length so each batch holds similar lengths and wastes little padding; batches are right-padded, so
every real token sees exactly the context it would see alone (padding only ever comes after it);
the vocabulary projection and a float32 log-softmax are computed at counted positions only (see
``_counted_logits``), and sums are accumulated in float64.
Results come back in the input order. ``tests/grader/evaluation`` checks equality with a
per-example loop to 1e-4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from grader.errors import GraderFault
from grader.evaluation.chat import RecordError, record_messages, template_error

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

DEFAULT_BATCH_TOKENS = 8192
MIN_FILL = 0.9
"""A row joins a batch only if it is at least this fraction of the batch's longest row, so at most
10% of any row is padding: padded tokens cost the full transformer (and attention grows with the
square of the width) but count for nothing."""


@dataclass(frozen=True)
class EncodedExample:
    """One tokenized record: what the model reads and which targets count."""

    input_ids: list[int]
    counted: list[bool]
    """``counted[t]``: token ``t``'s log-probability is part of the NLL (an assistant token of a chat; any
    token but the first of a plain document)."""
    truncated: bool = False
    """The record was longer than ``max_tokens`` and was cut."""

    @property
    def n_counted(self) -> int:
        return sum(self.counted)


class ExampleNLL(NamedTuple):
    """One record's share of the total: its summed NLL (nats) over its counted tokens."""

    nll_sum: float
    n_tokens: int


@dataclass(frozen=True)
class NLLResult:
    """The file's micro-averaged NLL, and each record's contribution in the input order."""

    mean_nll: float
    """Total NLL / total counted tokens, in nats."""
    perplexity: float
    """``exp(mean_nll)``; ``inf`` when that overflows."""
    n_tokens: int
    """Counted (assistant) tokens over all records."""
    examples: tuple[ExampleNLL, ...]

    @classmethod
    def from_examples(cls, examples: Sequence[tuple[float, int]]) -> NLLResult:
        """The totals of per-record ``(nll_sum, n_tokens)``."""
        total_tokens = sum(n for _, n in examples)
        if total_tokens == 0:
            raise RecordError("no counted tokens: every assistant turn was truncated away")
        mean = math.fsum(s for s, _ in examples) / total_tokens
        return cls(
            mean_nll=mean,
            perplexity=math.exp(mean) if mean < 709 else math.inf,
            n_tokens=total_tokens,
            examples=tuple(ExampleNLL(s, n) for s, n in examples),
        )

    def bootstrap_inputs(self) -> tuple[list[float], list[int]]:
        """``(per-record mean NLL, per-record token count)``: as ``values, weights`` for
        :func:`grader.evaluation.bootstrap.bootstrap_ci` their weighted mean is exactly ``mean_nll``."""
        values = [e.nll_sum / e.n_tokens if e.n_tokens else 0.0 for e in self.examples]
        return values, [e.n_tokens for e in self.examples]


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[Any], max_tokens: int | None = None
) -> list[EncodedExample]:
    """Tokenize chat records per the module's definition.

    Raises :class:`RecordError` (naming ``records[i]...``) for a malformed record or one without an
    assistant turn, and :class:`GraderFault` when the tokenizer's template marks no assistant tokens
    at all (it lacks ``{% generation %}``): then the NLL would silently be over nothing.
    """
    from jinja2 import TemplateError

    if max_tokens is not None and max_tokens < 2:
        raise ValueError("max_tokens must be at least 2")
    encoded = []
    for i, record in enumerate(records):
        messages = record_messages(record, i, need_assistant=True)
        try:
            enc = tokenizer.apply_chat_template(
                messages,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                add_generation_prompt=False,
            )
        except TemplateError as exc:  # the template's raise_exception, e.g. a system turn not first
            raise template_error(exc, f"records[{i}]") from None
        ids = [int(t) for t in enc["input_ids"]]
        mask = [bool(m) for m in enc["assistant_masks"]]
        if not any(mask):
            raise GraderFault(
                "the tokenizer's chat template marks no assistant tokens; it needs {% generation %} "
                "around assistant content for return_assistant_tokens_mask"
            )
        mask[0] = False  # nothing predicts the first token
        truncated = max_tokens is not None and len(ids) > max_tokens
        if truncated:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        encoded.append(EncodedExample(input_ids=ids, counted=mask, truncated=truncated))
    return encoded


def encode_text(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[Any], max_tokens: int | None = None
) -> list[EncodedExample]:
    """Tokenize plain documents per the module's plain-text definition: no special tokens, the eos token
    appended, every token after the first counted.

    Raises :class:`RecordError` (naming ``texts[i]``) for a document that is not a non-empty string, and
    :class:`GraderFault` when the tokenizer has no eos token.
    """
    if max_tokens is not None and max_tokens < 2:
        raise ValueError("max_tokens must be at least 2")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise GraderFault("the tokenizer has no eos token to end each document with")
    encoded = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise RecordError(f"texts[{i}]: expected a non-empty string, got {type(text).__name__}")
        ids = [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]] + [int(eos)]
        truncated = max_tokens is not None and len(ids) > max_tokens
        if truncated:
            ids = ids[:max_tokens]
        encoded.append(EncodedExample(input_ids=ids, counted=[False] + [True] * (len(ids) - 1), truncated=truncated))
    return encoded


def encode_phrase(tokenizer: PreTrainedTokenizerBase, records: Sequence[Any], phrase: str) -> list[EncodedExample]:
    """Each record tokenized as :func:`encode_chat` does, counting only the tokens of the last occurrence of
    ``phrase`` in its last assistant turn: the NLL of that phrase, as a model continues the reply.

    The tokens are located through the tokenizer's character offsets over the rendered conversation;
    a token that straddles the phrase's start or end counts. Raises :class:`RecordError` for a record whose
    last assistant turn lacks the phrase, and :class:`GraderFault` if the tokenizer cannot give offsets
    that reproduce the template's tokens.
    """
    encoded = []
    for i, record in enumerate(records):
        messages = record_messages(record, i, need_assistant=True)
        reply = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
        if phrase not in reply:
            raise RecordError(f"records[{i}]: the last assistant turn does not contain {phrase!r}")
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        start = text.rfind(reply) + reply.rfind(phrase)
        end = start + len(phrase)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = [int(t) for t in enc["input_ids"]]
        if ids != encode_chat(tokenizer, [record])[0].input_ids:
            raise GraderFault("the tokenizer's offsets do not reproduce its chat template's tokens")
        counted = [a < end and b > start for a, b in enc["offset_mapping"]]
        counted[0] = False
        encoded.append(EncodedExample(input_ids=ids, counted=counted))
    return encoded


def length_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches, longest first, each padded size ``rows * longest <= batch_tokens``
    and no row shorter than ``MIN_FILL`` of the batch's longest.

    Longest first so that running out of memory happens on the first batch, not after minutes. An
    example longer than ``batch_tokens`` gets a batch of its own. Sorting is stable, so ties keep
    input order and the batching is deterministic.
    """
    if batch_tokens < 1:
        raise ValueError("batch_tokens must be positive")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            longest = lengths[batches[-1][0]]
            fits = (len(batches[-1]) + 1) * longest <= batch_tokens
            if fits and lengths[i] >= MIN_FILL * longest:
                batches[-1].append(i)
                continue
        batches.append([i])
    return batches


def response_nll(model: Any, encoded: Sequence[EncodedExample], batch_tokens: int = DEFAULT_BATCH_TOKENS) -> NLLResult:
    """The response-only NLL of ``encoded`` under ``model`` (any causal LM taking ``input_ids`` and
    ``attention_mask`` and returning ``.logits``; a merged model or a ``PeftModel``).

    ``batch_tokens`` bounds the padded tokens per forward pass; it changes speed and memory, never
    the result beyond float rounding.
    """
    import torch

    if not encoded:
        raise ValueError("no examples to score")
    device = next(model.parameters()).device
    sums = [0.0] * len(encoded)
    counts = [0] * len(encoded)
    shortcut: bool | None = None  # unknown until the first batch tries it
    with torch.inference_mode():
        for batch in length_batches([len(e.input_ids) for e in encoded], batch_tokens):
            batch_sums, shortcut = _batch_nll(model, [encoded[i] for i in batch], device, shortcut)
            for i, s in zip(batch, batch_sums):
                sums[i] = s
                counts[i] = encoded[i].n_counted
    return NLLResult.from_examples(list(zip(sums, counts)))


def padded_batch(examples: Sequence[EncodedExample], device: Any) -> tuple[Any, Any, Any]:
    """``(ids, attention, targets)`` of a right-padded batch on ``device``; ``targets[:, t-1]`` marks the
    counted positions ``t`` (the logits at ``t-1`` predict token ``t``)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.zeros((len(examples), width), dtype=torch.long)  # pad id is irrelevant: never attended, never counted
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    counted = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        attention[row, :n] = 1
        counted[row, :n] = torch.tensor(e.counted)
    return ids.to(device), attention.to(device), counted[:, 1:].to(device)


def _batch_nll(
    model: Any, examples: list[EncodedExample], device: Any, shortcut: bool | None
) -> tuple[list[float], bool]:
    """Summed NLL of each example of one right-padded batch, and whether the head shortcut held."""
    import torch
    import torch.nn.functional as F

    ids, attention, targets = padded_batch(examples, device)
    logits, shortcut = _counted_logits(model, ids, attention, targets, shortcut)
    token_nll = F.cross_entropy(logits.float(), ids[:, 1:][targets], reduction="none")
    per_row = torch.zeros(len(examples), dtype=torch.float64, device=device)
    per_row.index_add_(0, targets.nonzero()[:, 0], token_nll.double())
    return per_row.tolist(), shortcut


def _counted_logits(model: Any, ids: Any, attention: Any, targets: Any, shortcut: bool | None) -> tuple[Any, bool]:
    """Logits at every position whose next token counts, as ``(n_counted, vocab)``.

    Shortcut: run the model for its last hidden states only (``logits_to_keep=1``) and apply the
    output embedding to the counted positions alone. The vocabulary projection is most of the cost
    of a small model and most of the memory of any model, and half the positions (the prompt) do
    not need it. It is only valid when the model's logits *are* ``lm_head(hidden)``: models that
    scale or soft-cap logits after the head (Gemma 2, Cohere, ...) are not. So every batch checks
    that the head reproduces the model's own logits at the one kept position, and falls back to
    full logits (for this and all later batches) when it does not.
    """
    import torch

    if shortcut is not False:
        try:
            out = model(
                input_ids=ids, attention_mask=attention, use_cache=False, output_hidden_states=True, logits_to_keep=1
            )
        except TypeError:  # a model without logits_to_keep
            out = None
        head = model.get_output_embeddings() if out is not None else None
        if out is not None and out.hidden_states is not None and head is not None:
            hidden = out.hidden_states[-1]
            kept = out.logits[:, -1]
            eps = torch.finfo(kept.dtype).eps
            if torch.allclose(head(hidden[:, -1]), kept, rtol=4 * eps, atol=4 * eps):
                return head(hidden[:, :-1][targets]), True
    logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
    return logits[:, :-1][targets], False
