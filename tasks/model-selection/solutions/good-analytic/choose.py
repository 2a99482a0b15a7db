#!/usr/bin/env python3
"""Model selection with analytic intervals: a per-record loop, delta-method t intervals, a z-test for leaks.

python choose.py --model MODEL_DIR --candidates DIR --val VAL_JSONL --bench BENCH_JSONL --out OUT_DIR

The NLL per token is a ratio of two per-record sums (NLL, tokens); its standard error comes from the
linearised ratio estimator, and the 95% interval from Student's t. A leak shows as one set's NLL far
below the other's beyond the gap every adapter has between the two sets: the z-score of that excess
against the median adapter decides.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

Z_LEAK = 2.0  # a 95% two-sided test; MIN_EXCESS keeps small, real differences in set difficulty unflagged
MIN_EXCESS = 0.1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("model", "candidates", "val", "bench", "out"):
        p.add_argument(f"--{name}", type=Path, required=True)
    return p.parse_args()


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def record_sums(model: Any, tokenizer: Any, recs: list[dict[str, Any]]) -> Any:
    """One record at a time: (summed NLL of the assistant tokens, their count)."""
    import numpy as np
    import torch

    out = []
    with torch.no_grad():
        for rec in recs:
            enc = tokenizer.apply_chat_template(rec["messages"], tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            ids = torch.tensor([enc["input_ids"]])
            mask = torch.tensor(enc["assistant_masks"], dtype=torch.bool)[1:]
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            picked = logp.gather(1, ids[0, 1:, None])[:, 0]
            out.append((-float(picked[mask].double().sum()), int(mask.sum())))
    return np.array(out)


def ratio_stats(rows: Any) -> tuple[float, float]:
    """(NLL per token, its standard error by the delta method)."""
    s, n = rows[:, 0], rows[:, 1]
    r = s.sum() / n.sum()
    resid = s - r * n
    se = math.sqrt(resid.var(ddof=1) / len(rows)) / n.mean()
    return float(r), se


def t_quantile_975(df: int) -> float:
    """Student's t 97.5% quantile by its Cornish-Fisher expansion around the normal's (exact to 1e-4 for
    df >= 10), so numpy is all this needs."""
    z = 1.959963985
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(rows: Any) -> tuple[float, list[float]]:
    r, se = ratio_stats(rows)
    half = t_quantile_975(len(rows) - 1) * se
    return r, [r - half, r + half]


def main() -> None:
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    sets = {"val": records(args.val), "bench": records(args.bench)}
    stats: dict[str, dict[str, Any]] = {}
    for folder in sorted(args.candidates.iterdir()):
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload().eval()
        stats[folder.name] = {k: record_sums(model, tokenizer, v) for k, v in sets.items()}
    adapters, gap, se_gap = {}, {}, {}
    for name, st in stats.items():
        v, v_ci = t_interval(st["val"])
        b, b_ci = t_interval(st["bench"])
        adapters[name] = {"val_nll": v, "ci": v_ci, "bench_nll": b, "bench_ci": b_ci}
        gap[name] = v - b
        se_gap[name] = math.hypot(ratio_stats(st["val"])[1], ratio_stats(st["bench"])[1])
    reference = float(np.median(list(gap.values())))
    flags = []
    for name in stats:
        excess = gap[name] - reference
        z = excess / se_gap[name]
        if abs(z) >= Z_LEAK and abs(excess) >= MIN_EXCESS:
            kind = "contaminated" if excess > 0 else "overfit"
            flags.append({"adapter": name, "flag": kind, "z": z,
                          "evidence": f"val {adapters[name]['val_nll']:.3f} vs bench {adapters[name]['bench_nll']:.3f}: "
                                      f"a gap {excess:+.3f} nats away from the median adapter's {reference:+.3f} "
                                      f"(z = {z:+.1f})"})
    flagged = {f["adapter"] for f in flags}
    ranking = sorted(adapters, key=lambda n: (n in flagged, adapters[n]["val_nll"]))
    args.out.mkdir(parents=True, exist_ok=True)
    selection = {"metric": "val_nll", "adapters": adapters, "ranking": ranking, "chosen": ranking[0], "flags": flags}
    (args.out / "selection.json").write_text(json.dumps(selection, indent=1) + "\n", encoding="utf-8")
    (args.out / "REPORT.md").write_text(report(selection), encoding="utf-8")


def report(selection: dict[str, Any]) -> str:
    rows = "\n".join(f"- {n}: val {a['val_nll']:.4f} (95% t CI {a['ci'][0]:.4f} to {a['ci'][1]:.4f}), bench "
                     f"{a['bench_nll']:.4f}" for n, a in selection["adapters"].items())
    flags = "\n".join(f"- {f['adapter']}: {f['flag']} ({f['evidence']})" for f in selection["flags"]) or "- none"
    return f"""# How we evaluate fine-tuned candidates

Our standard, in short: every number has an interval, no set that influenced training or selection is
used to claim generalisation, and a leak is looked for before a winner is named.

**Metric.** Response-only NLL per assistant token of base plus merged adapter, in float32, on the
validation file; the benchmark set is scored the same way. The standard error is that of a ratio
estimator (records are the independent unit, tokens are not), and intervals are 95% Student-t
intervals. Two candidates whose intervals overlap are not ranked against each other on this evidence
alone; a paired comparison on the same records, or a larger set, must settle it.

**Contamination.** Two sets drawn from the same distribution differ in difficulty by about the same
amount for every honest model. An adapter whose validation-minus-benchmark gap sits more than
{Z_LEAK:g} standard errors (and {MIN_EXCESS} nats) from the median adapter's gap has seen one of the sets:
contaminated if the benchmark is the easy one, over-fitted to validation if validation is. Such an
adapter is excluded, and the team traces its training data.

**Held-out discipline.** The final choice is confirmed on a held-out test set used once per release.
Training, validation, benchmark and test sets are deduplicated against each other before any training.

## Results
{rows}

## Flags
{flags}

Chosen: **{selection['chosen']}**.
"""


if __name__ == "__main__":
    main()
