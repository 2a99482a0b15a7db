"""Side-by-side timings of grader/evaluation against the naive way of computing the same numbers.

    python benchmarks/bench_eval.py [--model DIR] [--records 200] [--threads N]

Without ``--model`` a random Llama (hidden 64, 2 layers, as in the tests) over the task tokenizer is built in a
temporary folder; with it, any local causal-LM folder (safetensors, tokenizer included) is used.
Both sides run on the same model, data and device in this one process, and the script checks that
they agree before printing the speed-up. Under half a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TOKENIZER_DIR = REPO / "tasks" / "_shared" / "tokenizer"

WORDS = (
    "order refund shipping account password invoice delivery tracking number card payment return label "
    "the your our please thanks we will can help today tomorrow within days business email address"
).split()


def make_records(n: int, seed: int = 0) -> list[dict]:
    """Support conversations with lengths spread like real data: mostly short, a long tail."""
    rng = random.Random(seed)

    def text(mean: float) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(max(1, int(rng.expovariate(1 / mean)))))

    records = []
    for i in range(n):
        messages = [{"role": "system", "content": "You are a helpful support agent."}] if i % 2 else []
        for _ in range(1 + (rng.random() < 0.3)):
            messages += [{"role": "user", "content": text(25)}, {"role": "assistant", "content": text(40)}]
        records.append({"messages": messages})
    return records


def random_llama(path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=None,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


def naive_nll(model, encoded) -> float:  # type: ignore[no-untyped-def]
    """One example per forward pass, in file order: the obvious implementation."""
    import torch

    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for e in encoded:
            ids = torch.tensor([e.input_ids], device=device)
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            mask = torch.tensor(e.counted[1:], device=device)
            total -= logp.gather(1, ids[0, 1:, None])[:, 0][mask].sum().item()
            count += int(mask.sum())
    return total / count


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a local model folder (default: a random Llama)")
    parser.add_argument("--records", type=int, default=200, help="chat records for the NLL comparison")
    parser.add_argument("--prompts", type=int, default=48, help="prompts for the generation comparison")
    parser.add_argument("--new-tokens", type=int, default=32, help="max_new_tokens for generation")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on a CPU, see below)")
    args = parser.parse_args()

    import torch

    from grader.evaluation import encode_chat, greedy_generate, load_model, response_nll

    # What is compared is batching, not thread scaling. On a small shared CPU, multi-threaded torch
    # spends its time waiting for cores other jobs hold (measured: a 160-token forward of the tiny
    # model took 7 ms on one thread and 400 ms on two), which drowns both sides in noise.
    if args.threads:
        torch.set_num_threads(args.threads)
    elif not torch.cuda.is_available():
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp) / "random-llama"
            random_llama(model_dir)
        model, tok = load_model(model_dir)
        device = next(model.parameters()).device
        params = sum(p.numel() for p in model.parameters())
        print(f"model: {args.model or 'random Llama'} ({params / 1e6:.1f}M params, {model.dtype}), device {device}, "
              f"torch threads {torch.get_num_threads()}")

        records = make_records(args.records)
        encoded = encode_chat(tok, records)
        lengths = sorted(len(e.input_ids) for e in encoded)
        counted = sum(e.n_counted for e in encoded)
        print(f"NLL data: {len(records)} records, {sum(lengths)} tokens ({counted} counted), "
              f"lengths {lengths[0]}..{lengths[-1]} (median {lengths[len(lengths) // 2]})")
        response_nll(model, encoded[:4])  # warm-up: first-call allocations are not what we measure

        naive, t_naive = timed(lambda: naive_nll(model, encoded))
        result, t_lib = timed(lambda: response_nll(model, encoded))
        assert abs(result.mean_nll - naive) < 1e-4, (result.mean_nll, naive)
        print(f"response_nll  naive loop {t_naive:7.2f} s | library {t_lib:7.2f} s | x{t_naive / t_lib:5.1f} faster"
              f"  (NLL {result.mean_nll:.6f} vs {naive:.6f}, |diff| {abs(result.mean_nll - naive):.1e})")

        prompts = []
        for r in records[: args.prompts]:
            last = max(i for i, m in enumerate(r["messages"]) if m["role"] == "assistant")
            prompts.append(r["messages"][:last])
        one, t_one = timed(lambda: [greedy_generate(model, tok, [p], args.new_tokens, batch_size=1)[0] for p in prompts])
        batched, t_batched = timed(lambda: greedy_generate(model, tok, prompts, args.new_tokens, batch_size=16))
        same = sum(a == b for a, b in zip(one, batched))
        print(f"greedy_generate  one by one {t_one:7.2f} s | batched (16) {t_batched:7.2f} s | "
              f"x{t_one / t_batched:5.1f} faster  ({len(prompts)} prompts, max {args.new_tokens} new tokens, "
              f"{same}/{len(prompts)} identical)")


if __name__ == "__main__":
    main()
