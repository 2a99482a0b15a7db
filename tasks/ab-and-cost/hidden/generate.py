"""Data generator of the ab-and-cost task: Part B's support chats and brief, Part A's A/B logs.

Part B reuses the lora-sft task's generator by path (the same distribution, house style and per-seed
signature), so the grader's adapter measures (held-out NLL, the cohort's signature) carry over; the
hidden seeds are this task's own. ``data/brief.json`` states the quality to reach and the larger run
to estimate the cost of. Part A's interaction logs come from ``ab_logs.write_ab`` (its own module).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LORA_SFT_GENERATOR = HERE.parents[1] / "lora-sft" / "hidden" / "generate.py"
BRIEF_FILE = "data/brief.json"
TARGET_NLL = 2.8
"""Response-only NLL per token (nats) on held-out replies, for the default base model tiny. Measured on
tiny over four hidden seeds (README, Calibration): base 5.2-5.8; the reference (one epoch) 2.05-2.45,
so it keeps at least 0.35 nats of margin; a third of an epoch stays at 3.1-3.4, above it."""
SCALE_TO = {"params": 1.0e9, "train_examples": 200_000}
MEASURE = "CPU-seconds of the whole training run (user + system, every process), as the sandbox measures them"


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lora_sft() -> Any:
    return _load(LORA_SFT_GENERATOR, "_tunegrade_lora_sft_generate")


def brief() -> dict[str, Any]:
    return {"target_nll": TARGET_NLL, "scale_to": SCALE_TO, "measure": MEASURE}


def generate(dest: Path, seed: str, assets: dict[str, Path]) -> dict[str, Any]:
    manifest = _lora_sft().generate(dest, seed, assets)
    (dest / BRIEF_FILE).write_text(json.dumps(brief(), indent=1) + "\n", encoding="utf-8")
    ab = _load(HERE / "ab_logs.py", "_tunegrade_ab_and_cost_ab_logs")
    return manifest | {"brief": brief(), "ab": ab.write_ab(dest / "data", seed)}


def main() -> None:
    """Regenerate the public data: python tasks/ab-and-cost/hidden/generate.py."""
    pack = HERE.parent
    manifest = generate(pack / "public", _lora_sft().PUBLIC_SEED, {"tokenizer": pack.parent / "_shared" / "tokenizer"})
    text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False)  # as the grader writes it
    (pack / "public" / "manifest.json").write_text(text + "\n", encoding="utf-8")
    print(f"wrote {pack / 'public'}: {manifest['counts']}")


if __name__ == "__main__":
    main()
