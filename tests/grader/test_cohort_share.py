"""A cohort's candidate-independent work shared between nodes (grader/cohort_share.py): what one node
made reaches another through the storage whole, is marked as taken, and is never sent back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grader import cohort_share
from grader.constants import CACHE_ENV
from grader.measurements import STORE_DIR
from grader.reference import DONE_FILE
from grader.storage import Storage


def _node(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(cache))


def test_work_made_on_one_node_is_taken_by_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Storage(str(tmp_path / "store"))
    a, b = tmp_path / "a", tmp_path / "b"
    _node(monkeypatch, a)
    before = cohort_share.local_entries()
    ref = a / "reference" / "echo-0123"
    (ref / "runs" / "main" / "out").mkdir(parents=True)
    (ref / "runs" / "main" / "out" / "echo.txt").write_text("hidden")
    (ref / DONE_FILE).write_text(json.dumps({"name": "main"}))
    (a / "reference" / "echo-4567.tmp99").mkdir()  # half-written by a grade still running: not shared
    (a / STORE_DIR).mkdir()
    (a / STORE_DIR / "k1.json").write_text("1.5")
    assert cohort_share.push(store, before) == ["measurements/k1.json", "reference/echo-0123"]
    assert cohort_share.push(store, before) == []  # the storage has them

    _node(monkeypatch, b)
    taken = cohort_share.pull(store)
    assert taken == ["reference/echo-0123", "measurements/k1.json"]
    assert (b / "reference" / "echo-0123" / "runs" / "main" / "out" / "echo.txt").read_text() == "hidden"
    assert (b / "reference" / "echo-0123" / cohort_share.FETCHED_FILE).read_text().strip() == store.url
    assert (b / STORE_DIR / "k1.json").read_text() == "1.5"
    assert not list((b / "reference").glob(".pull-*"))
    after_pull = cohort_share.local_entries()
    assert cohort_share.pull(store) == [] and cohort_share.push(store, after_pull) == []
