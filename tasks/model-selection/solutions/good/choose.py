#!/usr/bin/env python3
"""Choose between LoRA adapters of one base model with honest intervals and a contamination test.

python choose.py --model MODEL_DIR --candidates DIR --val VAL_JSONL --bench BENCH_JSONL --out OUT_DIR

Every adapter is scored on the validation and the benchmark set with the response-only NLL (README).
Intervals: percentile bootstrap over records, 95%. Leak test: an adapter trained on one of the two
sets looks far better on it than on the other, compared with how the other adapters do on the same two
sets; the excess gap is bootstrapped jointly for all adapters (the same resampled records for all).
The chosen adapter is the lowest val_nll among those not flagged.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

RESAMPLES = 2000
MIN_EXCESS = 0.1  # nats: a leak moves one set's NLL far more than set difficulty moves a clean adapter's


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--candidates", type=Path, required=True)
    p.add_argument("--val", type=Path, required=True)
    p.add_argument("--bench", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args()


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def encode(tokenizer: Any, records: list[dict[str, Any]]) -> list[tuple[list[int], list[bool]]]:
    out = []
    for rec in records:
        enc = tokenizer.apply_chat_template(rec["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        out.append((list(enc["input_ids"]), [bool(m) for m in enc["assistant_masks"]]))
    return out


def per_record_nll(model: Any, encoded: list[tuple[list[int], list[bool]]], batch: int = 16) -> Any:
    """``(summed NLL, counted tokens)`` per record, as a (n, 2) float64 array."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    rows = []
    with torch.inference_mode():
        for start in range(0, len(encoded), batch):
            chunk = encoded[start : start + batch]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            attention = torch.zeros_like(ids)
            counted = torch.zeros((len(chunk), width), dtype=torch.bool)
            for i, (x, mask) in enumerate(chunk):
                ids[i, : len(x)], attention[i, : len(x)], counted[i, : len(x)] = torch.tensor(x), 1, torch.tensor(mask)
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            target = counted[:, 1:]
            rows += [(float(nll[i][target[i]].double().sum()), int(target[i].sum())) for i in range(len(chunk))]
    return np.array(rows, dtype=np.float64)


def score_adapters(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per adapter and set, the per-record (NLL sum, tokens)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    sets = {"val": encode(tokenizer, load_jsonl(args.val)), "bench": encode(tokenizer, load_jsonl(args.bench))}
    scores = {}
    for folder in sorted(p for p in args.candidates.iterdir() if (p / "adapter_config.json").is_file()):
        base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload().eval()
        scores[folder.name] = {name: per_record_nll(model, enc) for name, enc in sets.items()}
    return scores


def bootstrap_means(rows: Any, idx: Any) -> Any:
    """The micro-averaged NLL of each resample (rows of record indices)."""
    return rows[idx, 0].sum(axis=1) / rows[idx, 1].sum(axis=1)


def analyse(scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    names = sorted(scores)
    n_val, n_bench = len(scores[names[0]]["val"]), len(scores[names[0]]["bench"])
    val_idx = rng.integers(0, n_val, size=(RESAMPLES, n_val))
    bench_idx = rng.integers(0, n_bench, size=(RESAMPLES, n_bench))
    adapters, gaps, gap_draws = {}, {}, {}
    for name in names:
        val, bench = scores[name]["val"], scores[name]["bench"]
        v_draws, b_draws = bootstrap_means(val, val_idx), bootstrap_means(bench, bench_idx)
        v, b = val[:, 0].sum() / val[:, 1].sum(), bench[:, 0].sum() / bench[:, 1].sum()
        adapters[name] = {"val_nll": float(v), "ci": [float(x) for x in np.quantile(v_draws, [0.025, 0.975])],
                          "bench_nll": float(b), "bench_ci": [float(x) for x in np.quantile(b_draws, [0.025, 0.975])]}
        gaps[name], gap_draws[name] = v - b, v_draws - b_draws
    flags = []
    for name in names:
        others = [m for m in names if m != name]
        excess = gaps[name] - float(np.median([gaps[m] for m in others]))
        draws = gap_draws[name] - np.median(np.stack([gap_draws[m] for m in others]), axis=0)
        lo, hi = np.quantile(draws, [0.025, 0.975])
        if abs(excess) < MIN_EXCESS or lo <= 0.0 <= hi:
            continue
        kind, better = ("contaminated", "benchmark") if excess > 0 else ("overfit", "validation")
        flags.append({"adapter": name, "flag": kind, "excess_gap": excess, "excess_ci": [float(lo), float(hi)],
                      "evidence": f"val-minus-bench NLL gap {gaps[name]:+.3f} against the other adapters' median "
                                  f"{gaps[name] - excess:+.3f}: excess {excess:+.3f} nats, 95% bootstrap CI "
                                  f"[{lo:+.3f}, {hi:+.3f}]; it looks better on the {better} set than set "
                                  f"difficulty explains, so it has seen the {better} items"})
    flagged = {f["adapter"] for f in flags}
    ranking = sorted(names, key=lambda n: (n in flagged, adapters[n]["val_nll"]))
    return {"metric": "val_nll", "adapters": adapters, "ranking": ranking, "chosen": ranking[0], "flags": flags}


REPORT = """# Evaluation standard for choosing a fine-tuned model

## What we measure
Every candidate is scored with the response-only NLL (nats per assistant token, micro-averaged over the
file) of the base model plus the adapter merged in float32, on two sets nobody trained on by design: our
validation set and the public benchmark. A number without its uncertainty is not a result: each score
comes with a 95% percentile bootstrap interval over records (records, not tokens, are the independent
unit; {resamples} resamples, fixed seed).

## Contamination and over-fitting
A model trained on a benchmark's items looks better on that benchmark than on comparable held-out data.
Clean models show the same gap between two sets drawn from one distribution (set difficulty); a leaked
model shows a much larger one. We compare each adapter's val-minus-bench gap with the median of the other
adapters' gaps, bootstrap that excess with the same resampled records for every adapter, and flag the
adapter when the interval excludes zero and the excess is above {min_excess} nats: "contaminated" when it
is better on the benchmark, "overfit" when it is better on the validation set (it was tuned or
early-stopped against it). Flagged adapters are never chosen, whatever their numbers.

## Choosing
Among unflagged adapters the lowest validation NLL wins; adapters whose intervals overlap are treated as
tied, and then we prefer the cheaper or simpler one. Before release the choice is confirmed once on a
held-out test set that no one has looked at, and that set is then retired; a held-out set consulted for
every decision becomes a validation set.

## Team rules
1. Keep benchmark, validation and held-out test sets disjoint from training data, and check that by
   n-gram overlap before training, not after.
2. Report intervals and the number of records with every score; never rank on differences inside the
   noise.
3. Record the data each adapter was trained on, so leaks can be traced.

## This run
{table}
"""


def write_outputs(out: Path, selection: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(selection, indent=1) + "\n", encoding="utf-8")
    lines = ["| adapter | val_nll [95% CI] | bench_nll [95% CI] | flag |", "|---|---|---|---|"]
    flags = {f["adapter"]: f["flag"] for f in selection["flags"]}
    for name in selection["ranking"]:
        a = selection["adapters"][name]
        lines.append(f"| {name} | {a['val_nll']:.4f} [{a['ci'][0]:.4f}, {a['ci'][1]:.4f}] | {a['bench_nll']:.4f} "
                     f"[{a['bench_ci'][0]:.4f}, {a['bench_ci'][1]:.4f}] | {flags.get(name, '')} |")
    lines.append(f"\nChosen: {selection['chosen']}.")
    report = REPORT.format(resamples=RESAMPLES, min_excess=MIN_EXCESS, table="\n".join(lines))
    (out / "REPORT.md").write_text(report, encoding="utf-8")


def main() -> None:
    args = parse_args()
    write_outputs(args.out, analyse(score_adapters(args)))


if __name__ == "__main__":
    main()
