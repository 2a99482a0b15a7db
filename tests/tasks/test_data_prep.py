"""The data-prep task pack: its generator, the shared tokenizer, and its checks on garbage output.

The reference submissions are graded end to end in tests/tasks/test_reference_solutions.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from grader.checks import Artifacts, CandidateFault, CheckContext, RunArtifacts
from grader.checks.base import CHECK_ATTR
from grader.checks.library import runs as runs_check
from grader.taskspec import load_task_spec
from sandbox.base import ExecResult

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "tasks" / "data-prep"
SHARED = ROOT / "tasks" / "_shared"
TOKENIZER = SHARED / "tokenizer"
DATA_SEED = "tests-data-prep"
GRADE_SEED = 4242
PARAMS = {"max_tokens": 256, "val_fraction": 0.2}
VARIANTS = ("main", "alpaca", "repeat", "reseed")


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load(PACK / "hidden" / "generate.py", "_test_data_prep_generate")
checks_module = _load(PACK / "checks.py", "_test_data_prep_checks")
CHECKS = {"runs": runs_check} | {
    getattr(fn, CHECK_ATTR): fn for fn in vars(checks_module).values() if hasattr(fn, CHECK_ATTR)
}


def make_ctx(data: Path, manifest: dict) -> CheckContext:
    return CheckContext(task_dir=PACK, inputs={"raw": data / "raw", "tokenizer": TOKENIZER},
                        params={**PARAMS, "format": "chat"}, seed=GRADE_SEED, manifest=manifest)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("data-prep-data")
    manifest = generator.generate(dest, DATA_SEED, {"tokenizer": TOKENIZER})
    (dest / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return dest, json.loads((dest / "manifest.json").read_text(encoding="utf-8"))


# -- checks on garbage output ------------------------------------------------------------------

GARBAGE = {
    "not-json": ("{not json\n", "{}"),
    "wrong-types": ('[1, 2]\n"text"\n{"messages": "hi", "category": 3}\n', "[]"),
    "bad-messages": ('{"messages": [{"role": 1}, null, {"content": {"a": 1}}]}\n', '{"input": "many"}'),
    "empty": ("", '{"input": 0, "kept": 0, "train": 0, "val": 0}'),
    "missing": (None, None),
    "unhashable": ('{"messages": [{"role": ["user"], "content": "x"}, {"role": "user", "content": "hi <b>"}, '
                   '{"role": "assistant", "content": "yo"}], "category": ["billing"]}\n', '{"dropped": {}}'),
    "roles-only": ('{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": ""}]}\n',
                   '{"input": true, "kept": -1, "train": 0, "val": 0, "dropped": []}'),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_checks_fail_cleanly_on_garbage(kind: str, data: tuple[Path, dict], tmp_path: Path) -> None:
    lines, stats = GARBAGE[kind]
    runs = {}
    for variant in VARIANTS:
        out = tmp_path / variant
        out.mkdir()
        for name, text in (("train.jsonl", lines), ("val.jsonl", lines), ("stats.json", stats)):
            if text is not None:
                (out / name).write_text(text, encoding="utf-8")
        ok = ExecResult(returncode=0, duration_s=1.0, stdout_path=out / "o", stderr_path=out / "e")
        runs[variant] = RunArtifacts(name=variant, argv=[], out_dir=out, result=ok)
    ctx = make_ctx(*data)
    for cid, fn in CHECKS.items():
        if cid == "runs":
            continue  # exit codes only
        try:
            outcome = fn(Artifacts(runs=runs), ctx)
        except CandidateFault:
            continue
        assert outcome.status != "pass", f"{cid} passed garbage: {outcome.message}"


# -- data generator ----------------------------------------------------------------------------

def _tickets(dest: Path) -> list[dict]:
    return [json.loads(line) for line in (dest / "raw" / "tickets.jsonl").read_text(encoding="utf-8").splitlines()]


def test_generator_is_deterministic_and_varies_with_seed(tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", "s1"), ("b", "s1"), ("c", "s2")):
        manifest = generator.generate(tmp_path / name, seed, {"tokenizer": TOKENIZER})
        runs[name] = ((tmp_path / name / "raw" / "tickets.jsonl").read_bytes(), manifest)
    assert runs["a"] == runs["b"]
    assert runs["a"][0] != runs["c"][0]


def test_manifest_is_consistent_with_the_tickets(data: tuple[Path, dict]) -> None:
    dest, m = data
    tickets = _tickets(dest)
    by_id = {t["ticket_id"]: t for t in tickets}
    counts = m["counts"]
    assert len(by_id) == len(tickets) == counts["input"]
    assert counts["kept"] == counts["input"] - sum(counts["dropped"].values()) == sum(counts["kept_by_category"].values())
    assert counts["dropped"]["empty"] == len(m["empty"]) and counts["dropped"]["too_long"] == len(m["too_long"])
    assert counts["dropped"]["non_english"] == len(m["non_english"]) == sum(t["lang"] != "en" for t in tickets)
    groups = m["exact_dups"] + m["near_dups"]
    assert counts["dropped"]["duplicate"] == sum(len(g["ticket_ids"]) - 1 for g in groups)
    dropped_ids = [p["ticket_id"] for k in ("empty", "non_english", "too_long") for p in m[k]]
    dropped_ids += [i for g in groups for i in g["ticket_ids"] if i != g["keep"]]
    assert len(dropped_ids) == len(set(dropped_ids)), "a planted removal must have exactly one cause"
    for g in groups:
        instants = {i: datetime.fromisoformat(by_id[i]["created_at"]) for i in g["ticket_ids"]}
        assert min(instants, key=instants.get) == g["keep"]
    assert any(g["keep"] != min(g["ticket_ids"], key=list(by_id).index) for g in m["near_dups"]), "earliest must not always come first"
    assert any(g.get("after_redaction") for g in m["exact_dups"])
    first = m["near_dups"][0]["ticket_ids"]
    assert by_id[first[0]]["created_at"] > by_id[first[1]]["created_at"], "one group must sort wrongly as strings"
    langs = Counter(p["lang"] for p in m["non_english"])
    assert len(langs) >= 3 and "en" not in langs


def test_public_data_regenerates_identically(tmp_path: Path) -> None:
    manifest = generator.generate(tmp_path, "public", {"tokenizer": TOKENIZER})
    public = PACK / "public"
    assert (tmp_path / "raw" / "tickets.jsonl").read_bytes() == (public / "raw" / "tickets.jsonl").read_bytes()
    assert json.loads(json.dumps(manifest)) == json.loads((public / "manifest.json").read_text(encoding="utf-8"))


# -- task.yaml and the shared tokenizer --------------------------------------------------------

def test_task_yaml_validates_and_matches_the_checks() -> None:
    spec = load_task_spec(PACK / "task.yaml")
    assert spec.id == "data-prep" and spec.main_run == "main"
    assert [c.id for c in spec.checks] == ["runs", *[c for c in CHECKS if c != "runs"]]
    assert {r.name: r.seed_offset for r in spec.runs} == {"main": 0, "alpaca": 0, "repeat": 0, "reseed": 1}
    assert (PACK / spec.data.generator).is_file() and (PACK / spec.data.public / "raw" / "tickets.jsonl").is_file()
    assert (PACK / spec.inputs["tokenizer"].asset / "tokenizer.json").is_file()
    assert all(c.title and c.weight > 0 for c in spec.checks)


def test_tokenizer_build_is_deterministic_and_committed(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    subprocess.run([sys.executable, str(SHARED / "build_tokenizer.py"), "--out", str(out)], check=True,
                   capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    built = {p.name: p.read_bytes() for p in out.iterdir()}
    committed = {p.name: p.read_bytes() for p in TOKENIZER.iterdir()}
    assert built == committed, "rerun tasks/_shared/build_tokenizer.py and commit its output"
    assert sum(len(b) for b in built.values()) < 500_000


def test_tokenizer_chat_template() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    assert (tok.eos_token, tok.pad_token, tok.unk_token) == ("<|im_end|>", "<pad>", "<unk>")
    assert 2048 <= len(tok) <= 4096
    msgs = [{"role": "user", "content": "Where is order #482913?"}, {"role": "assistant", "content": "It ships today."}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == ("<|im_start|>user\nWhere is order #482913?<|im_end|>\n"
                    "<|im_start|>assistant\nIt ships today.<|im_end|>\n")
    with_system = tok.apply_chat_template([{"role": "system", "content": "Be kind."}, *msgs[:1]],
                                          tokenize=False, add_generation_prompt=True)
    assert with_system == "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nWhere is order #482913?<|im_end|>\n<|im_start|>assistant\n"
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    answer = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(answer) == "It ships today.<|im_end|>"
    with pytest.raises(Exception, match="system message may only come first"):
        tok.apply_chat_template([*msgs, {"role": "system", "content": "late"}], tokenize=False)
    assert tok.decode(tok("Olá, ich möchte <b>x</b> an@example.com +1 415-555-0199")["input_ids"]) == \
        "Olá, ich möchte <b>x</b> an@example.com +1 415-555-0199"
