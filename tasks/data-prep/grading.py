"""Parsing and normalising helpers for the data-prep checks (loaded by checks.py).

Everything here reads what a submission wrote without trusting it: malformed records are
reported or skipped, never allowed to raise anything but CandidateFault, and no file, record or
text can make a check slow (files are capped, patterns run in linear time).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grader.checks import Artifacts, CandidateFault, CheckContext, InfraFault, read_json, read_jsonl

CATEGORIES = ("billing", "shipping", "account", "technical", "returns")
SPLITS = ("train", "val")
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<pad>", "<unk>")
MANIFEST_VERSION = 2
MAX_FILE_BYTES = 4 << 20  # the reference writes about 0.2 MB per file; this bounds every scan and render
# The patterns run on the submission's text, so each takes linear time whatever it holds:
# possessive runs (``++``, ``*+``) never give back what they took, and an address may only start
# where a run of address characters starts. (``[\w.+-]+@...`` alone retries every suffix of a
# long run without "@": quadratic, an hour for 1 MB of letters.)
TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*+(?:\s[^<>]*+)?/?>")
ENTITY = re.compile(r"&(?:#\d++|#[xX][0-9a-fA-F]++|[A-Za-z][A-Za-z0-9]*+);")
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]++@[\w-]++(?:\.[\w-]++)+")
PHONE = re.compile(r"\(?\b\d{3}\)?[\s.-]?\d{3}[.-]\d{4}\b")  # bounded: a few steps per position


@dataclass(frozen=True)
class Example:
    """One chat record reduced to what the checks compare."""

    split: str
    line: int
    system: str | None
    user: str
    assistant: str
    category: Any
    messages: list[dict[str, str]]


def key(text: str) -> str:
    """The task's duplicate key: lower-cased, punctuation removed, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", "", text.lower()).split())


def pair_key(user: str, assistant: str) -> tuple[str, str]:
    return key(user), key(assistant)


def squash(text: str) -> str:
    """Text with all whitespace removed: compares cleaned text whatever a tag was replaced by."""
    return "".join(text.split())


def short(obj: Any, n: int = 120) -> str:
    """At most ``n`` characters of a value read from the submission, for a message."""
    try:
        text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    except RecursionError:  # nested deeper than the stack has room for from here
        text = f"a {type(obj).__name__} nested too deep to show"
    return text if len(text) <= n else text[: n - 1] + "…"


def manifest(ctx: CheckContext) -> dict[str, Any]:
    """The planted cases; without them (no manifest.json beside the inputs) the check cannot run."""
    m = ctx.manifest
    if not isinstance(m, dict) or m.get("version") != MANIFEST_VERSION or "counts" not in m:
        raise InfraFault(f"the data generator's manifest (version {MANIFEST_VERSION}) is missing")
    return m


def param(ctx: CheckContext, name: str, cast: type) -> Any:
    try:
        return cast(ctx.params[name])
    except (KeyError, TypeError, ValueError):
        raise InfraFault(f"parameter {name!r} is missing or invalid: {ctx.params.get(name)!r}") from None


def _bounded(path: Path) -> Path:
    if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
        raise CandidateFault(f"{path.name} is {path.stat().st_size / 2**20:.1f} MiB, over the {MAX_FILE_BYTES >> 20} MiB "
                             "the grader reads (well-formed output is far smaller)")
    return path


def _parsed(read: Any, path: Path) -> Any:
    """``read(path)`` of a capped file; JSON that Python refuses (integers over 4300 digits,
    nesting past the recursion limit) is the submission's fault, like malformed JSON."""
    try:
        return read(_bounded(path))
    except (ValueError, RecursionError) as exc:
        why = f"{type(exc).__name__}: {short(str(exc), 100)}"
        raise CandidateFault(f"{path.name}: JSON the grader cannot read ({why})") from None


def read_object(path: Path) -> Any:
    """A JSON file the submission wrote (e.g. stats.json)."""
    return _parsed(read_json, path)


def rows(artifacts: Artifacts, ctx: CheckContext, run: str) -> dict[str, list[Any]]:
    """train/val rows of one run, parsed once per grade: never more records than tickets read,
    since each record is one ticket."""
    out = artifacts.require(run)

    def load() -> dict[str, list[Any]]:
        data = {s: _parsed(read_jsonl, out / f"{s}.jsonl") for s in SPLITS}
        n, limit = sum(len(v) for v in data.values()), len(input_tickets(ctx))
        if n > limit:
            raise CandidateFault(f"train.jsonl and val.jsonl hold {n} records, more than the {limit} tickets read")
        return data

    return ctx.memo(f"data-prep:rows:{run}", load)


def chat_problem(rec: Any) -> str | None:
    """Why ``rec`` is not a valid chat record, or None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
        return "'messages' is not a list of objects"
    roles = [m.get("role") for m in msgs]
    if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
        return f"roles are {short(roles, 80)}, expected ['user', 'assistant'] with an optional leading 'system'"
    if not all(isinstance(m.get("content"), str) for m in msgs):
        return "a message content is not a string"
    if rec.get("category") not in CATEGORIES:
        return f"category {short(rec.get('category'), 40)} is not one of {', '.join(CATEGORIES)}"
    return None


def _example(split: str, line: int, rec: Any) -> Example | None:
    """Lenient reading: roles found wherever they are; None when no user/assistant text exists."""
    if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
        return None
    msgs = [m for m in rec["messages"]
            if isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)]
    by_role: dict[str, str] = {}
    for m in msgs:
        by_role.setdefault(m["role"], m["content"])
    if "user" not in by_role or "assistant" not in by_role:
        return None
    clean = [{"role": m["role"], "content": m["content"]} for m in msgs]
    return Example(split, line, by_role.get("system"), by_role["user"], by_role["assistant"], rec.get("category"), clean)


def readable(data: dict[str, list[Any]]) -> list[Example]:
    """The records of one run that have a user and an assistant message."""
    return [ex for s in SPLITS for i, rec in enumerate(data[s], 1) if (ex := _example(s, i, rec)) is not None]


def examples(artifacts: Artifacts, ctx: CheckContext) -> list[Example]:
    """The main (chat) run's records. Unreadable ones are schema-chat's concern and skipped here,
    unless they are the majority, which makes the output unusable; so is keeping under half of
    what the planted counts say should be kept (otherwise filter checks would pass vacuously)."""

    def compute() -> list[Example]:
        data = rows(artifacts, ctx, "main")
        total = sum(len(v) for v in data.values())
        found = readable(data)
        if total == 0:
            raise CandidateFault("train.jsonl and val.jsonl hold no records")
        if len(found) * 2 < total:
            raise CandidateFault(f"only {len(found)} of {total} records have a user and an assistant message")
        expected = (ctx.manifest or {}).get("counts", {}).get("kept")
        if isinstance(expected, int) and len(found) * 2 < expected:
            raise CandidateFault(f"only {len(found)} usable examples written where about {expected} should be kept: "
                                 "far too much is dropped for the other checks to mean anything")
        return found

    return ctx.memo("data-prep:examples", compute)


def pair_counts(exs: list[Example]) -> Counter[tuple[str, str]]:
    return Counter(pair_key(e.user, e.assistant) for e in exs)


def too_long_kept(exs: list[Example], m: dict[str, Any]) -> list[dict[str, Any]]:
    """The planted too-long tickets some record comes from, whole or truncated. The generator
    gives each one side (the one without filler) whose key no other ticket has, and truncating
    the long side leaves it intact, so a match on that key is exact."""
    users, replies = {key(e.user) for e in exs}, {key(e.assistant) for e in exs}
    return [p for p in m["too_long"] if key(p["user"]) in users or key(p["assistant"]) in replies]


def known_drops(exs: list[Example], m: dict[str, Any]) -> dict[str, int]:
    """How many tickets the output dropped for each reason, as far as the grader can tell.

    Each planted removal has one cause, so a planted ticket that no record comes from was dropped
    for it. A duplicate group that left k >= 1 records dropped the others as duplicates; one that
    left none was altered beyond recognition (e.g. not redacted) and is not counted. Tickets
    dropped for no reason the rules give (an over-eager filter) are not counted either.
    """
    users, pairs = {key(e.user) for e in exs}, pair_counts(exs)
    duplicate = 0
    for grp in m["exact_dups"] + m["near_dups"]:
        left = pairs[pair_key(grp["variants"][0]["user"], grp["variants"][0]["assistant"])]
        duplicate += max(0, len(grp["variants"]) - left) if left else 0
    return {"empty": sum(key(p["user"]) not in users for p in m["empty"]),
            "non_english": sum(key(p["user"]) not in users for p in m["non_english"]),
            "duplicate": duplicate,
            "too_long": len(m["too_long"]) - len(too_long_kept(exs, m))}


def tokenizer(ctx: CheckContext) -> Any:
    def load() -> Any:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(ctx.inputs["tokenizer"]))  # a known class: no remote code

    return ctx.memo("data-prep:tokenizer", load)


def render(tok: Any, messages: list[dict[str, str]]) -> tuple[int, int]:
    """(tokens, assistant tokens) of the chat-template rendering; raises if it does not render."""
    enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return len(enc["input_ids"]), sum(enc["assistant_masks"])


def renders(artifacts: Artifacts, ctx: CheckContext) -> list[tuple[Example, int, int, str | None]]:
    """Each main-run example with its token count, assistant-token count and render error."""

    def compute() -> list[tuple[Example, int, int, str | None]]:
        tok = tokenizer(ctx)
        out = []
        for ex in examples(artifacts, ctx):
            try:
                out.append((ex, *render(tok, ex.messages), None))
            except Exception as exc:  # noqa: BLE001 - any template failure is the record's fault
                out.append((ex, 0, 0, f"{type(exc).__name__}: {exc}"))
        return out

    return ctx.memo("data-prep:renders", compute)


def input_tickets(ctx: CheckContext) -> list[dict[str, Any]]:
    """The raw tickets the grader generated (trusted)."""

    def load() -> list[dict[str, Any]]:
        path = Path(ctx.inputs["raw"]) / "tickets.jsonl"
        with path.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    return ctx.memo("data-prep:input", load)


def read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise CandidateFault(f"{path.parent.name}/{path.name} was not written")
    return _bounded(path).read_bytes()


def where(ex: Example) -> str:
    return f"{ex.split}.jsonl record {ex.line}"
