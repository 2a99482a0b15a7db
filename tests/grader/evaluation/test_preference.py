"""DPO quantities (grader/evaluation/preference.py): equal to the definitions spelled out naively, one
pair at a time; accuracy and margin follow the rewards; KL is zero between a model and itself."""

from __future__ import annotations

import re

import pytest

from grader.evaluation import (
    PairLogps,
    RecordError,
    encode_chat,
    encode_pairs,
    load_adapter,
    load_model,
    mean_token_kl,
    pair_logps,
    preference_stats,
)

from .conftest import chat_records


def make_pairs(n: int) -> list[dict]:
    records = chat_records(2 * n, seed=3)
    return [{"prompt": [m for m in a["messages"] if m["role"] != "assistant"],
             "chosen": [m for m in a["messages"] if m["role"] == "assistant"][:1],
             "rejected": [m for m in b["messages"] if m["role"] == "assistant"][:1]}
            for a, b in zip(records[:n], records[n:])]


def naive_logp(model, tokenizer, prompt, completion) -> float:  # type: ignore[no-untyped-def]
    """The definition: template with the generation prompt, the completion's text after it, sum of its tokens' log-probs."""
    import torch

    prefix = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    p = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    c = tokenizer(full[len(prefix):], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logp[t - 1, ids[0, t]].item() for t in range(len(p), len(p) + len(c)))


def test_pair_logps_equal_the_naive_definition(loaded, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, _ = loaded
    pairs = make_pairs(6)
    got = pair_logps(model, encode_pairs(tokenizer, pairs), batch_tokens=300)
    for i, pair in enumerate(pairs):
        assert got.chosen[i] == pytest.approx(naive_logp(model, tokenizer, pair["prompt"], pair["chosen"]), abs=1e-3)
        assert got.rejected[i] == pytest.approx(naive_logp(model, tokenizer, pair["prompt"], pair["rejected"]), abs=1e-3)


def test_encoded_completion_follows_its_prompt(tokenizer) -> None:  # type: ignore[no-untyped-def]
    (pair,) = encode_pairs(tokenizer, make_pairs(1))
    text = tokenizer.decode(pair.prompt + pair.chosen)
    assert text.endswith("<|im_end|>\n") and "<|im_start|>assistant\n" in tokenizer.decode(pair.prompt)


@pytest.mark.parametrize(("pair", "where"), [
    ({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}]}, "pairs[0]"),
    ({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}]}, "pairs[0].rejected"),
    ({"prompt": [{"role": "user", "content": 3}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "pairs[0].prompt"),
])
def test_a_malformed_pair_is_named(tokenizer, pair: dict, where: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecordError, match="^" + re.escape(where)):
        encode_pairs(tokenizer, [pair])


def test_rewards_accuracy_and_margin() -> None:
    reference = PairLogps(chosen=(-10.0, -10.0, -10.0, -10.0), rejected=(-12.0, -12.0, -12.0, -12.0))
    policy = PairLogps(chosen=(-9.0, -9.0, -11.0, -10.0), rejected=(-13.0, -12.0, -11.0, -12.0))
    stats = preference_stats(policy, reference, beta=0.5)
    assert stats.margins == pytest.approx((1.0, 0.5, -1.0, 0.0))  # a tie is not correct
    assert stats.accuracy[0] == pytest.approx(0.5) and stats.margin[0] == pytest.approx(0.125)
    assert stats.accuracy[1] <= 0.5 <= stats.accuracy[2]
    assert preference_stats(policy, reference, beta=1.0).margin[0] == pytest.approx(0.25)
    swapped = PairLogps(chosen=policy.rejected, rejected=policy.chosen)
    assert preference_stats(swapped, PairLogps(reference.rejected, reference.chosen), 0.5).accuracy[0] == 0.25
    with pytest.raises(ValueError):
        preference_stats(policy, reference, beta=0.0)


def test_a_policy_equal_to_its_reference_has_no_margin(loaded, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, _ = loaded
    logps = pair_logps(model, encode_pairs(tokenizer, make_pairs(4)))
    stats = preference_stats(logps, logps, beta=0.1)
    assert stats.accuracy[0] == 0.0 and stats.margin[0] == 0.0


def test_kl_is_zero_from_itself_and_the_naive_sum_otherwise(model_dir, adapter_dir, tokenizer) -> None:  # type: ignore[no-untyped-def]
    import torch

    base, _ = load_model(model_dir)
    tuned = load_adapter(load_model(model_dir)[0], adapter_dir)
    encoded = encode_chat(tokenizer, chat_records(5, seed=4))
    assert mean_token_kl(base, base, encoded)[0] == pytest.approx(0.0, abs=1e-6)
    mean, per_example = mean_token_kl(tuned, base, encoded, batch_tokens=200)
    total = count = 0.0
    with torch.no_grad():
        for e in encoded:
            ids = torch.tensor([e.input_ids])
            p = torch.log_softmax(tuned(input_ids=ids).logits[0].float(), -1)
            q = torch.log_softmax(base(input_ids=ids).logits[0].float(), -1)
            for t in range(1, len(e.input_ids)):
                if e.counted[t]:
                    total += float((p[t - 1].exp() * (p[t - 1] - q[t - 1])).sum())
                    count += 1
    assert mean > 0 and mean == pytest.approx(total / count, rel=1e-4)
    assert sum(n for _, n in per_example) == count
