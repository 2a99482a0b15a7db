"""Grades one hostile submission through the real pipeline and checks what it left behind.

Every case asserts three things: a clear verdict (the run failed, was killed or was capped, and
the result says so; never an `error`), containment (judged from the host side), and a clean host
afterwards (no process, container, mount or file of the run). A backend that cannot contain an
attack has a documented :class:`Gap`: the containment assertions must then fail (strict), and
the backend's isolation notes, which the report renders, must state the gap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from hostile_helpers import Listener, Observed, Watch, docker_leftovers, mounts_under, survivors, tagged_paths

from grader.constants import SCRATCH_DIR
from grader.pipeline import GradeRequest, grade
from grader.report import render_report
from grader.result import CheckRecord, Result, RunRecord
from grader.tasks import get_task
from sandbox.limits import PIDS_OVERHEAD
from sandbox.process import HOME_PREFIX

SUBMISSIONS = Path(__file__).parent / "submissions"
FIXTURE_TASK = Path(__file__).resolve().parents[1] / "fixtures" / "tasks" / "hostile"
CLEAN_VERDICTS = {"strong", "meets", "borderline", "below"}
SURVIVOR_GRACE_S = 2.0


@dataclass(frozen=True)
class Gap:
    """An attack a backend does not contain: why, and the words of its isolation note saying so."""

    reason: str
    note: str


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode())
        if p.is_file() and not p.is_symlink():
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@dataclass
class Graded:
    result: Result
    out: Path
    seen: Observed

    @property
    def run(self) -> RunRecord:
        return self.result.runs[0]

    @property
    def run_dir(self) -> Path:
        return self.out / self.run.log_dir

    def check(self, check_id: str) -> CheckRecord:
        return next(c for c in self.result.checks if c.id == check_id)

    def evidence(self) -> dict[str, Any]:
        """What the submission says it observed: its own account, for what only it can see."""
        path = self.run_dir / "out" / "evidence.json"
        return json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else {}

    def leaked(self, secret: str) -> list[str]:
        """Files of the result folder holding ``secret``."""
        found = []
        for p in self.out.rglob("*"):
            if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes():
                found.append(str(p.relative_to(self.out)))
        return found


class Harness:
    """One backend, one test: a private copy of the fixture task and a unique tag for the run."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.tmp = tmp_path
        self.tag = f"tghostile{uuid.uuid4().hex[:16]}"
        self.pack_dir = tmp_path / "tasks" / "hostile"
        self.src = tmp_path / "submission"
        self.out = tmp_path / "graded"
        self.victim: subprocess.Popen | None = None
        self.listener: Listener | None = None
        self._digests: dict[Path, str] = {}
        self._seen = Observed()
        _copy(FIXTURE_TASK, self.pack_dir)

    # -- what the attacks aim at ----------------------------------------------------------------
    def start_victim(self, secret: str) -> int:
        """A grader-side process holding ``secret`` in its environment (and a ptrace target)."""
        self.victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                       env={"TUNEGRADE_TEST_SECRET": secret})
        return self.victim.pid

    def start_listener(self) -> Listener:
        self.listener = Listener()
        self.listener.start()
        return self.listener

    def host_secret(self, text: str) -> Path:
        """A root-only host file outside every mount."""
        path = self.tmp / "host-secret.txt"
        path.write_text(text)
        path.chmod(0o600)
        return path

    # -- the grade ------------------------------------------------------------------------------
    def grade(self, case: str, **target: Any) -> Graded:
        _copy(SUBMISSIONS / case, self.src)
        self._digests = {d: tree_digest(d) for d in (self.src, self.pack_dir)}
        pack = get_task("hostile", [self.pack_dir.parent])
        pack = replace(pack, spec=pack.spec.model_copy(
            update={"params": {"tag": self.tag, "target": json.dumps(target)}}))
        watch = Watch(self.tag, self.out, self.tmp, self.victim.pid if self.victim else None)
        watch.start()
        try:
            result = grade(GradeRequest(pack=pack, source=self.src, out=self.out, backend=self.backend,
                                        allow_reduced_isolation=self.backend == "process"))
        finally:
            self._seen = watch.stop()
        g = Graded(result, self.out, self._seen)
        self._assert_clear_verdict(g)
        self._assert_no_process_left()
        return g

    def _assert_clear_verdict(self, g: Graded) -> None:
        r = g.result
        assert not r.errors and r.verdict in CLEAN_VERDICTS, f"not a clean verdict: {r.verdict}, {r.errors}"
        assert {c.status for c in r.checks} <= {"pass", "partial", "fail"}
        assert r.backend == self.backend and r.isolation.backend == self.backend

    def _assert_no_process_left(self) -> None:
        deadline = time.monotonic() + SURVIVOR_GRACE_S
        while (left := survivors(self._seen, self.tag)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"processes of the run survived it: {left}"
        assert not docker_leftovers(), f"containers or volumes left: {docker_leftovers()}"

    def assert_host_clean(self, g: Graded) -> None:
        """No file, mount or change of the run outside the result folder."""
        assert not tagged_paths(self.tag), f"files left in shared host folders: {tagged_paths(self.tag)}"
        assert not g.seen.mounts and not mounts_under(self.tmp), f"mounts appeared: {g.seen.mounts}"
        assert not (self.out / SCRATCH_DIR).exists()
        assert not list(Path(tempfile.gettempdir()).glob(f"{HOME_PREFIX}{os.getpid()}-*"))
        changed = [str(d) for d, digest in self._digests.items() if tree_digest(d) != digest]
        assert not changed, f"host folders changed by the run: {changed}"

    @contextmanager
    def contained(self, gaps: dict[str, Gap], result: Result) -> Iterator[None]:
        """Containment assertions; where this backend has a documented gap they must fail (strict)."""
        gap = gaps.get(self.backend)
        try:
            yield
        except AssertionError as exc:
            if gap is None:
                raise
            notes = " ".join(result.isolation.notes)
            assert gap.note in notes, f"the gap ({gap.reason}) is not stated in the isolation notes: {notes}"
            html = unescape(render_report(result, self.tmp / "report.html").read_text())
            assert gap.note in html, "the report does not state the gap"
            pytest.xfail(f"{self.backend}: {gap.reason} ({str(exc).splitlines()[0][:200]})")
        if gap is not None:
            pytest.fail(f"{self.backend} contained this attack, yet it is listed as a gap ({gap.reason}): "
                        "update the gap table and the backend's isolation notes")

    @property
    def limits(self):
        return get_task("hostile", [self.pack_dir.parent]).spec.limits

    def pids_cap(self) -> int:
        """Processes and threads a run may have: its pids limit plus the backend's own helpers."""
        return self.limits.pids + PIDS_OVERHEAD

    # -- afterwards -----------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Undo whatever an uncontained attack did on this machine (by pid, by tag, under tmp)."""
        for p in survivors(self._seen, self.tag):
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for path in tagged_paths(self.tag):
            subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
        for point in sorted(mounts_under(self.tmp), reverse=True):
            subprocess.run(["umount", "-l", point], check=False)
        if self.victim is not None:
            self.victim.kill()
            self.victim.wait()
        if self.listener is not None:
            self.listener.close()


def _copy(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
