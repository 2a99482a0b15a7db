"""A cohort's candidate-independent work, shared between the nodes of a fleet through its storage.

Reference runs (``<cache>/reference/<task>-<key>/``) and stored measurements of the base model and
the reference adapters (``<cache>/measurements/<key>.json``) are keyed by everything their value
depends on, library versions and device included. So a node may take any entry another node made
as its own: what a grade needs and finds is exactly what it would compute, and what it does not
find (another device, other versions) it computes itself. A node pulls what it lacks before a
grade and pushes what the grade made after it.
"""

from __future__ import annotations

import os
import shutil
import uuid

from grader.constants import cache_root
from grader.measurements import STORE_DIR
from grader.reference import DONE_FILE
from grader.storage import Storage

REFERENCE_DIR = "reference"
PREFIX = "cohort"
FETCHED_FILE = "fetched-from.txt"
"""Written into a reference run taken from storage: where it came from (and that it was not run here)."""


def local_entries() -> set[str]:
    """The finished entries of this node's cache, as ``<kind>/<name>``."""
    root = cache_root()
    refs = {f"{REFERENCE_DIR}/{p.name}" for p in (root / REFERENCE_DIR).glob("*") if (p / DONE_FILE).is_file()}
    measured = {f"{STORE_DIR}/{p.name}" for p in (root / STORE_DIR).glob("*.json")}
    return refs | measured


def pull(storage: Storage) -> list[str]:
    """Take every entry the storage has and this node lacks; returns those taken."""
    root, have = cache_root(), local_entries()
    taken = []
    for kind in (REFERENCE_DIR, STORE_DIR):
        for name in sorted(storage.names(f"{PREFIX}/{kind}")):
            entry = f"{kind}/{name.removesuffix('.tar')}"
            if entry in have:
                continue
            target = root / entry
            target.parent.mkdir(parents=True, exist_ok=True)
            if kind == STORE_DIR:
                tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
                tmp.write_bytes(storage.get_bytes(f"{PREFIX}/{entry}"))
                os.replace(tmp, target)
            else:
                landing = target.parent / f".pull-{uuid.uuid4().hex}"
                try:
                    tree = storage.get_tree(f"{PREFIX}/{entry}.tar", landing)
                    (tree / FETCHED_FILE).write_text(storage.url + "\n", encoding="utf-8")
                    try:
                        tree.rename(target)
                    except OSError:  # another grade on this node took it first
                        pass
                finally:
                    shutil.rmtree(landing, ignore_errors=True)
            taken.append(entry)
    return taken


def push(storage: Storage, before: set[str]) -> list[str]:
    """Give the storage the entries this node made since ``before`` (and the storage lacks)."""
    root = cache_root()
    made = sorted(local_entries() - before)
    stored = {kind: storage.names(f"{PREFIX}/{kind}") for kind in {e.split("/", 1)[0] for e in made}}
    given = []
    for entry in made:
        kind, name = entry.split("/", 1)
        if name in stored[kind] or f"{name}.tar" in stored[kind]:
            continue
        if kind == STORE_DIR:
            storage.put_file(f"{PREFIX}/{entry}", root / entry)
        else:
            storage.put_tree(f"{PREFIX}/{entry}.tar", root / entry)
        given.append(entry)
    return given
