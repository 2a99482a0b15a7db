"""The ``process`` backend: a plain child process with limits, and no namespaces.

It is the fallback of ``local`` where bubblewrap cannot run, and a backend of its own for tests.
It contains resources (rlimits, cgroups where writable, wall time, output size) and the process
tree (a subreaper supervisor, the process group, the cgroup), but not the filesystem, the network
or other processes: see :meth:`ProcessSandbox.isolation`. Paths are host paths.
"""

from __future__ import annotations

import functools
import os
import posixpath
import shutil
import signal
import tempfile
from pathlib import Path
from typing import NamedTuple

from sandbox import cgroups, cpus
from sandbox._runner import DISK_POLL_S, DiskQuota, Launch, TreeOutcome, read_available, run_tree
from sandbox.base import ExecResult, Isolation, Limits, Mount, RunSpec, Sandbox
from sandbox.cgroups import CgroupLayout, RunCgroup
from sandbox.limits import MIB, build_env, make_preexec, rlimits_for, shim_argv
from sandbox.metering import GpuMemoryPoll, MemoryPeak, cpu_usage_s
from sandbox.registry import register

STATUS_WAIT_S = 0.5
"""Seconds to wait for the supervisor's status line once the tree is gone."""
DISK_NOTE = (f"disk_mb is measured every {DISK_POLL_S} s over the working copy and the writable mounts: "
             "a run may exceed it by what it writes in that time before it is killed")
HOME_PREFIX = "tunegrade-home-"
"""Per-run HOME/TMPDIR of the process backend: <tmp>/tunegrade-home-<grader pid>-<random>."""


@functools.cache
def cgroup_layout() -> CgroupLayout:
    """This host's usable cgroups, detected once per grader process."""
    return cgroups.detect()


@functools.cache
def remove_stale_homes() -> None:
    """Remove private HOME directories left by a grader that was killed (its pid is in the name)."""
    for path in Path(tempfile.gettempdir()).glob(f"{HOME_PREFIX}*-*"):
        pid = path.name[len(HOME_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


class ShimStatus(NamedTuple):
    """The supervisor's report (sandbox/_shim.py): the command's status and RUSAGE_CHILDREN."""

    returncode: int
    maxrss_kb: int
    cpu_s: float | None


class Usage(NamedTuple):
    """Memory and CPU time from rusage: the shim's report, else wait4's of the leader."""

    maxrss_kb: int
    cpu_s: float | None


def parse_shim_status(text: str) -> ShimStatus | None:
    """'exit N RSS CPU_US' / 'signal N RSS CPU_US' (CPU_US absent from older shims) -> ShimStatus;
    None if absent or malformed."""
    parts = text.strip().splitlines()[-1].split() if text.strip() else []
    if len(parts) not in (3, 4) or parts[0] not in ("exit", "signal") or not all(p.isdigit() for p in parts[1:]):
        return None
    code = int(parts[1])
    return ShimStatus(code if parts[0] == "exit" else -code, int(parts[2]),
                      int(parts[3]) / 1e6 if len(parts) == 4 else None)


def precise_returncode(leader_code: int, shim: ShimStatus | None) -> int:
    """The command's own return code: the shim's report when it agrees with what the leader
    (the shim itself, or bwrap) exited with; bwrap and shells turn a signal N into 128+N."""
    if shim is not None:
        code = shim.returncode
        if leader_code in (code, 128 - code if code < 0 else code):
            return code
    return leader_code


def rusage_of(outcome: TreeOutcome, shim: ShimStatus | None) -> Usage:
    """The shim's RUSAGE_CHILDREN (the run without the shim itself); failing that, wait4's rusage of
    the leader (includes the shim's ~20 MB and its start-up)."""
    if shim is not None and shim.cpu_s is not None:
        return Usage(shim.maxrss_kb, shim.cpu_s)
    return Usage(shim.maxrss_kb if shim else outcome.rusage_maxrss_kb, outcome.rusage_cpu_s)


def meter_fields(usage: Usage, memory: MemoryPeak | None, cgroup_cpu_s: float | None) -> dict:
    """ExecResult's memory and CPU figures: the cgroup's where there is one (every process of the
    run), rusage otherwise; peak memory is the larger of the sampled cgroup and the largest process."""
    rss_mb = round(usage.maxrss_kb / 1024, 1) if usage.maxrss_kb else None
    sampled = memory.mb if memory is not None else None
    cpu = cgroup_cpu_s if cgroup_cpu_s is not None else usage.cpu_s
    return {
        "max_rss_mb": max((v for v in (sampled, rss_mb) if v is not None), default=None),
        "memory_source": "cgroup" if sampled is not None else "rusage" if rss_mb else None,
        "cpu_s": None if cpu is None else round(cpu, 3),
        "cpu_source": "cgroup" if cgroup_cpu_s is not None else "rusage" if cpu is not None else None,
    }


def disk_quota(spec: RunSpec) -> DiskQuota:
    """limits.disk_mb over the working copy and the writable mounts, host folders in both local backends."""
    return DiskQuota([Path(m.source) for m in spec.writable_mounts()], spec.limits.disk_mb * MIB)


def check_spec(spec: RunSpec) -> None:
    """Reject specs no backend can honour: missing sources, relative or duplicate targets."""
    seen = set()
    for mount in [spec.workdir, *spec.mounts]:
        if not Path(mount.source).exists():
            raise ValueError(f"mount source does not exist: {mount.source}")
        target = mount.target
        if not target.startswith("/") or posixpath.normpath(target) != target or target == "/":
            raise ValueError(f"mount target must be a normalized absolute path other than '/': {target!r}")
        if target in seen:
            raise ValueError(f"two mounts share the target {target!r}")
        seen.add(target)
    log_dir = Path(spec.log_dir).resolve()
    for mount in [spec.workdir, *spec.mounts]:
        source = Path(mount.source).resolve()
        if (mount.writable or mount is spec.workdir) and (log_dir == source or source in log_dir.parents):
            raise ValueError(f"log_dir {spec.log_dir} is inside the writable mount {mount.source}: "
                             "the command could replace the logs (or plant symlinks the grader would follow)")
    if not Path(spec.workdir.source).is_dir():
        raise ValueError(f"workdir source is not a directory: {spec.workdir.source}")
    if not spec.argv:
        raise ValueError("RunSpec.argv is empty")


@register("process")
class ProcessSandbox(Sandbox):
    """Child process in its own session, under rlimits and (where writable) a per-run cgroup."""

    mechanism = "process-group"
    shim_mode = "reap"

    def __init__(self, *, use_cgroups: bool = True) -> None:
        self._layout = cgroup_layout() if use_cgroups else CgroupLayout(notes=["cgroups disabled by the caller"])
        remove_stale_homes()

    # -- interface -------------------------------------------------------------------------
    def path_for(self, mount: Mount) -> str:
        return str(mount.source)

    def isolation(self) -> Isolation:
        _, rl_labels, rl_notes = rlimits_for(Limits(), cgroup_memory=self._layout.has("memory"))
        return self._isolation(rl_labels + self._layout.labels(), rl_notes + self._layout.notes)

    def run(self, spec: RunSpec) -> ExecResult:
        check_spec(spec)
        lease = cpus.lease(cpus.wanted(spec.limits.cpus))
        status_r, status_w = os.pipe()
        life_r, life_w = os.pipe()
        lifeline = Lifeline(life_w)
        cleanup: list = [lifeline.close]
        cgroup = gpu_poll = None
        try:
            cgroup = RunCgroup(self._layout, spec.limits, cpus=lease.cpus) if self._layout.hierarchies else None
            memory_cg = cgroup is not None and any(e.endswith(":memory") for e in cgroup.enforced)
            rlimits, rl_labels, rl_notes = rlimits_for(spec.limits, cgroup_memory=memory_cg)
            affinity = None if cgroup is not None and cgroup.pinned else lease.cpus
            preexec = make_preexec(rlimits, cgroup.procs_files if cgroup else [], affinity)
            launch = self._launch(spec, preexec, (status_w, life_r), lifeline, cgroup, cleanup)
            launch.close_after_spawn += [status_w, life_r]
            status_w = life_r = -1
            memory_dir = cgroup.dir_for("memory") if cgroup else None
            memory = MemoryPeak(*memory_dir) if memory_dir else None
            if spec.limits.gpus and cgroup is not None and cgroup.dirs and GpuMemoryPoll.available():
                gpu_poll = GpuMemoryPoll(cgroup.pids).start()
            outcome = run_tree(launch, spec.log_dir, spec.limits.max_output_kb * 1024, spec.limits.wall_time_s, cgroup,
                               disk_quota(spec), memory)
            shim = parse_shim_status(read_available(status_r, STATUS_WAIT_S).decode(errors="replace"))
            returncode, usage = self._interpret(outcome, shim, launch, spec)
            oom = False
            cpu_dir = None
            if cgroup is not None:
                oom = cgroup.oom_kills() > 0 or (
                    not cgroup.has_oom_counter() and cgroup.memory_limit_hit() and returncode == -signal.SIGKILL
                )
                cpu_dir = cgroup.dir_for("cpuacct")
            enforced = rl_labels + (cgroup.enforced if cgroup else [])
            notes = rl_notes + self._layout.notes + (cgroup.notes if cgroup else [])
            if lease.note and not lease.shared:
                notes.append(lease.note)
            return ExecResult(
                returncode=None if outcome.timed_out else returncode,
                timed_out=outcome.timed_out,
                oom_killed=oom,
                disk_exceeded=outcome.disk_exceeded,
                duration_s=round(outcome.duration_s, 3),
                **meter_fields(usage, memory, cpu_usage_s(*cpu_dir) if cpu_dir else None),
                pinned_cpus=lease.cpus,
                gpu_s=round(outcome.duration_s * spec.limits.gpus, 3) if spec.limits.gpus else None,
                gpu_memory_mb=gpu_poll.stop() if gpu_poll else None,
                stdout_path=outcome.stdout.path,
                stderr_path=outcome.stderr.path,
                stdout_truncated=outcome.stdout.truncated,
                stderr_truncated=outcome.stderr.truncated,
                isolation=self._isolation(enforced, notes, spec=spec),
                notes=[lease.note] if lease.shared else [],
            )
        finally:
            for fd in (status_r, status_w, life_r):
                if fd != -1:
                    os.close(fd)
            for fn in cleanup:
                fn()
            if gpu_poll is not None:
                gpu_poll.stop()
            if cgroup is not None:
                cgroup.remove()
            lease.release()  # only now: the run's processes are gone

    # -- hooks for subclasses ----------------------------------------------------------------
    def _launch(self, spec: RunSpec, preexec, shim_fds: tuple[int, int], lifeline: Lifeline,
                cgroup: RunCgroup | None, cleanup: list) -> Launch:
        home = tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-")
        cleanup.append(functools.partial(shutil.rmtree, home, ignore_errors=True))

        def terminate(pid: int) -> None:  # the shim kills its descendants, then exits
            lifeline.close()
            _signal(pid, signal.SIGTERM)

        def kill(pid: int) -> None:
            lifeline.close()
            _killpg(pid)
            if cgroup is not None:
                cgroup.kill_all(timeout=1.0)

        return Launch(
            argv=shim_argv(self.shim_mode, *shim_fds, spec.argv),
            env=build_env(spec, home=home),
            cwd=str(spec.workdir.source),
            preexec=preexec,
            pass_fds=shim_fds,
            terminate=terminate,
            kill=kill,
        )

    def _interpret(self, outcome: TreeOutcome, shim: ShimStatus | None, launch: Launch,
                   spec: RunSpec) -> tuple[int, Usage]:
        leader = os.waitstatus_to_exitcode(outcome.wait_status)
        return precise_returncode(leader, shim), rusage_of(outcome, shim)

    def _isolation(self, enforced: list[str], notes: list[str], spec: RunSpec | None = None) -> Isolation:
        root = os.getuid() == 0
        who = "root" if root else f"uid {os.getuid()}"
        kill_note = (
            "processes that leave the process group (setsid) and kill the supervisor are still killed through the cgroup"
            if any(e.endswith(":pids") for e in enforced)
            else "a process that kills the supervisor and leaves the process group (setsid) escapes the wall-time kill"
        )
        plain = [
            f"no filesystem isolation: the command runs as the grader's user ({who}) on the host filesystem; "
            "it can read and change every file that user can, read-only mounts are not enforced, paths are host paths",
            "no network isolation: the command can reach every network the host can",
            "no process isolation: the command can see other processes and, as the same user, signal or trace them "
            "and read their environment in /proc",
            "no IPC, hostname or user-namespace isolation",
            "GPUs are hidden only through CUDA_VISIBLE_DEVICES, which the command can change",
            "/tmp and /dev/shm are the host's: files written there are neither limited nor removed after the run",
            DISK_NOTE,
            kill_note,
        ]
        if root:
            plain.append("as root the command can raise its own rlimits (CAP_SYS_RESOURCE): only cgroup limits bind it")
            plain.append("as root the command holds every capability: it can mount file systems, load BPF programs, "
                         "ptrace any process and make setuid-root files")
        return Isolation(
            backend=self.name,
            mechanism=self.mechanism,
            level="reduced",
            namespaces=[],
            limits_enforced=[*enforced, "wall-time", "output-cap", "disk-poll"],
            notes=plain + list(notes),
        )


class Lifeline:
    """Write end of the pipe the shim watches: closing it (timeout, or the grader's death) makes the
    shim kill the run. Only the grader holds it (Python fds are not inherited by other children)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd != -1:
            fd, self.fd = self.fd, -1
            os.close(fd)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
