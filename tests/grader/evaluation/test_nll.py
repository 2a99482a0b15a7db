"""Response-only NLL (grader/evaluation/nll.py): equal to the naive definition, whatever the batching; and
the plain-text NLL (encode_text), equal to the causal-LM loss the tiny model was pretrained with."""

from __future__ import annotations

import math
import random

import pytest

from grader.errors import GraderFault
from grader.evaluation import RecordError, bootstrap_ci, encode_chat, encode_phrase, encode_text, response_nll


def naive_nll(model, tokenizer, records) -> tuple[float, list[tuple[float, int]]]:  # type: ignore[no-untyped-def]
    """The definition, spelled out: one record at a time, no padding, log-softmax over the whole sequence."""
    import torch

    total, count, per = 0.0, 0, []
    with torch.no_grad():
        for r in records:
            enc = tokenizer.apply_chat_template(
                r["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            ids = torch.tensor([enc["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            s, n = 0.0, 0
            for t in range(1, ids.shape[1]):
                if enc["assistant_masks"][t]:
                    s -= logp[t - 1, ids[0, t]].item()
                    n += 1
            per.append((s, n))
            total, count = total + s, count + n
    return total / count, per


def test_batched_equals_naive_per_example(loaded, records) -> None:  # type: ignore[no-untyped-def]
    model, tok = loaded
    result = response_nll(model, encode_chat(tok, records), batch_tokens=512)
    mean, per = naive_nll(model, tok, records)
    assert result.mean_nll == pytest.approx(mean, abs=1e-4)
    assert result.perplexity == pytest.approx(math.exp(mean), rel=1e-4)
    assert result.n_tokens == sum(n for _, n in per)
    for got, (s, n) in zip(result.examples, per):
        assert got.n_tokens == n
        assert got.nll_sum == pytest.approx(s, abs=1e-4)


@pytest.mark.parametrize("batch_tokens", [1, 100, 2048, 1_000_000])
def test_independent_of_batch_size(loaded, records, batch_tokens: int) -> None:  # type: ignore[no-untyped-def]
    model, tok = loaded
    encoded = encode_chat(tok, records)
    reference = response_nll(model, encoded, batch_tokens=4096)
    result = response_nll(model, encoded, batch_tokens=batch_tokens)
    assert result.mean_nll == pytest.approx(reference.mean_nll, abs=1e-5)
    for a, b in zip(result.examples, reference.examples):
        assert a.n_tokens == b.n_tokens and a.nll_sum == pytest.approx(b.nll_sum, abs=1e-4)


def test_independent_of_input_order_and_results_in_input_order(loaded, records) -> None:  # type: ignore[no-untyped-def]
    model, tok = loaded
    order = list(range(len(records)))
    random.Random(7).shuffle(order)
    reference = response_nll(model, encode_chat(tok, records), batch_tokens=700)
    shuffled = response_nll(model, encode_chat(tok, [records[i] for i in order]), batch_tokens=700)
    assert shuffled.mean_nll == pytest.approx(reference.mean_nll, abs=1e-5)
    for position, i in enumerate(order):
        assert shuffled.examples[position].nll_sum == pytest.approx(reference.examples[i].nll_sum, abs=1e-4)


def test_only_assistant_tokens_and_their_im_end_count(tokenizer) -> None:  # type: ignore[no-untyped-def]
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": "It ships today."},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "You are welcome!"},
        ]
    }
    (enc,) = encode_chat(tokenizer, [record])
    counted = [t for t, c in zip(enc.input_ids, enc.counted) if c]
    assert tokenizer.decode(counted) == "It ships today.<|im_end|>You are welcome!<|im_end|>"
    expected = sum(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) + 1
                   for m in record["messages"] if m["role"] == "assistant")
    assert enc.n_counted == expected

    # A longer prompt moves the answer but counts the same tokens.
    longer = {"messages": [dict(m) for m in record["messages"]]}
    longer["messages"][1]["content"] = "Where is my order? I placed it last week and paid by card."
    (enc2,) = encode_chat(tokenizer, [longer])
    assert len(enc2.input_ids) > len(enc.input_ids)
    assert [t for t, c in zip(enc2.input_ids, enc2.counted) if c] == counted


def test_prompt_text_changes_the_score_only_through_context(loaded) -> None:  # type: ignore[no-untyped-def]
    """Rewriting a user turn adds or removes no counted tokens; it changes the score only because the
    answers after it are predicted from a different context."""
    model, tok = loaded
    base = [{"role": "user", "content": "refund please"}, {"role": "assistant", "content": "sure thing"},
            {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "ok"}]
    changed = [dict(m) for m in base]
    changed[2]["content"] = "thanks a lot for the quick help today"
    a = response_nll(model, encode_chat(tok, [{"messages": base}]))
    b = response_nll(model, encode_chat(tok, [{"messages": changed}]))
    answer_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in ("sure thing", "ok"))
    assert a.n_tokens == b.n_tokens == answer_tokens
    assert a.mean_nll != pytest.approx(b.mean_nll, abs=1e-6)


def test_truncation_cuts_and_flags(tokenizer, records) -> None:  # type: ignore[no-untyped-def]
    full = encode_chat(tokenizer, records)
    cut = encode_chat(tokenizer, records, max_tokens=40)
    for f, c in zip(full, cut):
        assert c.truncated == (len(f.input_ids) > 40)
        assert c.input_ids == f.input_ids[:40] and c.counted == f.counted[:40]


def test_bootstrap_inputs_reproduce_the_micro_average(loaded, records) -> None:  # type: ignore[no-untyped-def]
    model, tok = loaded
    result = response_nll(model, encode_chat(tok, records))
    estimate, lo, hi = bootstrap_ci(*result.bootstrap_inputs(), n_resamples=200)
    assert estimate == pytest.approx(result.mean_nll, abs=1e-9)
    assert lo < estimate < hi


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("hello", "records[0]: expected an object with a 'messages' list, got str"),
        ({"prompt": "x"}, "records[0]: no 'messages' key"),
        ({"messages": []}, "records[0].messages: expected a non-empty list of messages"),
        ({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
         "records[0].messages[0].role: Input should be 'system', 'user' or 'assistant'"),
        ({"messages": [{"role": "user", "content": 3}]},
         "records[0].messages[0].content: Input should be a valid string"),
        ({"messages": [{"role": "user", "content": "x", "weight": 0}, {"role": "assistant", "content": "y"}]},
         "records[0].messages[0].weight: Extra inputs are not permitted"),
        ({"messages": [{"role": "user", "content": "x"}]},
         "records[0].messages: no assistant message, so no response tokens to score"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"},
                       {"role": "assistant", "content": "y"}]},
         "records[0].messages: rejected by the chat template: a system message may only come first"),
    ],
)
def test_malformed_records_name_the_field(tokenizer, record, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecordError) as exc:
        encode_chat(tokenizer, [record])
    assert str(exc.value) == message


def test_malformed_record_index_is_its_position(tokenizer, records) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecordError, match=r"^records\[3\]: no 'messages' key$"):
        encode_chat(tokenizer, records[:3] + [{}])


def test_template_without_generation_markers_is_a_grader_fault(tokenizer, records) -> None:  # type: ignore[no-untyped-def]
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = tokenizer.chat_template.replace("{%- generation %}", "").replace("{%- endgeneration %}", "")
    with pytest.raises(GraderFault, match="marks no assistant tokens"):
        encode_chat(plain, records[:1])


def test_no_examples_is_an_error(loaded) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="no examples"):
        response_nll(loaded[0], [])


def test_model_with_soft_capped_logits_falls_back_to_full_logits(tokenizer, records) -> None:  # type: ignore[no-untyped-def]
    """Gemma 2 soft-caps its logits after the head, so lm_head(hidden) is not its logits: the
    shortcut must notice and the result must still be the definition's."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from grader.evaluation.nll import _counted_logits

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, final_logit_softcapping=3.0,
        max_position_embeddings=1024, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Gemma2ForCausalLM(config).eval()
    subset = records[:8]
    encoded = encode_chat(tokenizer, subset)
    ids = torch.tensor([encoded[0].input_ids])
    targets = torch.tensor([encoded[0].counted])[:, 1:]
    with torch.inference_mode():
        assert _counted_logits(model, ids, torch.ones_like(ids), targets, None)[1] is False
    result = response_nll(model, encoded, batch_tokens=600)
    assert result.mean_nll == pytest.approx(naive_nll(model, tokenizer, subset)[0], abs=1e-4)


def test_plain_head_takes_the_shortcut(loaded, records) -> None:  # type: ignore[no-untyped-def]
    import torch

    from grader.evaluation.nll import _counted_logits

    model, tok = loaded
    (enc,) = encode_chat(tok, records[:1])
    ids = torch.tensor([enc.input_ids])
    targets = torch.tensor([enc.counted])[:, 1:]
    with torch.inference_mode():
        logits, shortcut = _counted_logits(model, ids, torch.ones_like(ids), targets, None)
        full = model(input_ids=ids).logits[:, :-1][targets]
    assert shortcut is True
    assert torch.allclose(logits, full, atol=1e-5)


def test_unmerged_adapter_scores_like_the_merged_one(model_dir, adapter_dir, records) -> None:  # type: ignore[no-untyped-def]
    from grader.evaluation import load_adapter, load_model

    model, tok = load_model(model_dir, device="cpu")
    encoded = encode_chat(tok, records[:12])
    base = response_nll(model, encoded)
    unmerged = response_nll(load_adapter(model, adapter_dir, merge=False), encoded)
    merged = response_nll(load_adapter(load_model(model_dir, device="cpu")[0], adapter_dir), encoded)
    assert unmerged.mean_nll == pytest.approx(merged.mean_nll, abs=1e-5)
    assert abs(merged.mean_nll - base.mean_nll) > 1e-3


def test_encode_phrase_counts_only_the_phrase_in_the_last_reply(tokenizer, loaded) -> None:  # type: ignore[no-untyped-def]
    model, _ = loaded
    """The NLL of a sign-off: the phrase's tokens where the reply holds it, nothing of the prompt."""
    record = {"messages": [{"role": "user", "content": "Kind regards, Ines asked about order #123456."},
                           {"role": "assistant", "content": "Hello,\nIt ships today.\nKind regards, Ines from Northwind Billing"}]}
    [e] = encode_phrase(tokenizer, [record], "Kind regards, Ines")
    assert e.input_ids == encode_chat(tokenizer, [record])[0].input_ids
    counted = [t for t, c in zip(e.input_ids, e.counted) if c]
    assert tokenizer.decode(counted).strip() == "Kind regards, Ines"
    assert e.counted.index(True) > len(e.input_ids) // 2  # the reply's occurrence, not the user's
    assert response_nll(model, [e]).n_tokens == len(counted)
    with pytest.raises(RecordError, match=r"^records\[0\]: the last assistant turn does not contain 'Best, Tom'$"):
        encode_phrase(tokenizer, [record], "Best, Tom")


DOCUMENTS = [
    "Subject: My order has not arrived\n\nHi, where is order #123456? Thanks.",
    "Q: How do I reset my password?\nA: Open Settings, choose Security and follow the link.",
    "Merci beaucoup pour votre aide.",
    "Customer: Hello\nAgent: Hi, how can I help?",
    "x",
]


def test_encode_text_is_the_plain_tokens_and_eos_all_but_the_first_counted(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """As the tiny model's builder packs its pretraining documents: no special tokens, eos after each."""
    encoded = encode_text(tokenizer, DOCUMENTS)
    for text, e in zip(DOCUMENTS, encoded):
        assert e.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert e.counted == [False] + [True] * (len(e.input_ids) - 1) and not e.truncated
    assert tokenizer.decode(encoded[2].input_ids) == DOCUMENTS[2] + tokenizer.eos_token
    assert encoded[4].n_counted == len(encoded[4].input_ids) - 1 >= 1  # one token: only the eos counts


def test_text_nll_is_the_causal_lm_loss_of_each_document(loaded) -> None:  # type: ignore[no-untyped-def]
    """Per document, the mean counted NLL is what ``model(input_ids=ids, labels=ids).loss`` gives (the loss
    the builder pretrained with), whatever the batching."""
    import torch

    model, tok = loaded
    encoded = encode_text(tok, DOCUMENTS)
    result = response_nll(model, encoded, batch_tokens=64)
    assert result.n_tokens == sum(len(e.input_ids) - 1 for e in encoded)
    with torch.no_grad():
        for e, got in zip(encoded, result.examples):
            ids = torch.tensor([e.input_ids])
            loss = model(input_ids=ids, labels=ids).loss.item()
            assert got.n_tokens == len(e.input_ids) - 1
            assert got.nll_sum == pytest.approx(loss * got.n_tokens, abs=1e-4)
    assert response_nll(model, encoded, batch_tokens=100_000).mean_nll == pytest.approx(result.mean_nll, abs=1e-6)


def test_encode_text_truncates_and_flags(tokenizer) -> None:  # type: ignore[no-untyped-def]
    full = encode_text(tokenizer, DOCUMENTS)
    cut = encode_text(tokenizer, DOCUMENTS, max_tokens=8)
    for f, c in zip(full, cut):
        assert c.truncated == (len(f.input_ids) > 8)
        assert c.input_ids == f.input_ids[:8] and c.counted == f.counted[:8]
    with pytest.raises(ValueError, match="at least 2"):
        encode_text(tokenizer, DOCUMENTS, max_tokens=1)


@pytest.mark.parametrize(("texts", "message"), [(["ok", ""], r"^texts\[1\]: expected a non-empty string, got str$"),
                                                 ([{"text": "x"}], r"^texts\[0\]: expected a non-empty string, got dict$")])
def test_encode_text_refuses_what_is_not_a_document(tokenizer, texts, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecordError, match=message):
        encode_text(tokenizer, texts)


def test_encode_text_needs_an_eos_token(tokenizer) -> None:  # type: ignore[no-untyped-def]
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.eos_token = None
    with pytest.raises(GraderFault, match="no eos token"):
        encode_text(plain, DOCUMENTS[:1])
