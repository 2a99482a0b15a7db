"""Greedy decoding of chat prompts, and the two text metrics computed on its output.

Decoding is a plain argmax loop over the model's own logits, written out here instead of
``model.generate``: ``generate`` fills every option the caller leaves unset from the model folder's
``generation_config.json`` (repetition penalties, suppressed tokens, ...), so "greedy" would depend
on a file. Here it means exactly: at each step append ``argmax(logits)``, stop a row at the
tokenizer's eos (``<|im_end|>``) or after ``max_new_tokens``.

Batches are LEFT-padded so every row's next token sits in the last column; position ids count real
tokens only, so a padded row sees the same positions as it would alone. Prompts are sorted by length
so a batch holds similar lengths; outputs come back in the input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from grader.evaluation.chat import template_error, validate_messages

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: Any, where: str = "prompts[0]") -> list[int]:
    """The token ids of a conversation followed by the assistant header (``add_generation_prompt``)."""
    from jinja2 import TemplateError

    checked = validate_messages(messages, where, need_assistant=False)
    try:
        enc = tokenizer.apply_chat_template(checked, tokenize=True, return_dict=True, add_generation_prompt=True)
    except TemplateError as exc:
        raise template_error(exc, where) from None
    return [int(t) for t in enc["input_ids"]]


def greedy_generate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts_messages: Sequence[Any],
    max_new_tokens: int = 64,
    batch_size: int = 16,
) -> list[str]:
    """The greedy completion of each prompt (a list of messages), decoded without special tokens.

    The model must accept ``position_ids``, a KV cache and ``logits_to_keep`` (every
    decoder-only transformers model does). Raises ``RecordError`` for a malformed prompt.
    """
    import torch

    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be positive")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token to stop at")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    prompts = [encode_prompt(tokenizer, m, f"prompts[{i}]") for i, m in enumerate(prompts_messages)]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(prompts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            tokens = _greedy_batch(model, [prompts[i] for i in batch], eos, pad, max_new_tokens, device)
            for i, new in zip(batch, tokens):
                outputs[i] = tokenizer.decode(new, skip_special_tokens=True)
    return outputs


def _greedy_batch(
    model: Any, prompts: list[list[int]], eos: int, pad: int, max_new_tokens: int, device: Any
) -> list[list[int]]:
    """New tokens of each row, without the eos that ended it."""
    import torch

    rows, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((rows, width), pad, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p)
        attention[r, width - len(p) :] = 1
    ids, attention = ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1)
    next_position = positions[:, -1:] + 1
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    new: list[list[int]] = [[] for _ in prompts]
    for step in range(max_new_tokens):
        token = out.logits[:, -1].argmax(-1)
        token = torch.where(done, torch.full_like(token, pad), token)
        for r, (t, finished) in enumerate(zip(token.tolist(), done.tolist())):
            if not finished and t != eos:
                new[r].append(t)
        done |= token == eos
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        attention = torch.cat([attention, torch.ones((rows, 1), dtype=attention.dtype, device=device)], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=attention,
            position_ids=next_position,
            use_cache=True,
            logits_to_keep=1,
            **_cache_kwarg(out),
        )
        next_position = next_position + 1
    return new


def _cache_kwarg(out: Any) -> dict[str, Any]:
    """The KV cache to feed back: transformers 5 calls it ``cache`` (in and out), 4.x ``past_key_values``."""
    cache = getattr(out, "cache", None)
    return {"cache": cache} if cache is not None else {"past_key_values": out.past_key_values}


def normalise(text: str) -> str:
    """Strip, collapse every run of whitespace to one space, case-fold (``ß`` == ``SS``)."""
    return " ".join(text.split()).casefold()


def exact_match(pred: str, ref: str) -> bool:
    """Equal after :func:`normalise`; punctuation and accents still count."""
    return normalise(pred) == normalise(ref)


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"])


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure from ``rouge_score`` with its defaults (no stemming). Its tokenizer
    lower-cases and keeps only ``[a-z0-9]`` runs, so accented letters split words and non-Latin
    text scores 0; two texts without such tokens score 0."""
    return float(_rouge().score(ref, pred)["rougeL"].fmeasure)
