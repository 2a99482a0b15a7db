"""Translation of :class:`~sandbox.base.Limits` into rlimits and environment, shared by all local backends."""

from __future__ import annotations

import math
import os
import resource
import sys
from pathlib import Path

from sandbox.base import Limits, RunSpec

MIB = 1024 * 1024
NOFILE = 1024
"""RLIMIT_NOFILE for the command (the usual default soft limit)."""
DATA_FACTOR_WITH_CGROUP = 2
"""With a memory cgroup the cgroup is the real limit; RLIMIT_DATA is only a backstop at this multiple,
so that a process touching too much memory is OOM-killed (reported as such) rather than getting
ENOMEM, and large untouched reservations do not fail."""
PIDS_OVERHEAD = 4
"""Processes the backend itself puts in the run's cgroup (bwrap monitor, its init, the shim)."""
STDOUT_NAME = "stdout.txt"
STDERR_NAME = "stderr.txt"
SHIM_SOURCE = (Path(__file__).with_name("_shim.py")).read_text()
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def python_bin_dir() -> str:
    """The bin directory of the grader's interpreter (a venv's, when running in one)."""
    return os.path.dirname(os.path.abspath(sys.executable))


def thread_count(limits: Limits) -> int:
    return max(1, math.floor(limits.cpus))


def build_env(spec: RunSpec, *, home: str, python_bin: str | None = None) -> dict[str, str]:
    """The command's whole environment: nothing of the grader's is inherited. ``python_bin``: the
    interpreter's bin folder as the command sees it (default: the grader's own, for local backends)."""
    threads = str(thread_count(spec.limits))
    env = {
        "PATH": f"{python_bin or python_bin_dir()}:{SYSTEM_PATH}",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OMP_WAIT_POLICY": "PASSIVE",  # idle OpenMP threads sleep: spin-waiting collapses when cores are shared
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(spec.limits.gpus)),
    }
    env.update(spec.env)
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"RunSpec.env: invalid variable {key!r}")
    return env


def shim_argv(mode: str, status_fd: int, lifeline_fd: int, argv: list[str]) -> list[str]:
    """argv running ``argv`` under the in-sandbox supervisor (see sandbox/_shim.py)."""
    return [sys.executable, "-I", "-S", "-c", SHIM_SOURCE, mode, str(status_fd), str(lifeline_fd), "--", *argv]


def _tasks_of_uid(uid: int) -> int:
    """Tasks (threads) owned by real uid ``uid`` on this host: what RLIMIT_NPROC counts."""
    count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        real_uid = threads = None
        for line in text.splitlines():
            if line.startswith("Uid:"):
                real_uid = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        if real_uid == uid:
            count += threads or 1
    return count


def rlimits_for(limits: Limits, *, cgroup_memory: bool) -> tuple[list[tuple[int, int]], list[str], list[str]]:
    """(rlimits to set in the child, their labels for Isolation.limits_enforced, notes).

    Hard and soft limits are both set, never above the grader's own hard limit. RLIMIT_AS is
    deliberately not used: torch and CUDA reserve far more address space than they touch.
    """
    data_mb = limits.memory_mb * (DATA_FACTOR_WITH_CGROUP if cgroup_memory else 1)
    wanted: list[tuple[str, int, int]] = [
        ("core", resource.RLIMIT_CORE, 0),
        ("fsize", resource.RLIMIT_FSIZE, limits.max_file_mb * MIB),
        ("nofile", resource.RLIMIT_NOFILE, NOFILE),
        ("data", resource.RLIMIT_DATA, data_mb * MIB),
    ]
    notes: list[str] = []
    if os.getuid() == 0:
        notes.append(
            "RLIMIT_NPROC is not applied: the kernel exempts root (also root mapped into a user "
            "namespace); the process count is limited only by the pids cgroup"
        )
    else:
        wanted.append(("nproc", resource.RLIMIT_NPROC, _tasks_of_uid(os.getuid()) + limits.pids + PIDS_OVERHEAD))
    result, labels = [], []
    for label, res, value in wanted:
        _, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY and value > hard:
            value = hard
        result.append((res, value))
        labels.append(f"rlimit:{label}")
    return result, labels, notes


def make_preexec(rlimits: list[tuple[int, int]], procs_files: list[str], affinity: list[int] | None = None):
    """preexec_fn for Popen: join the run's cgroups, lower rlimits, pin to ``affinity`` (where no
    cpuset cgroup does); runs in the forked child.

    It runs before the child executes anything, so every descendant is in the cgroups, under
    the rlimits and on those CPUs. Kept to raw system calls (no allocation-heavy work) since it
    runs after fork().
    """
    files = [os.fsencode(p) for p in procs_files]
    setrlimit = resource.setrlimit
    cpus = set(affinity or ())

    def preexec() -> None:
        pid = b"%d" % os.getpid()
        for path in files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        for res, value in rlimits:
            setrlimit(res, (value, value))
        if cpus:
            os.sched_setaffinity(0, cpus)

    return preexec
