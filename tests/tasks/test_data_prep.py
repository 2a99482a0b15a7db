"""The data-prep task pack: its generator, the shared tokenizer, its checks on garbage and hostile
output, and the good solution checked on many hidden seeds.

The reference submissions are graded end to end in tests/tasks/test_reference_solutions.py."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from functools import cache
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
grading = checks_module.g
good = _load(PACK / "solutions" / "good" / "prepare.py", "_test_data_prep_good")
CHECKS = {"runs": runs_check} | {
    getattr(fn, CHECK_ATTR): fn for fn in vars(checks_module).values() if hasattr(fn, CHECK_ATTR)
}


def make_ctx(data: Path, manifest: dict) -> CheckContext:
    return CheckContext(task_dir=PACK, inputs={"raw": data / "raw", "tokenizer": TOKENIZER},
                        params={**PARAMS, "format": "chat"}, seed=GRADE_SEED, manifest=manifest)


def artifacts(root: Path) -> Artifacts:
    """The four runs' output folders root/<run>/, as if each run exited 0."""
    ok = ExecResult(returncode=0, duration_s=1.0, stdout_path=root / "o", stderr_path=root / "e")
    return Artifacts(runs={v: RunArtifacts(name=v, argv=[], out_dir=root / v, result=ok) for v in VARIANTS})


def run_checks(runs: Artifacts, ctx: CheckContext) -> dict[str, str]:
    """Every check but `runs` (exit codes only): {id: "status: message"} of those that do not pass.
    A CandidateFault is a fail; any other exception escapes, as it would be a grader error."""
    problems = {}
    for cid, fn in CHECKS.items():
        if cid == "runs":
            continue
        try:
            outcome = fn(runs, ctx)
        except CandidateFault as exc:
            problems[cid] = f"fail: {exc}"
            continue
        if outcome.status != "pass":
            problems[cid] = f"{outcome.status}: {outcome.message}"
    return problems


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
    for variant in VARIANTS:
        out = tmp_path / variant
        out.mkdir()
        for name, text in (("train.jsonl", lines), ("val.jsonl", lines), ("stats.json", stats)):
            if text is not None:
                (out / name).write_text(text, encoding="utf-8")
    problems = run_checks(artifacts(tmp_path), make_ctx(*data))
    assert set(problems) == set(CHECKS) - {"runs"}, f"passed garbage: {set(CHECKS) - {'runs'} - set(problems)}"


# -- checks on the good solution's output, and on copies altered to break one check ----------

@pytest.fixture(scope="module")
def good_out(data: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data-prep-good")
    write_good_outputs(data[0] / "raw", root)
    return root


def test_good_output_passes_every_check(data: tuple[Path, dict], good_out: Path) -> None:
    assert run_checks(artifacts(good_out), make_ctx(*data)) == {}


@pytest.mark.parametrize("long_side", ["user", "assistant"])
def test_length_filter_catches_a_too_long_ticket_truncated_on_its_long_side(long_side: str, data: tuple[Path, dict],
                                                                            good_out: Path, tmp_path: Path) -> None:
    ticket = max(data[1]["too_long"], key=lambda p: len(p[long_side]) - len(p["assistant" if long_side == "user" else "user"]))
    texts = {side: ticket[side][:300] if side == long_side else ticket[side] for side in ("user", "assistant")}
    shutil.copytree(good_out, tmp_path / "out")
    record = {"messages": [{"role": "user", "content": texts["user"]}, {"role": "assistant", "content": texts["assistant"]}],
              "category": "billing"}
    with (tmp_path / "out" / "main" / "train.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    problem = run_checks(artifacts(tmp_path / "out"), make_ctx(*data))["length-filter"]
    assert problem.startswith("fail") and f"too-long tickets were kept (shortened?), e.g. {ticket['ticket_id']}" in problem


def test_stats_must_give_each_drop_its_reason(data: tuple[Path, dict], good_out: Path, tmp_path: Path) -> None:
    shutil.copytree(good_out, tmp_path / "out")
    stats_path = tmp_path / "out" / "main" / "stats.json"
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    dropped = stats["dropped"]
    assert dropped == data[1]["counts"]["dropped"]
    stats["dropped"] = {r: 0 for r in dropped} | {"too_long": sum(dropped.values())}
    stats_path.write_text(json.dumps(stats), encoding="utf-8")
    problem = run_checks(artifacts(tmp_path / "out"), make_ctx(*data))["stats-accurate"]
    assert problem.startswith("fail") and f"dropped.empty is 0, but the files written show {dropped['empty']}" in problem


# -- checks on hostile output: whatever a submission writes is its fail, never a grader error ---

def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _pathological_text() -> str:
    """1 MB that once stalled the checks (letters with no "@" took the e-mail pattern an hour),
    with the other patterns' worst cases."""
    quarter = 1 << 18
    return "a" * quarter + "<a" + " " * quarter + "&#" + "1" * quarter + "x@" + "a." * (quarter // 2 - 3)


def _add_field(name: str, value: str, file: str = "train.jsonl") -> Any:
    """Damage: the first object in ``file`` gets (or overrides) a field written as raw JSON."""
    def damage(out: Path) -> None:
        lines = (out / file).read_text(encoding="utf-8").splitlines()
        first = 0 if file.endswith(".jsonl") else len(lines) - 1  # stats.json spans lines; its "}" is last
        lines[first] = lines[first].rstrip()[:-1] + f', "{name}": {value}}}'
        (out / file).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return damage


def _rewrite(file: str, make: Any) -> Any:
    """Damage: ``file`` rewritten as ``make(its text)``."""
    return lambda out: (out / file).write_text(make((out / file).read_text(encoding="utf-8")), encoding="utf-8")


def _pathological_record(text: str) -> str:
    record = {"messages": [{"role": "user", "content": _pathological_text()}, {"role": "assistant", "content": "Done."}],
              "category": "billing"}
    return json.dumps(record) + "\n" + text


HOSTILE: dict[str, tuple[str, Any]] = {  # kind: (a check that must fail, how the main run's output is damaged)
    "huge-int": ("schema-chat", _add_field("n", "1" + "0" * 5000)),
    "deep-nesting": ("schema-chat", _add_field("n", _nested(100_000), "val.jsonl")),
    "non-object-records": ("schema-chat", _rewrite("train.jsonl", lambda t: t + 'null\n[]\n"text"\n7\n')),
    "too-many-records": ("schema-chat", _rewrite("train.jsonl", lambda t: t * 3)),
    "oversized-file": ("schema-chat", _rewrite("val.jsonl", lambda t: t + " " * (grading.MAX_FILE_BYTES + 1))),
    "pathological-text": ("length-filter", _rewrite("train.jsonl", _pathological_record)),
    "stats-huge-int": ("stats-accurate", _add_field("input", "1" + "0" * 5000, "stats.json")),
    "stats-deep": ("stats-accurate", _rewrite("stats.json", lambda _: _nested(100_000))),
    "stats-not-object": ("stats-accurate", _rewrite("stats.json", lambda _: "[1, 2]")),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_output_fails_the_check_it_breaks(kind: str, data: tuple[Path, dict], good_out: Path,
                                                  tmp_path: Path) -> None:
    must_fail, damage = HOSTILE[kind]
    shutil.copytree(good_out, tmp_path / "out")
    damage(tmp_path / "out" / "main")
    start = time.perf_counter()
    problems = run_checks(artifacts(tmp_path / "out"), make_ctx(*data))  # a crash would escape here
    assert time.perf_counter() - start < 60
    assert problems.get(must_fail, "pass").startswith(("fail", "partial")), problems


def test_messages_show_any_value_read_from_a_submission() -> None:
    deep: list = []
    for _ in range(sys.getrecursionlimit()):
        deep = [deep]
    assert grading.short(deep, 40) == "a list nested too deep to show"
    assert grading.short({"a": "x" * 500}, 20) == '{"a": "xxxxxxxxxxxx…'


MB = 1 << 20
ADVERSARIAL = {  # each 1 MB
    "letters": "a" * MB,
    "address-characters": ("a.+-_" * MB)[:MB],
    "at-signs-without-dots": ("a" * 99 + "@") * (MB // 100),
    "dotted-domain": "a@" + "b." * (MB // 2 - 1),
    "open-tag": "<a" + " " * (MB - 2),
    "open-tags": ("<a " * MB)[:MB],
    "entity-digits": "&#" + "1" * (MB - 2),
    "entity-names": "&a" * (MB // 2),
    "digits": "1" * MB,
    "phone-like": ("415.555" * MB)[:MB],
}


def test_patterns_take_linear_time_on_adversarial_text() -> None:
    """Each pattern a check runs on a submission's text, on 1 MB built to make it backtrack."""
    patterns = {"TAG": grading.TAG, "ENTITY": grading.ENTITY, "EMAIL": grading.EMAIL, "PHONE": grading.PHONE}
    slow = {}
    for (pname, pattern), (kind, text) in ((p, t) for p in patterns.items() for t in ADVERSARIAL.items()):
        start = time.perf_counter()
        pattern.search(text)
        if (took := time.perf_counter() - start) >= 1.0:
            slow[f"{pname} on {kind}"] = round(took, 2)
    assert not slow


def test_email_pattern_still_finds_addresses() -> None:
    found = [m.group() for m in grading.EMAIL.finditer("mail a.b+c@mail.example.org, x@y.co or @nope.com and a@b")]
    assert found == ["a.b+c@mail.example.org", "x@y.co"]
    assert re.sub(grading.EMAIL, "[EMAIL]", "write to PRIYA_K@Example.COM.") == "write to [EMAIL]."


# -- the good solution on many hidden seeds ----------------------------------------------------

@cache
def _good_tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER))


def write_good_outputs(raw: Path, root: Path) -> None:
    """What solutions/good/prepare.py's main() writes for each run, in process: the tickets are
    filtered once, since only the split seed and the format differ between the runs."""
    tickets = [json.loads(line) for line in (raw / "tickets.jsonl").read_text(encoding="utf-8").splitlines() if line]
    kept, dropped = good.filter_tickets(tickets, _good_tokenizer(), PARAMS["max_tokens"])
    for run, fmt, offset in (("main", "chat", 0), ("alpaca", "alpaca", 0), ("repeat", "chat", 0), ("reseed", "chat", 1)):
        train, val = good.split(kept, PARAMS["val_fraction"], GRADE_SEED + offset)
        (root / run).mkdir(parents=True)
        good.write_jsonl(root / run / "train.jsonl", [good.to_record(ex, fmt) for ex in train])
        good.write_jsonl(root / run / "val.jsonl", [good.to_record(ex, fmt) for ex in val])
        stats = {"input": len(tickets), "kept": len(kept), "dropped": dropped, "train": len(train), "val": len(val)}
        (root / run / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")


def grade_good(seed: str, root: Path) -> dict[str, str]:
    """The checks that the good solution does not pass on hidden seed ``seed`` (no sandbox)."""
    manifest = generator.generate(root / "data", seed, {"tokenizer": TOKENIZER})
    (root / "data" / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    manifest = json.loads((root / "data" / "manifest.json").read_text(encoding="utf-8"))
    write_good_outputs(root / "data" / "raw", root / "out")
    return run_checks(artifacts(root / "out"), make_ctx(root / "data", manifest))


def _grade_good_in_temp(seed: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        return grade_good(seed, Path(tmp))


# Seeds on which length-filter once failed the good solution (3 of the 7 in cohort-0..499): a
# short too-long message was the start of a kept ticket's, and the check matched by prefix.
PREFIX_SEEDS = ("cohort-133", "cohort-270", "cohort-444")
SWEEP_SEEDS = [f"cohort-{i}" for i in range(300)]


@pytest.mark.parametrize("seed", PREFIX_SEEDS)
def test_good_passes_on_seeds_where_a_too_long_ticket_starts_a_kept_one(seed: str, tmp_path: Path) -> None:
    assert grade_good(seed, tmp_path) == {}
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text(encoding="utf-8"))
    users = [grading.key(json.loads(line)["messages"][1]["content"])
             for s in grading.SPLITS for line in (tmp_path / "out" / "main" / f"{s}.jsonl").read_text().splitlines()]
    assert any(u.startswith(grading.key(p["user"][:160])) for p in manifest["too_long"] for u in users), \
        "the seed no longer plants the case the old prefix match got wrong"


@pytest.mark.slow
def test_good_passes_every_check_on_many_hidden_seeds() -> None:
    """300 cohort seeds, in parallel: under 1 s of CPU each (100 s on two idle cores)."""
    fork = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=fork) as pool:
        problems = dict(zip(SWEEP_SEEDS, pool.map(_grade_good_in_temp, SWEEP_SEEDS)))
    assert {seed: p for seed, p in problems.items() if p} == {}


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
    keys = {side: Counter(generator.key(t[field] or "") for t in tickets)
            for side, field in (("user", "customer_message"), ("assistant", "agent_reply"))}
    for p in m["too_long"]:  # recognisable exactly, even truncated on its long side
        short_side = min(("user", "assistant"), key=lambda side: len(p[side]))
        assert keys[short_side][generator.key(p[short_side])] == 1, p["ticket_id"]


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
