"""CPUs of its own for each run, across every grader process on this host.

Runs that share cores slow each other down unpredictably (spinning OpenMP threads, cache
thrashing), so a budget measured on an idle host stops holding once several graders run. Each run
leases ``ceil(limits.cpus)`` CPUs for its lifetime by holding ``flock`` locks on files in one
host-wide folder: ``cpu<N>.<slot>``, one slot per run using CPU N. The choice is made under
``alloc.lock``, so two graders never choose at once, and the kernel drops a dead grader's locks,
so nothing goes stale. When too few CPUs are free the run does not wait: it takes the least-used
ones and the lease says which it shares.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LOCK_DIRS = (Path("/run/tunegrade-cpus"), Path(tempfile.gettempdir()) / "tunegrade-cpus")
"""The first of these that can be used; graders of one host must agree (root graders use /run)."""
SLOT_FILE = re.compile(r"cpu(\d+)\.(\d+)")
SHARED_NOTE = "the run shares CPU(s)"
"""How the note of a lease that shares CPUs begins (it goes into ExecResult.notes)."""
MAX_SLOTS = 256
"""Slots tried per CPU: a bound, so that files planted in a shared folder cannot make a run loop."""
GUARD_WAIT_S = 5.0
"""Choosing takes microseconds; a guard held longer than this is a stuck or hostile holder, and the
run goes unpinned rather than wait."""


@dataclass
class CpuLease:
    """CPUs held for one run; ``release`` (or the grader's death) frees them."""

    cpus: list[int] = field(default_factory=list)
    shared: list[int] = field(default_factory=list)
    """Of ``cpus``, those another run was using when this lease was taken."""
    note: str | None = None
    """Why nothing was pinned, or which CPUs are shared."""
    _fds: list[int] = field(default_factory=list, repr=False)

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)


def wanted(cpus: float) -> int:
    """CPUs a run with ``limits.cpus`` gets: whole CPUs, so that a 0.5 share still has one of its own."""
    return max(1, math.ceil(cpus))


def _lock_dir() -> Path | None:
    for directory in LOCK_DIRS:
        try:
            directory.mkdir(mode=0o1777, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK | os.X_OK):
            return directory
    return None


def _open(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
    try:
        os.fchmod(fd, 0o666)  # graders of other users lock the same files
    except OSError:
        pass
    return fd


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _held_slots(directory: Path) -> dict[int, set[int]]:
    """CPU -> slots some run holds now (a slot we can lock is free; we let go of it at once). A
    slot file we cannot open (a symlink or another user's file) is not counted and never used."""
    held: dict[int, set[int]] = {}
    for entry in os.scandir(directory):
        match = SLOT_FILE.fullmatch(entry.name)
        if match is None:
            continue
        try:
            fd = _open(Path(entry.path))
        except OSError:
            continue
        try:
            if not _try_lock(fd):
                held.setdefault(int(match[1]), set()).add(int(match[2]))
        finally:
            os.close(fd)  # closing drops a probe's lock
    return held


def _take_slot(directory: Path, cpu: int, held: set[int]) -> int:
    """An fd holding the lowest free slot of ``cpu``."""
    for slot in range(MAX_SLOTS):
        if slot in held:
            continue
        try:
            fd = _open(directory / f"cpu{cpu}.{slot}")
        except OSError:
            continue
        if _try_lock(fd):
            return fd
        os.close(fd)
    raise OSError(f"no usable lock file for CPU {cpu} among {MAX_SLOTS} slots")


def lease(count: int, allowed: set[int] | None = None) -> CpuLease:
    """Hold ``count`` CPUs of ``allowed`` (default: the CPUs this process may run on), free ones
    first, then the least used; waits only while another grader chooses (at most GUARD_WAIT_S)."""
    pool = sorted(allowed if allowed is not None else os.sched_getaffinity(0))
    count = min(count, len(pool))
    directory = _lock_dir()
    if directory is None or count == 0:
        return CpuLease(note=f"CPUs not pinned: none of {', '.join(map(str, LOCK_DIRS))} is writable")
    result = CpuLease()
    try:
        _choose(directory, pool, count, result)
    except OSError as exc:  # e.g. another user's alloc.lock
        result.release()
        return CpuLease(note=f"CPUs not pinned: {directory}: {exc}")
    except BaseException:
        result.release()
        raise
    if result.shared:
        result.note = (f"{SHARED_NOTE} {','.join(map(str, result.shared))} with other runs on this host: "
                       f"fewer than {count} of {len(pool)} CPUs were free, so its timing depends on their load")
    return result


def _choose(directory: Path, pool: list[int], count: int, result: CpuLease) -> None:
    guard = _open(directory / "alloc.lock")
    try:
        deadline = time.monotonic() + GUARD_WAIT_S
        while not _try_lock(guard):
            if time.monotonic() > deadline:
                raise OSError(f"alloc.lock held for over {GUARD_WAIT_S} s")
            time.sleep(0.005)
        held = _held_slots(directory)
        chosen = sorted(pool, key=lambda cpu: (len(held.get(cpu, ())), cpu))[:count]
        for cpu in sorted(chosen):
            result._fds.append(_take_slot(directory, cpu, held.get(cpu, set())))
            result.cpus.append(cpu)
            if held.get(cpu):
                result.shared.append(cpu)
    finally:
        os.close(guard)
