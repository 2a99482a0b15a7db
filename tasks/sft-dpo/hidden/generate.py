"""Data generator of the sft-dpo task: lora-sft's support chats for the SFT stage, and preference pairs
in TRL's conversational form for the DPO stage.

``generate(dest, seed, assets)`` writes, through lora-sft's generator (loaded by path), the chat files
``data/train.jsonl`` and ``data/val.jsonl`` (the SFT stage's inputs) and the grader-only
``heldout/test.jsonl`` and ``heldout/general.jsonl``; then ``data/pref.jsonl`` (the DPO stage's pairs)
and ``heldout/pref_test.jsonl`` (held-out pairs whose prompts the candidate never sees), and returns
lora-sft's manifest with the pair files added.

The preference signal. A pair's prompt is a new support request drawn like lora-sft's; the chosen
reply is the house-style reply, and the rejected one is the same reply with one *dismissive* sentence
("Please do not contact us about this again.") put after the greeting or after the body. The seed draws
which DISMISSIVE_PER_SEED of the DISMISSIVE sentences its pairs use, the same in its training and
held-out pairs. Rejected replies that only differ in content (a reply of another category) are not
learnable by the tiny model on this data (about 0.77 held-out accuracy at best); this signal is: a DPO
adapter reaches near-perfect held-out accuracy within tens of steps. Conversations are never repeated
across the SFT files and the pair files (no order number appears twice in the whole set).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from pathlib import Path
from typing import Any

LORA_SFT_GENERATOR = Path(__file__).resolve().parents[2] / "lora-sft" / "hidden" / "generate.py"
MANIFEST_VERSION = 1
PAIR_SIZES = {"pref": (160, 176), "pref_test": (96, 104)}
PAIR_FILES = {"pref": "data/pref.jsonl", "pref_test": "heldout/pref_test.jsonl"}
DISMISSIVE = (
    "Please do not contact us about this again.",
    "This is not really our problem.",
    "You should have read the FAQ first.",
    "We get this question far too often.",
    "Next time, please check your order before writing to us.",
    "There is nothing more we can do for you.",
    "Please stop sending us the same request.",
    "That is clearly explained on our website.",
    "We are very busy, so please be patient.",
    "Try not to make this mistake again.",
)
DISMISSIVE_PER_SEED = 5


def _lora_sft() -> Any:
    spec = importlib.util.spec_from_file_location("_tunegrade_lora_sft_generate", LORA_SFT_GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rng(seed: str, stream: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{stream}\0{seed}".encode()).digest()[:8], "big"))


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def dismissive(seed: str) -> list[str]:
    """The seed's dismissive sentences (what its rejected replies add)."""
    return sorted(_rng(seed, "dismissive").sample(DISMISSIVE, DISMISSIVE_PER_SEED))


def pair(record: dict[str, Any], sentence: str, after_greeting: bool) -> dict[str, Any]:
    """A preference pair from one chat record: the house-style reply chosen, the same reply with
    ``sentence`` added after its greeting (or after its body) rejected."""
    messages = [m for m in record["messages"] if m["role"] != "system"]
    user, reply = messages[0]["content"], messages[1]["content"]
    greeting, body, sign_off = reply.split("\n")
    bad = [greeting, f"{sentence} {body}", sign_off] if after_greeting else [greeting, f"{body} {sentence}", sign_off]
    return {
        "prompt": [{"role": "user", "content": user}],
        "chosen": [{"role": "assistant", "content": reply}],
        "rejected": [{"role": "assistant", "content": "\n".join(bad)}],
        "category": record["category"],
    }


def generate(dest: Path, seed: str, assets: dict[str, Path]) -> dict[str, Any]:
    """Write the chat files and the pair files for ``seed``; return the manifest."""
    lora = _lora_sft()
    manifest = lora.generate(dest, seed, assets)
    dest = Path(dest)
    closing, agent = lora.signature(seed)
    gen = lora._Generator(_rng(seed, "pairs"), f"{closing}, {agent} from")
    for rel in (manifest["heldout"], "data/train.jsonl", "data/val.jsonl"):
        for rec in _read(dest / rel):
            user, reply = (m["content"] for m in rec["messages"] if m["role"] != "system")
            gen.pairs.add((user, reply))
            gen.orders.update(int(n) for n in _order_numbers(user))
    rng = _rng(seed, "pair-shapes")
    sentences = dismissive(seed)
    counts = {}
    for split, (lo, hi) in PAIR_SIZES.items():
        counts[split] = rng.randint(lo, hi)
        path = dest / PAIR_FILES[split]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="\n") as fh:
            for _ in range(counts[split]):
                row = pair(gen.record(), rng.choice(sentences), rng.random() < 0.5)
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {**manifest, "version": f"{manifest['version']}+pairs{MANIFEST_VERSION}",
            "pair_counts": counts, "pref_heldout": PAIR_FILES["pref_test"], "dismissive": sentences}


def _order_numbers(text: str) -> list[str]:
    return [word.strip("#.,?!") for word in text.split() if word.startswith("#") and word.strip("#.,?!").isdigit()]


def main() -> None:
    """Regenerate the public data: python tasks/sft-dpo/hidden/generate.py."""
    pack = Path(__file__).resolve().parent.parent
    manifest = generate(pack / "public", _lora_sft().PUBLIC_SEED, {"tokenizer": pack.parent / "_shared" / "tokenizer"})
    text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False)  # as the grader writes it
    (pack / "public" / "manifest.json").write_text(text + "\n", encoding="utf-8")
    print(f"wrote {pack / 'public'}: {manifest['counts']} {manifest['pair_counts']}")


if __name__ == "__main__":
    main()
