"""Per-run control groups (v1 or v2) for memory, process count, CPU share, CPU accounting and CPU
pinning, where this host lets us write them.

:func:`detect` finds, for each wanted controller, a hierarchy we can create children in: under our
own cgroup when possible (so the grader's own limits still apply), else at the hierarchy's root.
:class:`RunCgroup` creates one cgroup per run, sets its limits, lists and kills its processes, reads
OOM kills, and removes it (sandbox/metering.py reads its CPU time and memory). Nothing here raises
when cgroups are unusable: the run goes on with rlimits only and the reason is recorded in ``notes``.
"""

from __future__ import annotations

import errno
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.base import Limits
from sandbox.limits import MIB, PIDS_OVERHEAD

CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "cpuset")
V2_FILES = {"memory": "memory.max", "pids": "pids.max", "cpu": "cpu.max", "cpuset": "cpuset.cpus", "cpuacct": "cpu.stat"}
"""A file a v2 cgroup has when the controller is enabled for it. v2 has no cpuacct: CPU time is
the core file cpu.stat, present in every v2 cgroup."""
PREFIX = "tunegrade-"
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Hierarchy:
    version: int  # 1 or 2
    parent: Path  # where per-run cgroups are created
    controllers: tuple[str, ...]  # of CONTROLLERS, handled through this hierarchy


@dataclass
class CgroupLayout:
    hierarchies: list[Hierarchy] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def labels(self) -> list[str]:
        return [f"cgroup-v{h.version}:{c}" for h in self.hierarchies for c in h.controllers]

    def has(self, controller: str) -> bool:
        return any(controller in h.controllers for h in self.hierarchies)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _keyed(path: Path) -> dict[str, int]:
    """Parse 'key value' lines (memory.events, memory.oom_control)."""
    out = {}
    try:
        for line in _read(path).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out


def cgroup_mounts(mountinfo: str) -> list[tuple[str, Path, str, set[str]]]:
    """(fstype, mountpoint, root inside the hierarchy, super options) of cgroup mounts."""
    out = []
    for line in mountinfo.splitlines():
        pre, _, post = line.partition(" - ")
        fields, post_fields = pre.split(), post.split()
        if len(fields) < 5 or len(post_fields) < 3 or post_fields[0] not in ("cgroup", "cgroup2"):
            continue
        mountpoint = fields[4].replace("\\040", " ")
        out.append((post_fields[0], Path(mountpoint), fields[3], set(post_fields[2].split(","))))
    return out


def cgroup_paths(self_cgroup: str) -> dict[str, str]:
    """controller -> our cgroup path ('' key for the v2 unified hierarchy)."""
    out = {}
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "":
            out[""] = parts[2]
        for ctrl in parts[1].split(","):
            if ctrl:
                out[ctrl] = parts[2]
    return out


def mounted_dir(mountpoint: Path, mount_root: str, path: str) -> Path:
    """Where the cgroup ``path`` (as /proc/<pid>/cgroup names it) is under a hierarchy mounted at
    ``mountpoint`` whose root is ``mount_root``."""
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root.rstrip("/") + "/")):
        path = path[len(mount_root.rstrip("/")):]
    return mountpoint / path.lstrip("/")


def _candidates(mountpoint: Path, mount_root: str, own: str | None) -> list[Path]:
    """Our own cgroup directory first (limits nest under the grader's), then the mount's root."""
    dirs = []
    if own is not None:
        path = mounted_dir(mountpoint, mount_root, own)
        if path.is_dir():
            dirs.append(path)
    if mountpoint not in dirs:
        dirs.append(mountpoint)
    return dirs


def _try_mkdir(parent: Path) -> Path | None:
    probe = parent / f"{PREFIX}probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
    except OSError:
        return None
    return probe


def _v2_enable(parent: Path, wanted: list[str]) -> list[str]:
    """Enable ``wanted`` controllers for children of ``parent``; returns those enabled."""
    try:
        available = _read(parent / "cgroup.controllers").split()
        enabled = set(_read(parent / "cgroup.subtree_control").split())
    except OSError:
        return []
    for ctrl in wanted:
        if ctrl in available and ctrl not in enabled:
            try:
                _write(parent / "cgroup.subtree_control", f"+{ctrl}")
                enabled.add(ctrl)
            except OSError:
                pass  # EBUSY: parent holds processes (no-internal-process rule) or not delegated
    return [c for c in wanted if c in enabled]


def detect(mountinfo_path: str = "/proc/self/mountinfo", cgroup_path: str = "/proc/self/cgroup") -> CgroupLayout:
    """Find writable hierarchies for CONTROLLERS; v2 is preferred for a controller it carries."""
    layout = CgroupLayout()
    try:
        mounts = cgroup_mounts(_read(Path(mountinfo_path)))
        own = cgroup_paths(_read(Path(cgroup_path)))
    except OSError as exc:
        layout.notes.append(f"cgroups not used: cannot read {exc.filename}")
        return layout
    todo = list(CONTROLLERS)
    for fstype, mountpoint, root, _ in mounts:
        if fstype != "cgroup2" or not todo:
            continue
        for parent in _candidates(mountpoint, root, own.get("")):
            enabled = _v2_enable(parent, [c for c in todo if c != "cpuacct"])
            probe = _try_mkdir(parent) if enabled else None
            if probe is None:
                continue
            ok = [c for c in [*enabled, "cpuacct"] if c in todo and (probe / V2_FILES[c]).exists()]
            probe.rmdir()
            if ok:
                layout.hierarchies.append(Hierarchy(2, parent, tuple(ok)))
                todo = [c for c in todo if c not in ok]
                break
    for fstype, mountpoint, root, options in mounts:
        here = [c for c in todo if fstype == "cgroup" and c in options]
        if not here:
            continue
        for parent in _candidates(mountpoint, root, own.get(here[0])):
            probe = _try_mkdir(parent)
            if probe is not None:
                probe.rmdir()
                layout.hierarchies.append(Hierarchy(1, parent, tuple(here)))
                todo = [c for c in todo if c not in here]
                break
    for ctrl in todo:
        layout.notes.append(f"no writable {ctrl} cgroup (v1 or v2) on this host: {_why(ctrl)}")
    for h in layout.hierarchies:
        _remove_stale(h.parent)
    return layout


def _why(ctrl: str) -> str:
    return {
        "memory": "memory is limited by RLIMIT_DATA per process only, and measured from the rusage of reaped processes",
        "pids": "the process count is limited by RLIMIT_NPROC only (not for root)",
        "cpuacct": "CPU time is measured from the rusage of reaped processes only",
        "cpuset": "CPUs are pinned with sched_setaffinity only, which the command can undo",
    }.get(ctrl, "CPU use is limited only through the thread-count environment")


def _rmdir_quietly(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _remove_stale(parent: Path) -> None:
    """Remove per-run cgroups left by a grader that was killed (its pid is in the name)."""
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(PREFIX):].split("-", 1)[0]
        if not entry.name.startswith(PREFIX) or not pid.isdigit() or not entry.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its grader is alive (maybe another grader process): not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _kill_dir(entry, timeout=1.0)
        _rmdir_quietly(entry)


def cgroup_procs(directory: Path) -> set[int]:
    try:
        return {int(p) for p in _read(directory / "cgroup.procs").split()}
    except (OSError, ValueError):
        return set()


def _kill_dir(directory: Path, timeout: float) -> bool:
    """SIGKILL everything in ``directory`` until it is empty; True if it emptied in time."""
    kill_file = directory / "cgroup.kill"
    deadline = time.monotonic() + timeout
    while True:
        pids = cgroup_procs(directory)
        if not pids:
            return True
        if kill_file.exists():
            try:
                _write(kill_file, "1")
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


class RunCgroup:
    """One run's cgroup(s). Create, put the child in via ``procs_files`` (preexec), then kill_all/remove."""

    def __init__(self, layout: CgroupLayout, limits: Limits, name: str | None = None,
                 cpus: list[int] | None = None) -> None:
        """``cpus``: the CPUs to pin the run to (cpuset); None keeps the parent's."""
        self.name = name or f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.dirs: list[tuple[Hierarchy, Path]] = []
        self.enforced: list[str] = []
        self.notes: list[str] = []
        for h in layout.hierarchies:
            path = h.parent / self.name
            try:
                path.mkdir()
            except OSError as exc:
                self.notes.append(f"cgroup {path} not created ({exc.strerror}): {', '.join(h.controllers)} not limited")
                continue
            labels = []
            for ctrl in h.controllers:
                try:
                    self._limit(h.version, ctrl, path, limits, cpus)
                    if ctrl != "cpuset" or cpus:  # without cpus a cpuset only keeps the parent's
                        labels.append(f"cgroup-v{h.version}:{ctrl}")
                except OSError as exc:
                    self.notes.append(f"cgroup {ctrl} limit not set ({exc.strerror}): {_why(ctrl)}")
                    if h.version == 1 and ctrl == "cpuset":  # an unset v1 cpuset admits no task
                        _rmdir_quietly(path)
                        self.notes.append(f"cgroup {path} not used: {', '.join(h.controllers)} not applied")
                        break
            else:
                self.dirs.append((h, path))
                self.enforced += labels
        self.pinned = any(e.endswith(":cpuset") for e in self.enforced)
        """The cpuset holds the run to ``cpus``."""

    @staticmethod
    def _limit(version: int, ctrl: str, path: Path, limits: Limits, cpus: list[int] | None = None) -> None:
        mem = str(limits.memory_mb * MIB)
        quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
        cpu_list = ",".join(map(str, cpus)) if cpus else None
        if ctrl == "cpuacct":
            return  # accounting only: nothing to set
        if version == 1:
            if ctrl == "memory":
                _write(path / "memory.limit_in_bytes", mem)
                if (path / "memory.memsw.limit_in_bytes").exists():  # RAM+swap: no swap beyond the limit
                    _write(path / "memory.memsw.limit_in_bytes", mem)
            elif ctrl == "pids":
                _write(path / "pids.max", str(limits.pids + PIDS_OVERHEAD))
            elif ctrl == "cpu":
                _write(path / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(path / "cpu.cfs_quota_us", str(quota))
            elif ctrl == "cpuset":  # a v1 cpuset starts empty: no task may join before both are set
                _write(path / "cpuset.cpus", cpu_list or _read(path.parent / "cpuset.cpus").strip())
                _write(path / "cpuset.mems", _read(path.parent / "cpuset.mems").strip())
        else:
            if ctrl == "memory":
                _write(path / "memory.max", mem)
                for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                    if (path / name).exists():
                        _write(path / name, value)
            elif ctrl == "pids":
                _write(path / "pids.max", str(limits.pids + PIDS_OVERHEAD))
            elif ctrl == "cpu":
                _write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            elif ctrl == "cpuset" and cpu_list:
                _write(path / "cpuset.cpus", cpu_list)

    @property
    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for _, path in self.dirs]

    def dir_for(self, ctrl: str) -> tuple[int, Path] | None:
        """(cgroup version, directory) of this run for ``ctrl``; None where it does not apply."""
        for h, path in self.dirs:
            if ctrl in h.controllers and f"cgroup-v{h.version}:{ctrl}" in self.enforced:
                return h.version, path
        return None

    def pids(self) -> set[int]:
        out: set[int] = set()
        for _, path in self.dirs:
            out |= cgroup_procs(path)
        return out

    def oom_kills(self) -> int:
        found = self.dir_for("memory")
        if found is None:
            return 0
        version, path = found
        events = _keyed(path / ("memory.oom_control" if version == 1 else "memory.events"))
        return events.get("oom_kill", 0) + events.get("oom_group_kill", 0)

    def memory_limit_hit(self) -> bool:
        """v1 without an oom_kill counter: the limit was reached at least once."""
        found = self.dir_for("memory")
        if found is None or found[0] != 1:
            return False
        try:
            return int(_read(found[1] / "memory.failcnt")) > 0
        except (OSError, ValueError):
            return False

    def has_oom_counter(self) -> bool:
        found = self.dir_for("memory")
        if found is None:
            return False
        version, path = found
        return "oom_kill" in _keyed(path / ("memory.oom_control" if version == 1 else "memory.events"))

    def kill_all(self, timeout: float = 5.0) -> bool:
        ok = True
        for _, path in self.dirs:
            ok = _kill_dir(path, timeout) and ok
        return ok

    def remove(self, timeout: float = 5.0) -> bool:
        """Kill what is left and remove the cgroup(s); True when nothing is left behind."""
        self.kill_all(timeout)
        left = []
        for _, path in self.dirs:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        left.append(path)
                        break
                    _kill_dir(path, 0.1)
                    time.sleep(0.01)
        self.dirs = [(h, p) for h, p in self.dirs if p in left]
        return not left
