"""Data generator of the qlora-tune task: the lora-sft task's support chats (its generator, by path).

The same distribution, house style and per-seed signature as lora-sft, so the grader's measures
(held-out NLL, the cohort's signature, general-domain retention) carry over; the hidden seeds are
this task's own. The public seed is lora-sft's too, so the public files are the same.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

LORA_SFT_GENERATOR = Path(__file__).resolve().parents[2] / "lora-sft" / "hidden" / "generate.py"


def _lora_sft() -> Any:
    spec = importlib.util.spec_from_file_location("_tunegrade_lora_sft_generate", LORA_SFT_GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate(dest: Path, seed: str, assets: dict[str, Path]) -> dict[str, Any]:
    return _lora_sft().generate(dest, seed, assets)


def main() -> None:
    """Regenerate the public data: python tasks/qlora-tune/hidden/generate.py."""
    import json

    pack = Path(__file__).resolve().parent.parent
    lora = _lora_sft()
    manifest = generate(pack / "public", lora.PUBLIC_SEED, {"tokenizer": pack.parent / "_shared" / "tokenizer"})
    text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False)  # as the grader writes it
    (pack / "public" / "manifest.json").write_text(text + "\n", encoding="utf-8")
    print(f"wrote {pack / 'public'}: {manifest['counts']}")


if __name__ == "__main__":
    main()
