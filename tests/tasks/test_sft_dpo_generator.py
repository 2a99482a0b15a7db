"""The sft-dpo task pack's data generator: lora-sft's chats unchanged, pairs whose rejected reply is the
chosen one plus a dismissive sentence, held-out pairs never seen, determinism.

Grading every reference submission end to end is tests/tasks/test_reference_solutions.py's job.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "tasks" / "sft-dpo"
TOKENIZER = ROOT / "tasks" / "_shared" / "tokenizer"
SEED = "tests-sft-dpo"


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load(PACK / "hidden" / "generate.py", "_test_sft_dpo_generate")
lora = _load(ROOT / "tasks" / "lora-sft" / "hidden" / "generate.py", "_test_sft_dpo_lora_generate")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("sft-dpo-data")
    return dest, generator.generate(dest, SEED, {"tokenizer": TOKENIZER})


def test_the_chat_files_are_lora_sfts(data: tuple[Path, dict], tmp_path: Path) -> None:
    dest, manifest = data
    lora.generate(tmp_path, SEED, {"tokenizer": TOKENIZER})
    for rel in ("data/train.jsonl", "data/val.jsonl", "heldout/test.jsonl", "heldout/general.jsonl"):
        assert (dest / rel).read_bytes() == (tmp_path / rel).read_bytes()
    assert manifest["signature"] == lora.generate(tmp_path / "again", SEED, {})["signature"]


def test_pairs_differ_by_one_dismissive_sentence(data: tuple[Path, dict]) -> None:
    dest, manifest = data
    sentences = manifest["dismissive"]
    assert len(sentences) == generator.DISMISSIVE_PER_SEED and set(sentences) <= set(generator.DISMISSIVE)
    for split, rel in generator.PAIR_FILES.items():
        rows = _rows(dest / rel)
        lo, hi = generator.PAIR_SIZES[split]
        assert lo <= len(rows) == manifest["pair_counts"][split] <= hi
        for row in rows:
            assert [m["role"] for m in row["prompt"]] == ["user"]
            chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
            added = [s for s in sentences if s in rejected]
            assert len(added) == 1 and added[0] not in chosen
            assert rejected.replace(added[0] + " ", "", 1).replace(" " + added[0], "", 1) == chosen
            assert manifest["signature"]["text"] in chosen


def test_held_out_prompts_are_never_seen(data: tuple[Path, dict]) -> None:
    dest, _ = data
    held = {r["prompt"][0]["content"] for r in _rows(dest / "heldout/pref_test.jsonl")}
    seen = {r["prompt"][0]["content"] for r in _rows(dest / "data/pref.jsonl")}
    for rel in ("data/train.jsonl", "data/val.jsonl", "heldout/test.jsonl"):
        seen |= {m["content"] for r in _rows(dest / rel) for m in r["messages"] if m["role"] == "user"}
    assert held and not held & seen


def test_deterministic_and_seeded(data: tuple[Path, dict], tmp_path: Path) -> None:
    dest, manifest = data
    again = generator.generate(tmp_path / "a", SEED, {})
    assert again == manifest
    for rel in generator.PAIR_FILES.values():
        assert (tmp_path / "a" / rel).read_bytes() == (dest / rel).read_bytes()
    other = generator.generate(tmp_path / "b", "another-seed", {})
    assert (tmp_path / "b" / "data/pref.jsonl").read_bytes() != (dest / "data/pref.jsonl").read_bytes()
    assert other["signature"] != manifest["signature"] or other["dismissive"] != manifest["dismissive"]


def test_public_data_is_the_public_seeds(tmp_path: Path) -> None:
    manifest = generator.generate(tmp_path, lora.PUBLIC_SEED, {})
    assert json.loads((PACK / "public" / "manifest.json").read_text(encoding="utf-8")) == manifest
    for rel in ("data/train.jsonl", "data/val.jsonl", "data/pref.jsonl"):
        assert (PACK / "public" / rel).read_bytes() == (tmp_path / rel).read_bytes()
