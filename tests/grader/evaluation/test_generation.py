"""Greedy decoding and text metrics (grader/evaluation/generation.py)."""

from __future__ import annotations

import pytest

from grader.evaluation import RecordError, exact_match, greedy_generate, rouge_l


@pytest.fixture(scope="module")
def prompts(records) -> list[list[dict]]:  # type: ignore[no-untyped-def]
    """The conversation up to (not including) its last assistant turn, for 9 records of varied length."""
    out = []
    for r in records[:9]:
        last = max(i for i, m in enumerate(r["messages"]) if m["role"] == "assistant")
        out.append(r["messages"][:last])
    return out


def test_batched_equals_one_by_one_in_input_order(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    model, tok = loaded
    one_by_one = [greedy_generate(model, tok, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert greedy_generate(model, tok, prompts, max_new_tokens=12, batch_size=4) == one_by_one
    assert greedy_generate(model, tok, prompts, max_new_tokens=12, batch_size=16) == one_by_one
    assert len(set(one_by_one)) > 1


def test_matches_transformers_greedy_generate(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    import torch

    model, tok = loaded
    ours = greedy_generate(model, tok, prompts[:2], max_new_tokens=10)
    for p, text in zip(prompts[:2], ours):
        enc = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=False, max_new_tokens=10, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        assert tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True) == text


def test_stops_at_eos_and_drops_it(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    """With eos forced from the 4th decoding step on, every row ends after exactly 3 tokens."""
    import torch

    model, tok = loaded
    eos = tok.eos_token_id
    calls = {"n": 0}

    def force_eos_late(module, args, output):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 3:  # call 1 is the prompt, calls 2 and 3 the 2nd and 3rd tokens
            output = output.clone()
            output[..., eos] = 1e4
        return output

    reference = []
    for p in prompts[:4]:
        enc = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=False, max_new_tokens=3, pad_token_id=tok.pad_token_id)
        reference.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    handle = model.lm_head.register_forward_hook(force_eos_late)
    try:
        forced = greedy_generate(model, tok, prompts[:4], max_new_tokens=20, batch_size=4)
    finally:
        handle.remove()
    assert forced == reference
    assert calls["n"] == 4  # stopped as soon as every row had emitted eos


def test_malformed_prompt(loaded) -> None:  # type: ignore[no-untyped-def]
    model, tok = loaded
    with pytest.raises(RecordError, match=r"^prompts\[1\]\.messages\[0\]\.role: Input should be"):
        greedy_generate(model, tok, [[{"role": "user", "content": "hi"}], [{"role": "bot", "content": "x"}]])


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ("Paris", "paris", True),
        ("  The   order\tships\n today ", "the order ships today", True),
        ("STRASSE", "straße", True),
        ("Paris.", "Paris", False),
        ("café", "cafe", False),
        ("", "", True),
    ],
)
def test_exact_match(pred: str, ref: str, expected: bool) -> None:
    assert exact_match(pred, ref) is expected


def test_rouge_l() -> None:
    assert rouge_l("the cat sat", "the cat sat") == pytest.approx(1.0)
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # P=1, R=3/6
    assert rouge_l("the cat sat on the mat", "the cat sat") == pytest.approx(2 / 3)  # symmetric F
    assert rouge_l("dogs bark loudly", "the cat sat") == 0.0
    assert rouge_l("The CAT sat!", "the cat sat") == pytest.approx(1.0)
    assert rouge_l("", "the cat sat") == 0.0
