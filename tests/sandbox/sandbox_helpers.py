"""Helpers shared by the sandbox test modules (imported by name: tests/sandbox is on sys.path)."""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from sandbox import Limits, Mount, RunSpec, get_backend
from sandbox.local import DEFAULT_BWRAP, probe_bwrap

BACKENDS = ["local", "process"]


def bwrap_status() -> tuple[bool, str]:
    ok, reason, _ = probe_bwrap(DEFAULT_BWRAP)
    return ok, reason


needs_bwrap = pytest.mark.skipif(not bwrap_status()[0], reason=f"bubblewrap not usable: {bwrap_status()[1]}")


def py(code: str, *args: str) -> list[str]:
    """argv running ``code`` with the grader's interpreter (visible at the same path in every backend)."""
    return [sys.executable, "-c", textwrap.dedent(code), *args]


def marker() -> str:
    """A unique string to put in a child's argv, to find its processes in /proc afterwards."""
    return f"tunegrade-test-marker-{uuid.uuid4().hex}"


def processes_with(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``text``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(name))
    return found


class Env:
    """Builds RunSpecs in a fresh workdir and log dir for one backend."""

    def __init__(self, backend_name: str, tmp_path: Path, sandbox=None) -> None:
        self.name = backend_name
        self.sb = sandbox or get_backend(backend_name)
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.logs = tmp_path / "logs"
        self.tmp = tmp_path
        self.workdir = Mount(source=self.work, target="/sandbox/work", writable=True)

    def spec(self, argv: list[str], *, mounts=(), env=None, **limits) -> RunSpec:
        base = {"wall_time_s": 30, "memory_mb": 1024}
        base.update(limits)
        return RunSpec(argv=argv, workdir=self.workdir, mounts=list(mounts), env=env or {},
                       limits=Limits(**base), log_dir=self.logs)

    def run(self, argv: list[str], **kw):
        return self.sb.run(self.spec(argv, **kw))

    def out(self, result) -> str:
        return Path(result.stdout_path).read_text()

    def err(self, result) -> str:
        return Path(result.stderr_path).read_text()


def expected_failure(request, env: Env, backends: dict[str, str]) -> None:
    """Mark the running test as a known, documented failure of ``env``'s backend (strict: a pass
    means the backend improved and the table here must be updated)."""
    if env.name in backends:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{env.name}: {backends[env.name]}"))
