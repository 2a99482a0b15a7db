"""Reading a candidate's JSON (grader/checks/base.py): whatever the file holds, the check fails; it never crashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from grader.checks.base import MAX_JSON_DEPTH, CandidateFault, parse_json, read_json, read_jsonl


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"eval_loss": ' + "1" * 5000 + "}", "m.json: an integer of 5000 digits (at most 100 are accepted)"),
        ("[" * 50_000 + "]" * 50_000, "m.json: JSON nested too deeply"),
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), f"m.json: JSON nested more than {MAX_JSON_DEPTH} levels deep"),
        ('{"a": 1', "m.json: not valid JSON (Expecting ',' delimiter: line 1 column 8 (char 7))"),
        ("", "m.json: not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    ],
)
def test_hostile_json_is_the_candidates_fault(text: str, message: str) -> None:
    with pytest.raises(CandidateFault) as exc:
        parse_json(text, "m.json")
    assert str(exc.value) == message


def test_real_tools_output_parses() -> None:
    """NaN and Infinity are what json.dumps writes for such floats (a Trainer's grad_norm can be one)."""
    value = parse_json('{"grad_norm": NaN, "x": -Infinity, "n": -12, "deep": ' + "[" * 10 + "]" * 10 + "}", "s")
    assert value["n"] == -12 and value["x"] == float("-inf") and value["grad_norm"] != value["grad_norm"]


def test_read_json_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"k": [1, 2]}')
    assert read_json(tmp_path / "a.json") == {"k": [1, 2]}
    with pytest.raises(CandidateFault, match=r"^missing\.json was not written$"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "b.json").write_bytes(b'{"k": "\xff"}')
    with pytest.raises(CandidateFault, match=r"^b\.json: not UTF-8"):
        read_json(tmp_path / "b.json")
    (tmp_path / "big.json").write_text("[" + "1," * 100 + "1]")
    with pytest.raises(CandidateFault, match=r"^big\.json: larger than 0 MiB$"):
        read_json(tmp_path / "big.json", max_bytes=100)
    (tmp_path / "r.jsonl").write_text('{"a": 1}\n\n[2]\n{"n": ' + "7" * 200 + "}\n")
    with pytest.raises(CandidateFault, match=r"^r\.jsonl line 4: an integer of 200 digits"):
        read_jsonl(tmp_path / "r.jsonl")
    (tmp_path / "u.jsonl").write_bytes(b'{"a": 1}\n\xff\n')
    with pytest.raises(CandidateFault, match=r"^u\.jsonl: not UTF-8"):
        read_jsonl(tmp_path / "u.jsonl")
