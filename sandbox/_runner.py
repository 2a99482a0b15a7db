"""Spawn one sandboxed process tree, capture capped output, enforce the wall time, always clean up.

Shared by the ``local`` (bubblewrap) and ``process`` backends, which differ in the argv they
build and in how they kill a tree (:class:`Launch`).
"""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.base import SandboxUnavailable
from sandbox.cgroups import RunCgroup
from sandbox.limits import STDERR_NAME, STDOUT_NAME
from sandbox.metering import MEMORY_POLL_S, MemoryPeak

READ_CHUNK = 1 << 16
PIPE_SIZE = 1 << 20
KILL_GRACE_S = 2.0
"""After a polite stop (process backend's SIGTERM to the shim), seconds before SIGKILL of everything."""
DRAIN_GRACE_S = 2.0
"""After the command exited and its tree was killed, seconds to wait for EOF on its output pipes."""
DISK_POLL_S = 0.25
"""How often the writable folders are measured against limits.disk_mb (the overshoot is what a run
writes in this time)."""
ENTRY_BYTES = 4096
"""Charged per file or folder besides its blocks, so that millions of empty files count too."""


class CappedSink:
    """Writes the first ``cap`` bytes of a stream to ``path``; counts and drops the rest."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self.kept = 0
        self.dropped = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        self._file = os.fdopen(fd, "wb", buffering=0)  # unbuffered: progress shows the run's latest line

    def write(self, data: bytes) -> None:
        room = self.cap - self.kept
        if room > 0:
            self._file.write(data[:room])
            self.kept += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def close(self) -> None:
        self._file.close()

    @property
    def truncated(self) -> bool:
        return self.dropped > 0


@dataclass
class Launch:
    """What a backend hands to :func:`run_tree`."""

    argv: list[str]
    env: dict[str, str] | None
    cwd: str
    preexec: Callable[[], None]
    pass_fds: tuple[int, ...] = ()
    terminate: Callable[[int], None] = lambda pid: None
    """Timeout, first step: ask the tree to stop (e.g. SIGTERM to the supervisor). No-op: go straight to kill."""
    kill: Callable[[int], None] = lambda pid: None
    """SIGKILL everything of the run that the backend can reach (called with the leader's pid, unreaped)."""
    extra: dict = field(default_factory=dict)
    """Backend-specific state read back after the run (e.g. bwrap's status pipe)."""
    close_after_spawn: list[int] = field(default_factory=list)
    """Our copies of fds handed to the child (write ends of status pipes): closed once it is spawned."""


@dataclass
class DiskQuota:
    """Bytes the run may occupy under its writable host folders; measured while it runs, since
    they live on the host's disk where nothing else bounds their total."""

    paths: list[Path]
    limit_bytes: int

    def used(self) -> int:
        total = 0
        stack = [str(p) for p in self.paths]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += st.st_blocks * 512 + ENTRY_BYTES
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
        return total


@dataclass
class TreeOutcome:
    wait_status: int
    rusage_maxrss_kb: int
    """wait4's rusage of the leader (bwrap or the shim), its reaped descendants included."""
    rusage_cpu_s: float
    timed_out: bool
    duration_s: float
    stdout: CappedSink
    stderr: CappedSink
    disk_exceeded: bool = False


def has_exited(pid: int) -> bool:
    """Has ``pid`` exited? Does not reap it, so its pid (and process group id) cannot be reused yet."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def read_available(fd: int, wait_s: float) -> bytes:
    """Read ``fd`` until EOF or until nothing arrives for ``wait_s`` seconds."""
    data = b""
    os.set_blocking(fd, False)
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    try:
        while sel.select(wait_s):
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                break
            data += chunk
    finally:
        sel.close()
    return data


def run_tree(launch: Launch, log_dir: Path, cap_bytes: int, wall_time_s: float, cgroup: RunCgroup | None,
             disk: DiskQuota | None = None, memory: MemoryPeak | None = None) -> TreeOutcome:
    """Run ``launch`` to completion or timeout; a run over its ``disk`` quota is killed at once;
    ``memory`` is sampled every MEMORY_POLL_S and before the tree is killed.
    Whatever happens (also an exception in the grader, e.g. KeyboardInterrupt), the tree is killed
    and reaped before this returns or raises."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out = CappedSink(log_dir / STDOUT_NAME, cap_bytes)
    err = CappedSink(log_dir / STDERR_NAME, cap_bytes)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv built by the backend
            launch.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=launch.env,
            cwd=launch.cwd,
            pass_fds=launch.pass_fds,
            start_new_session=True,
            preexec_fn=launch.preexec,  # noqa: PLW1509 - raw syscalls only (see limits.make_preexec)
        )
    except (OSError, subprocess.SubprocessError) as exc:
        for fd in launch.close_after_spawn:
            os.close(fd)
        launch.close_after_spawn.clear()
        out.close()
        err.close()
        raise SandboxUnavailable(f"cannot start {launch.argv[0]}: {exc}") from exc
    for fd in launch.close_after_spawn:
        os.close(fd)
    launch.close_after_spawn.clear()
    pid = proc.pid
    reaped = False
    status, maxrss, cpu = 0, 0, 0.0
    timed_out = hard_killed = disk_exceeded = False
    next_disk_poll = next_memory_poll = start
    exit_at: float | None = None
    kill_at = 0.0
    pidfd: int | None = None
    sel = selectors.DefaultSelector()
    try:
        streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
        for fd in streams:
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, "stream")
        try:
            pidfd = os.pidfd_open(pid)
            sel.register(pidfd, selectors.EVENT_READ, "exit")
        except (AttributeError, OSError):
            pidfd = None
        deadline = start + wall_time_s
        while True:
            now = time.monotonic()
            if exit_at is None and has_exited(pid):
                exit_at = now
                if pidfd is not None:
                    sel.unregister(pidfd)
                if memory is not None:
                    memory.sample()  # the last sample: what the run's leftovers still hold
                launch.kill(pid)  # nothing may outlive the command (leftover daemons, held pipes)
            if exit_at is not None:
                if not streams or now - exit_at >= DRAIN_GRACE_S:
                    break
                wait = exit_at + DRAIN_GRACE_S - now
            elif not timed_out:
                if now >= deadline:
                    timed_out, kill_at = True, now
                    if memory is not None:
                        memory.sample()
                    launch.terminate(pid)
                    continue
                wait = deadline - now
                if memory is not None:
                    if now >= next_memory_poll:
                        next_memory_poll = now + MEMORY_POLL_S
                        memory.sample()
                    wait = min(wait, next_memory_poll - now)
                if disk is not None and not disk_exceeded:
                    if now >= next_disk_poll:
                        next_disk_poll = now + DISK_POLL_S
                        if disk.used() > disk.limit_bytes:
                            disk_exceeded = True
                            launch.kill(pid)  # at once: every moment more is written to the host's disk
                            continue
                    wait = min(wait, next_disk_poll - now)
            elif not hard_killed:
                if now - kill_at >= KILL_GRACE_S:
                    hard_killed = True
                    launch.kill(pid)
                    continue
                wait = kill_at + KILL_GRACE_S - now
            else:
                wait = 0.25
            if pidfd is None:
                wait = min(wait, 0.05)  # no exit notification: poll
            for key, _ in sel.select(max(0.0, wait)):
                if key.data != "stream":
                    continue
                try:
                    chunk = os.read(key.fd, READ_CHUNK)
                except BlockingIOError:
                    continue
                if chunk:
                    streams[key.fd].write(chunk)
                else:
                    sel.unregister(key.fd)
                    del streams[key.fd]
        _, status, rusage = os.wait4(pid, 0)
        reaped = True
        maxrss, cpu = rusage.ru_maxrss, rusage.ru_utime + rusage.ru_stime
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if not reaped:  # the grader failed mid-run: same order as a timeout, without the wait
            launch.terminate(pid)
            grace = time.monotonic() + KILL_GRACE_S
            while not has_exited(pid) and time.monotonic() < grace:
                time.sleep(0.01)
            launch.kill(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.wait4(pid, 0)
            proc.returncode = -9
        if cgroup is not None:
            cgroup.kill_all()
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
        proc.stdout.close()
        proc.stderr.close()
        out.close()
        err.close()
    duration = (exit_at if exit_at is not None else time.monotonic()) - start
    return TreeOutcome(status, maxrss, cpu, timed_out, duration, out, err, disk_exceeded)
