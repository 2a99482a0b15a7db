"""Helpers shared by the sandbox test modules (imported by name: tests/sandbox is on sys.path)."""

from __future__ import annotations

import functools
import os
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from sandbox import Limits, Mount, RunSpec, SandboxUnavailable, get_backend
from sandbox.cpus import SHARED_NOTE
from sandbox.local import DEFAULT_BWRAP, probe_bwrap

BACKENDS = ["local", "process", "docker"]
REQUIRE_DOCKER = "TUNEGRADE_REQUIRE_DOCKER"
DOCKER_PYTHON = "python3"
"""The image's interpreter, by name on the container's PATH (the real images' venv first)."""
DOCKER_OVERHEAD_S = 1.5
"""Slack for timing assertions: creating, filling, emptying and removing a container (about 0.6 s
on an idle 2-core host, more under load)."""


def bwrap_status() -> tuple[bool, str]:
    ok, reason, _ = probe_bwrap(DEFAULT_BWRAP)
    return ok, reason


needs_bwrap = pytest.mark.skipif(not bwrap_status()[0], reason=f"bubblewrap not usable: {bwrap_status()[1]}")


@functools.cache
def docker_status() -> tuple[bool, str]:
    """(usable, why not): an engine answers and the image ($TUNEGRADE_DOCKER_IMAGE or the built
    candidate image) is there."""
    try:
        get_backend("docker")
    except SandboxUnavailable as exc:
        return False, str(exc)
    return True, ""


def require_docker() -> None:
    """Skip the running test without a usable engine, or fail it where CI demands one."""
    ok, reason = docker_status()
    if not ok:
        if os.environ.get(REQUIRE_DOCKER) == "1":
            pytest.fail(f"{REQUIRE_DOCKER}=1 but docker is not usable: {reason}")
        pytest.skip(f"docker not usable: {reason}")


def py(code: str, *args: str) -> list[str]:
    """argv running ``code`` with the grader's interpreter; :meth:`Env.spec` swaps in the
    backend's own (the image's, for docker)."""
    return [sys.executable, "-c", textwrap.dedent(code), *args]


def file_notes(result) -> list[str]:
    """``result.notes`` but the one saying the run shared CPUs, which depends on what else runs on this host."""
    return [n for n in result.notes if not n.startswith(SHARED_NOTE)]


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
        self.python = DOCKER_PYTHON if backend_name == "docker" else sys.executable
        self.overhead_s = DOCKER_OVERHEAD_S if backend_name == "docker" else 0.0
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.logs = tmp_path / "logs"
        self.tmp = tmp_path
        self.workdir = Mount(source=self.work, target="/sandbox/work", writable=True)

    def spec(self, argv: list[str], *, mounts=(), env=None, **limits) -> RunSpec:
        base = {"wall_time_s": 30, "memory_mb": 1024}
        base.update(limits)
        if argv and argv[0] == sys.executable:
            argv = [self.python, *argv[1:]]
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
