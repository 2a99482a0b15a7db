"""Resource figures that cover every process of a run, daemons that left their parent included.

CPU time and memory come from the run's cgroup (the local backends' own, or the container's as
this host sees it), GPU memory from ``nvidia-smi``. rusage of waited-for processes, the fallback
where there is no cgroup, misses a double-forked grandchild nobody reaps and counts only the
largest single process; a cgroup sees them all.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from sandbox.cgroups import cgroup_mounts, cgroup_paths, mounted_dir
from sandbox.limits import MIB

MEMORY_POLL_S = 0.25
"""How often a run's memory is sampled: a peak shorter than this can be missed (rusage still
catches it for processes that are reaped)."""
GPU_POLL_S = 2.0
"""How often nvidia-smi is asked (each call costs tens of milliseconds of a CPU)."""
NVIDIA_SMI = ("nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
NVIDIA_SMI_TIMEOUT_S = 10.0
MEMORY_KEYS = {
    1: ("total_rss", "total_mapped_file", "total_shmem"),
    2: ("anon", "file_mapped", "shmem"),
}
"""memory.stat fields that make up what a run's processes hold (v1: the hierarchical totals).
Not usage_in_bytes, max_usage_in_bytes or memory.peak: they include page cache of files that were
merely read or written, so a run that reads a 500 MB model or writes checkpoints would look huge."""


def memory_in_use(version: int, directory: Path) -> int | None:
    """Bytes of anonymous, mapped-file and shared (tmpfs, /dev/shm) memory in the cgroup now."""
    keys = MEMORY_KEYS[version]
    try:
        text = (directory / "memory.stat").read_text()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in keys:
            total += int(value)
    return total


def cpu_usage_s(version: int, directory: Path) -> float | None:
    """User + system CPU seconds of every process that ran in the cgroup (v1 cpuacct.usage, v2 cpu.stat)."""
    try:
        if version == 1:
            return int((directory / "cpuacct.usage").read_text()) / 1e9
        for line in (directory / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    except (OSError, ValueError):
        pass
    return None


class MemoryPeak:
    """Largest :func:`memory_in_use` seen over the samples of one cgroup."""

    def __init__(self, version: int, directory: Path) -> None:
        self.version = version
        self.directory = directory
        self.peak: int | None = None

    def sample(self) -> None:
        now = memory_in_use(self.version, self.directory)
        if now is not None:
            self.peak = max(self.peak or 0, now)

    @property
    def mb(self) -> float | None:
        return None if self.peak is None else round(self.peak / MIB, 1)


def host_cgroup_dirs(pid: int, name: str) -> dict[str, tuple[int, Path]]:
    """``"memory"`` and ``"cpuacct"`` -> (version, directory on this host) of the cgroups of
    process ``pid`` whose path contains ``name`` (a container id). Empty where the process is not
    on this host or its cgroups are not mounted here (a remote engine)."""
    try:
        paths = cgroup_paths(Path(f"/proc/{pid}/cgroup").read_text()) if pid > 0 else {}
        mounts = cgroup_mounts(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return {}
    wanted = {"memory": {1: "memory.stat", 2: "memory.stat"}, "cpuacct": {1: "cpuacct.usage", 2: "cpu.stat"}}
    found: dict[str, tuple[int, Path]] = {}
    for fstype, mountpoint, root, options in mounts:
        version = 2 if fstype == "cgroup2" else 1
        for ctrl, files in wanted.items():
            path = paths.get("" if version == 2 else ctrl)
            if ctrl in found or path is None or name not in path or (version == 1 and ctrl not in options):
                continue
            directory = mounted_dir(mountpoint, root, path)
            if (directory / files[version]).exists():
                found[ctrl] = (version, directory)
    return found


def engine_figures(stats: dict) -> dict:
    """ExecResult's memory and CPU figures from docker's stats API: the cgroup's peak usage (v1 only; page cache
    included) and its CPU time."""
    figures: dict = {}
    peak = (stats.get("memory_stats") or {}).get("max_usage")
    if peak:
        figures.update(max_rss_mb=round(peak / MIB, 1), memory_source="engine")
    cpu_ns = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    if cpu_ns is not None:
        figures.update(cpu_s=round(cpu_ns / 1e9, 3), cpu_source="engine")
    return figures


def parse_compute_apps(text: str) -> dict[int, float]:
    """``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`` -> pid ->
    MiB, summed over GPUs. Lines without numbers ("[N/A]", "[Not Supported]", a message) are skipped."""
    used: dict[int, float] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        try:
            mib = float(parts[1])
        except ValueError:
            continue
        used[int(parts[0])] = used.get(int(parts[0]), 0.0) + mib
    return used


class GpuMemoryPoll:
    """Peak GPU memory summed over a run's processes, from nvidia-smi every GPU_POLL_S in a thread
    (nvidia-smi can take a second, or hang on a wedged GPU: the run's own loop never waits for it).
    ``pids``: the run's host pids at the moment of the call."""

    def __init__(self, pids: Callable[[], set[int]], interval_s: float = GPU_POLL_S) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tunegrade-gpu-poll")

    @staticmethod
    def available() -> bool:
        return shutil.which(NVIDIA_SMI[0]) is not None

    def start(self) -> GpuMemoryPoll:
        self._thread.start()
        return self

    def stop(self) -> float | None:
        """Stop polling; the peak in MiB, None if no sample was taken (a run shorter than the interval)."""
        self._stop.set()
        self._thread.join(1.0)
        return self.peak_mb

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                out = subprocess.run(NVIDIA_SMI, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S,
                                     check=False, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.SubprocessError):
                continue
            if out.returncode != 0:
                continue
            mine = self.pids()
            total = sum(mib for pid, mib in parse_compute_apps(out.stdout).items() if pid in mine)
            self.peak_mb = max(self.peak_mb or 0.0, round(total, 1))
