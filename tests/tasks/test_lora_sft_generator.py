"""The lora-sft task pack's data generator: sizes, format, disjoint splits, determinism.

Grading every reference submission end to end is tests/tasks/test_reference_solutions.py's job.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "tasks" / "lora-sft"
TOKENIZER = ROOT / "tasks" / "_shared" / "tokenizer"
TINY = ROOT / "tasks" / "_shared" / "models" / "tiny"
DATA_SEED = "tests-lora-sft"
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
SPLITS = {"train": "data/train.jsonl", "val": "data/val.jsonl", "test": "heldout/test.jsonl"}
GENERAL = "heldout/general.jsonl"
BUILDER = ROOT / "tasks" / "_shared" / "build_tiny_model.py"


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load(PACK / "hidden" / "generate.py", "_test_lora_sft_generate")
builder = _load(BUILDER, "_test_lora_sft_tiny_builder")


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("lora-sft-data")
    manifest = generator.generate(dest, DATA_SEED, {"tokenizer": TOKENIZER})
    return dest, manifest


# -- generator (fast) ---------------------------------------------------------------------------

def test_manifest_counts_and_files(data: tuple[Path, dict]) -> None:
    dest, manifest = data
    assert manifest["version"] == 3 and manifest["heldout"] == "heldout/test.jsonl"
    assert manifest["general"] == GENERAL
    for split, rel in SPLITS.items():
        lo, hi = generator.SIZES[split]
        assert lo <= manifest["counts"][split] <= hi
        assert len(_records(dest / rel)) == manifest["counts"][split]
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == sorted([*SPLITS.values(), GENERAL])


def test_records_are_chat_records(data: tuple[Path, dict]) -> None:
    dest, _ = data
    for rel in SPLITS.values():
        for rec in _records(dest / rel):
            assert set(rec) == {"messages", "category"} and rec["category"] in generator.CATEGORIES
            roles = [m["role"] for m in rec["messages"]]
            assert roles in (["user", "assistant"], ["system", "user", "assistant"])
            assert all(isinstance(m["content"], str) and m["content"].strip() for m in rec["messages"])


def test_records_render_short_with_assistant_tokens(data: tuple[Path, dict]) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER))
    dest, _ = data
    for rel in SPLITS.values():
        for rec in _records(dest / rel):
            enc = tok.apply_chat_template(rec["messages"], tokenize=True, return_dict=True,
                                          return_assistant_tokens_mask=True)
            assert len(enc["input_ids"]) < generator.MAX_RECORD_TOKENS
            assert sum(enc["assistant_masks"]) > 10


def test_splits_are_disjoint(data: tuple[Path, dict]) -> None:
    dest, _ = data
    pairs: dict[str, set[tuple[str, str]]] = {}
    orders: dict[str, set[str]] = {}
    for split, rel in SPLITS.items():
        recs = _records(dest / rel)
        pairs[split] = {(r["messages"][-2]["content"], r["messages"][-1]["content"]) for r in recs}
        assert len(pairs[split]) == len(recs)
        orders[split] = {o for r in recs for o in re.findall(r"#(\d{6})", r["messages"][-2]["content"])}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not pairs[a] & pairs[b], f"{a} and {b} share a conversation"
        assert not orders[a] & orders[b], f"{a} and {b} share an order number"


def test_every_category_and_kind_is_trained_on(data: tuple[Path, dict]) -> None:
    """What the held-out set asks for, the training set teaches: every category appears in train."""
    dest, _ = data
    train = _records(dest / SPLITS["train"])
    assert {r["category"] for r in train} == set(generator.CATEGORIES)
    sign_offs = {r["messages"][-1]["content"].rsplit("\n", 1)[-1] for r in train}
    closing, agent = generator.signature(DATA_SEED)
    assert sign_offs == {f"{closing}, {agent} from {team}" for team in generator.TEAMS.values()}


def test_each_seed_signs_its_own_way_never_as_the_public_seed() -> None:
    """Only training on a seed's own files teaches its signature: no cohort shares the public one's
    closing or agent, and cohorts differ among themselves."""
    public = generator.signature(generator.PUBLIC_SEED)
    cohorts = [generator.signature(f"cohort-{i}") for i in range(200)]
    assert all(c[0] != public[0] and c[1] != public[1] for c in cohorts)
    assert len(set(cohorts)) > 100
    assert generator.signature("cohort-7") == generator.signature("cohort-7")


def test_manifest_names_the_signature_every_test_reply_ends_with(data: tuple[Path, dict]) -> None:
    dest, manifest = data
    text = manifest["signature"]["text"]
    assert text == ", ".join(generator.signature(DATA_SEED))
    for r in _records(dest / SPLITS["test"]):
        assert r["messages"][-1]["content"].rsplit("\n", 1)[-1].startswith(text + " from Northwind ")


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path, data: tuple[Path, dict]) -> None:
    dest, manifest = data
    again = generator.generate(tmp_path / "again", DATA_SEED, {})
    assert again == manifest
    for rel in [*SPLITS.values(), GENERAL]:
        assert (tmp_path / "again" / rel).read_bytes() == (dest / rel).read_bytes()
    generator.generate(tmp_path / "other", DATA_SEED + "-other", {})
    for rel in [*SPLITS.values(), GENERAL]:
        assert (tmp_path / "other" / rel).read_bytes() != (dest / rel).read_bytes()


def test_committed_public_data_is_the_generators(tmp_path: Path) -> None:
    manifest = generator.generate(tmp_path, "public", {"tokenizer": TOKENIZER})
    public = PACK / "public"
    assert json.loads((public / "manifest.json").read_text(encoding="utf-8")) == manifest
    for rel in [*SPLITS.values(), GENERAL]:
        assert (public / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


# -- the general-domain set (general-retention) -------------------------------------------------

def _general(dest: Path) -> list[str]:
    rows = _records(dest / GENERAL)
    assert all(set(r) == {"text"} and isinstance(r["text"], str) and r["text"] for r in rows)
    return [r["text"] for r in rows]


def test_general_set_is_pretraining_text_of_a_bounded_size(data: tuple[Path, dict]) -> None:
    """GENERAL_DOCS distinct plain documents of the builder's kinds (no ChatML), each below the token cap."""
    from transformers import PreTrainedTokenizerFast

    dest, _ = data
    texts = _general(dest)
    assert len(texts) == generator.GENERAL_DOCS and 100 <= len(texts) <= 150
    assert len(set(texts)) == len(texts)
    assert not any("<|im_start|>" in t or "<|im_end|>" in t for t in texts)
    kinds = {"e-mail": sum(t.startswith("Subject: ") for t in texts), "Q&A": sum(t.startswith("Q: ") for t in texts),
             "ticket": sum(t.startswith("Ticket TCK-") for t in texts),
             "chat": sum(t.split(":", 1)[0] in {"Customer", "User", *builder.NAMES} and "\n" in t for t in texts)}
    assert all(n >= 5 for n in kinds.values()), kinds
    tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER))
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]
    assert max(lengths) < generator.MAX_RECORD_TOKENS and sum(lengths) < 20_000


def test_general_set_is_drawn_apart_from_the_builders_documents(data: tuple[Path, dict]) -> None:
    """A seed of its own (never the builder's), and no document the tiny model was built from."""
    dest, _ = data
    pretraining = set(builder.corpus(builder.TRAIN["docs"] + builder.TRAIN["heldout_docs"], builder.SEED))
    assert not set(_general(dest)) & pretraining
    seeds = [generator.general_seed(s) for s in (DATA_SEED, "public", "", "lora-sft-2026-cohort-a")]
    assert builder.SEED not in seeds and len(set(seeds)) == len(seeds)
    assert all(s >= 1 << 63 for s in seeds)  # the builder's SEED is a small integer


def test_adding_the_general_set_changed_no_existing_file() -> None:
    """The public chat files committed before the general set (manifest version 2) are still what this
    generator writes for the public seed (test_committed_public_data_is_the_generators): the general set
    draws from a random stream of its own. A deliberate change to the chat data updates these digests."""
    import hashlib

    before = {"data/train.jsonl": "82188312017a2cd4dc0aa5138cf71fdfcaef7522a97c6e9b223c3019662b92ab", "data/val.jsonl": "2ed0db230cc126f4844977a4e1c5e57ec6d7557edc7b00272f62cab8a0bd985d",
              "heldout/test.jsonl": "086257fd7c6164fc0800ef49f603e598db8a6b4137c0b864e8546a61920671ba"}
    for rel, digest in before.items():
        assert hashlib.sha256((PACK / "public" / rel).read_bytes()).hexdigest() == digest, rel


def test_generating_sets_no_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the builder by path runs its module level, which sets TOKENIZERS_PARALLELISM: put back."""
    import os

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    generator._builder.cache_clear()
    generator._pretraining_documents.cache_clear()
    generator.generate(tmp_path, DATA_SEED, {})
    assert "TOKENIZERS_PARALLELISM" not in os.environ


def test_generator_leaves_global_random_alone(tmp_path: Path) -> None:
    import random

    random.seed(1234)
    expected = random.random()
    random.seed(1234)
    generator.generate(tmp_path, DATA_SEED, {})
    assert random.random() == expected
