"""The ``local`` backend: bubblewrap namespaces around the process runner's limits.

The command runs as uid/gid 65534 with no capabilities, in new user, PID, network, IPC, UTS,
mount and cgroup namespaces. It sees a read-only /usr, a few /etc files, the grader's Python
environment read-only at its host paths, private /tmp and /dev/shm, and the RunSpec's mounts at
their targets; nothing else of the host. Where bubblewrap cannot run, the backend falls back to
the process runner and says so in :meth:`LocalSandbox.isolation` (level "reduced").
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

from sandbox._runner import Launch, TreeOutcome, has_exited, read_available
from sandbox.base import ExecResult, Isolation, Limits, Mount, RunSpec, SandboxUnavailable
from sandbox.limits import MIB, build_env, shim_argv
from sandbox.process import DISK_NOTE, ProcessSandbox, ShimStatus, Usage, check_spec, precise_returncode, rusage_of
from sandbox.registry import register

DEFAULT_BWRAP = "/usr/bin/bwrap"
SANDBOX_UID = 65534
HOSTNAME = "sandbox"
NAMESPACES = ["user", "pid", "network", "ipc", "uts", "mount", "cgroup"]
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "ssl", "ca-certificates",
             "mime.types", "protocols", "services", "os-release")
"""Host /etc entries bound read-only when present (what the dynamic loader, Python and TLS libraries read)."""
ETC_SYNTHESIZED = {
    "passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n",
    "group": "root:x:0:\nnogroup:x:65534:\n",
    "hosts": f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost {HOSTNAME}\n",
    "hostname": f"{HOSTNAME}\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
}
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
GPU_SHARED_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
PROBE_TIMEOUT_S = 30


@functools.cache
def python_paths() -> tuple[str, ...]:
    """Host paths holding the grader's interpreter and packages, bound read-only at the same paths."""
    found = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages(),
             os.path.dirname(os.path.realpath(sys.executable))]
    paths = set()
    for p in found:
        for q in (os.path.abspath(p), os.path.realpath(p)):
            if os.path.isdir(q) and q != "/" and not _under(q, "/usr"):
                paths.add(q)
    return tuple(sorted(p for p in paths if not any(p != o and _under(p, o) for o in paths)))


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _data_pipe(text: str) -> int:
    r, w = os.pipe()
    os.write(w, text.encode())
    os.close(w)
    return r


def _bwrap_argv(bwrap: str, features: frozenset[str], spec: RunSpec, data_fds: dict[str, int],
                json_fd: int, gpu_nodes: list[str], command: list[str]) -> list[str]:
    mem = str(spec.limits.memory_mb * MIB)
    a = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
         "--hostname", HOSTNAME, "--cap-drop", "ALL", "--die-with-parent", "--new-session"]
    if "--disable-userns" in features:
        a += ["--disable-userns"]
    a += ["--clearenv"]
    for key, value in build_env(spec, home="/tmp").items():
        a += ["--setenv", key, value]
    a += ["--ro-bind", "/usr", "/usr"]
    for name in ROOT_LINKS:
        host = f"/{name}"
        if os.path.islink(host):
            a += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            a += ["--ro-bind", host, host]
    a += ["--proc", "/proc", "--dev", "/dev"]
    size = ["--size", mem] if "--size" in features else []
    a += [*size, "--tmpfs", "/tmp", *size, "--tmpfs", "/dev/shm"]
    for name in ETC_FILES:
        if os.path.exists(f"/etc/{name}"):
            a += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    perms = ["--perms", "0644"] if "--perms" in features else []
    for name, fd in data_fds.items():
        a += [*perms, "--ro-bind-data", str(fd), f"/etc/{name}"]
    for path in python_paths():
        a += ["--ro-bind", path, path]
    for node in gpu_nodes:
        a += ["--dev-bind", node, node]
    mounts = sorted([spec.workdir, *spec.mounts], key=lambda m: m.target.count("/"))
    for m in mounts:
        writable = m.writable or m is spec.workdir
        a += ["--bind" if writable else "--ro-bind", str(m.source), m.target]
    a += ["--chdir", spec.workdir.target, "--remount-ro", "/dev", "--remount-ro", "/",
          "--json-status-fd", str(json_fd), "--", *command]
    return a


def _check_targets(spec: RunSpec) -> None:
    reserved = ["/usr", "/proc", "/dev", "/etc", "/tmp", *(f"/{n}" for n in ROOT_LINKS), *python_paths()]
    for m in [spec.workdir, *spec.mounts]:
        for r in reserved:
            inside_tmp = r == "/tmp" and m.target != "/tmp" and _under(m.target, "/tmp")
            if (_under(m.target, r) and not inside_tmp) or _under(r, m.target):
                raise ValueError(f"mount target {m.target!r} overlaps {r!r}, which the sandbox provides itself")


def gpu_device_nodes() -> list[Path]:
    """The host's NVIDIA GPUs, as /dev/nvidiaN nodes in index order."""
    return sorted((p for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)),
                  key=lambda p: int(p.name[6:]))


def _gpu_nodes(n: int) -> list[str]:
    if n == 0:
        return []
    nodes = gpu_device_nodes()
    if len(nodes) < n:
        raise SandboxUnavailable(f"{n} GPU(s) requested, {len(nodes)} NVIDIA device node(s) on this host")
    return [str(p) for p in nodes[:n]] + [p for p in GPU_SHARED_NODES if os.path.exists(p)]


@functools.cache
def probe_bwrap(bwrap: str) -> tuple[bool, str, frozenset[str]]:
    """(usable, reason, supported options): runs a trivial Python in a real sandbox, once per path."""
    path = shutil.which(bwrap) or bwrap
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        return False, f"bubblewrap not found at {bwrap}", frozenset()
    try:
        helptext = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{path} --help failed: {exc}", frozenset()
    features = frozenset(re.findall(r"^\s+(--[a-z-]+)", helptext, re.M))
    if "--json-status-fd" not in features:
        return False, f"{path} is too old (no --json-status-fd)", features
    with tempfile.TemporaryDirectory(prefix="tunegrade-probe-") as tmp:
        spec = RunSpec(argv=[sys.executable, "-c", "pass"], workdir=Mount(source=tmp, target="/sandbox/probe"),
                       log_dir=tmp, limits=Limits(memory_mb=512))
        fds = {name: _data_pipe(text) for name, text in ETC_SYNTHESIZED.items()}
        json_r, json_w = os.pipe()
        argv = _bwrap_argv(path, features, spec, fds, json_w, [], spec.argv)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                                  pass_fds=(*fds.values(), json_w), stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"bubblewrap failed to run: {exc}", features
        finally:
            for fd in (*fds.values(), json_w, json_r):
                os.close(fd)
    if proc.returncode != 0:
        return False, f"bubblewrap cannot create a sandbox here: {proc.stderr.strip() or proc.returncode}", features
    return True, "", features


@register("local")
class LocalSandbox(ProcessSandbox):
    """bubblewrap sandbox; the process runner (level "reduced") where bubblewrap cannot run."""

    mechanism = "bubblewrap"
    shim_mode = "pidns"

    def __init__(self, *, bwrap: str | None = None, use_cgroups: bool = True) -> None:
        super().__init__(use_cgroups=use_cgroups)
        self._bwrap = shutil.which(bwrap or DEFAULT_BWRAP) or (bwrap or DEFAULT_BWRAP)
        self.usable, self.unusable_reason, self._features = probe_bwrap(self._bwrap)
        if not self.usable:
            self.mechanism = ProcessSandbox.mechanism
            self.shim_mode = ProcessSandbox.shim_mode

    def path_for(self, mount: Mount) -> str:
        return mount.target if self.usable else super().path_for(mount)

    def run(self, spec: RunSpec) -> ExecResult:
        if self.usable:
            check_spec(spec)
            _check_targets(spec)
        return super().run(spec)

    def _launch(self, spec, preexec, shim_fds, lifeline, cgroup, cleanup) -> Launch:
        if not self.usable:
            return super()._launch(spec, preexec, shim_fds, lifeline, cgroup, cleanup)
        gpu_nodes = _gpu_nodes(spec.limits.gpus)
        json_r, json_w = os.pipe()
        cleanup.append(functools.partial(os.close, json_r))
        fds = {name: _data_pipe(text) for name, text in ETC_SYNTHESIZED.items()}
        try:
            argv = _bwrap_argv(self._bwrap, self._features, spec, fds, json_w, gpu_nodes,
                               shim_argv(self.shim_mode, *shim_fds, spec.argv))
        except BaseException:
            for fd in (json_w, *fds.values()):
                os.close(fd)
            raise

        def terminate(pid: int) -> None:
            # The shim sees EOF on its lifeline and kill(-1)s inside the PID namespace, then exits;
            # bwrap's init exits with it and the kernel kills whatever is left in the namespace.
            lifeline.close()
            if cgroup is not None:
                cgroup.kill_all(timeout=1.0)  # bwrap, its init, the shim and the command, all at once

        def kill(pid: int) -> None:
            terminate(pid)
            # Last resort (--die-with-parent then kills the namespace's init, and the kernel the rest).
            # Not earlier: a bwrap monitor killed during its setup can leave its namespace init
            # blocked forever before it runs anything (it waits for the monitor); without a
            # cgroup nothing would kill that idle process.
            if not has_exited(pid):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass

        return Launch(argv=argv, env={}, cwd="/", preexec=preexec,
                      pass_fds=(*shim_fds, json_w, *fds.values()), terminate=terminate, kill=kill,
                      close_after_spawn=[json_w, *fds.values()], extra={"json_r": json_r})

    def _interpret(self, outcome: TreeOutcome, shim: ShimStatus | None, launch: Launch,
                   spec: RunSpec) -> tuple[int, Usage]:
        if not self.usable:
            return super()._interpret(outcome, shim, launch, spec)
        status: dict = {}
        for line in read_available(launch.extra["json_r"], 0.5).decode(errors="replace").splitlines():
            try:
                status.update(json.loads(line))
            except ValueError:
                pass
        usage = rusage_of(outcome, shim)
        if "exit-code" in status:
            return precise_returncode(int(status["exit-code"]), shim), usage
        leader = os.waitstatus_to_exitcode(outcome.wait_status)
        if outcome.timed_out or leader < 0:  # killed by us, or the OOM killer picked bwrap itself
            return leader, usage
        message = Path(outcome.stderr.path).read_text(errors="replace").strip()[:2000]
        raise SandboxUnavailable(f"bubblewrap could not start the sandbox (exit {leader}): {message}")

    def _isolation(self, enforced, notes, spec=None) -> Isolation:
        if not self.usable:
            iso = super()._isolation(enforced, notes, spec)
            iso.notes.insert(0, f"bubblewrap is not usable ({self.unusable_reason}); "
                                "fell back to the process runner")
            return iso
        user = "root" if os.getuid() == 0 else f"uid {os.getuid()}"
        plain = [
            "no seccomp filter: the command can make any system call, so a host-kernel exploit is not contained",
            f"uid {SANDBOX_UID} inside is the grader's user ({user}) outside: bound paths are accessed with "
            "that user's file permissions (read-only binds cannot be written)",
            f"the grader's Python environment is visible read-only: {', '.join(python_paths())}",
            "with limits.gpus > 0 the first N /dev/nvidia* nodes are bound: GPU memory is not limited and "
            "other processes on those GPUs are not isolated",
            DISK_NOTE,
        ]
        return Isolation(backend=self.name, mechanism="bubblewrap", level="full", namespaces=list(NAMESPACES),
                         limits_enforced=[*enforced, "wall-time", "output-cap", "disk-poll",
                                          *(["tmpfs-size"] if "--size" in self._features else [])], notes=plain + list(notes))
