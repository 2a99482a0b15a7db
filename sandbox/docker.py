"""The ``docker`` backend: one fresh, hardened container per run, driven through the Docker SDK.

The container's main process only idles (under docker-init, as another uid than the candidate)
and watches a lifeline: its stdin is attached by the grader, so when the grader dies the idle
process reads EOF, the container stops and everything in it dies. The candidate's command runs
via exec as a non-root uid with no capabilities, no new privileges, the default seccomp profile,
no network, a read-only root and cgroup limits. Writable mounts are size-limited tmpfs volumes
filled with ``put_archive`` after start and emptied with ``get_archive`` while the container is
frozen; read-only mounts are read-only binds (a base model is never copied).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from sandbox import cpus
from sandbox._runner import CappedSink
from sandbox.base import ExecResult, Isolation, Limits, Mount, RunSpec, Sandbox, SandboxUnavailable
from sandbox.cgroups import cgroup_procs
from sandbox.cpus import CpuLease
from sandbox.docker_archive import ChunkReader, clear_dir, extract_artifacts, pack_dir
from sandbox.docker_sweep import run_labels
from sandbox.limits import MIB, NOFILE, STDERR_NAME, STDOUT_NAME, SYSTEM_PATH, build_env
from sandbox.metering import MEMORY_POLL_S, GpuMemoryPoll, MemoryPeak, cpu_usage_s, engine_figures, host_cgroup_dirs
from sandbox.process import check_spec
from sandbox.registry import register

IMAGE_ENV = "TUNEGRADE_DOCKER_IMAGE"
SANDBOX_UID = 10001
"""The candidate's uid and gid (the images' non-root user)."""
IDLE_UID = 65534
"""The idle main process runs as another uid, so the candidate can neither signal nor trace it."""
IMAGE_PYTHON_BIN = "/opt/venv/bin"
HOME = "/tmp"
HOSTNAME = "sandbox"
IDLE_COMMAND = ["sh", "-c", "read _ignored"]
"""Returns on EOF of the attached stdin, i.e. when the grader's lifeline socket closes."""
MIN_API = (1, 41)
"""Device requests and one-shot stats."""
API_TIMEOUT_S = 120
CLIENT_POOL = 32
"""HTTP connections kept: each concurrent run holds two (exec stream, lifeline) while it runs."""
PIDS_OVERHEAD = 4
"""Processes of the container itself: docker-init, the idle shell, an exec's runtime helper."""
SHM_FRACTION = 4
"""/dev/shm is a quarter of the memory limit (it is memory, charged to the same cgroup)."""
POLL_FIRST_S, POLL_MAX_S = 0.02, 0.5
"""exec_inspect polling: fast for short commands, then backing off for long training runs."""
DRAIN_S = 0.2
"""After the command exited and the container froze, seconds to wait for the end of its output
(it ends at once unless a frozen child still holds the pipe; what the command wrote is in by then)."""
READER_JOIN_S = 5.0
NAMESPACES = ["pid", "network", "mount", "ipc", "uts"]


def default_image(gpus: str | None) -> str:
    """$TUNEGRADE_DOCKER_IMAGE, else the tag of the built candidate image (CUDA when GPUs are requested)."""
    from sandbox.images import image_tag

    return os.environ.get(IMAGE_ENV) or image_tag("cuda" if gpus else "cpu")


def device_request(gpus: str | None, count: int) -> list[docker.types.DeviceRequest]:
    """``--gpus all|N|device=ID[,ID]`` (or a bare comma-separated id list) as an engine device request.

    No GPU for a run whose limits ask for none; without ``--gpus``, as many as the limits ask for.
    """
    if count == 0:
        return []
    if gpus is None:
        return [docker.types.DeviceRequest(count=count, capabilities=[["gpu"]])]
    if gpus == "all":
        return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if gpus.isdigit():
        return [docker.types.DeviceRequest(count=int(gpus), capabilities=[["gpu"]])]
    ids = [i.strip() for i in gpus.removeprefix("device=").split(",") if i.strip()]
    return [docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]


def _check_gpus(gpus: str | None) -> None:
    if gpus is None or gpus == "all" or gpus.isdigit():
        return
    ids = gpus.removeprefix("device=").split(",")
    if not all(i.strip() and all(c.isalnum() or c in "-_" for c in i.strip()) for i in ids):
        raise ValueError(f"--gpus {gpus!r}: expected all, a count, or device=ID[,ID...]")


def container_env(spec: RunSpec) -> dict[str, str]:
    """The command's whole environment (nothing from the host): the image's Python first on PATH."""
    return build_env(spec, home=HOME, python_bin=IMAGE_PYTHON_BIN)


@dataclass
class _Run:
    """The engine objects of one run, removed in ``finally`` whatever happened."""

    run_id: str
    container: str | None = None
    volumes: list[str] = field(default_factory=list)
    lifeline: Any = None
    stream: Any = None
    reader: threading.Thread | None = None
    output_done: threading.Event = field(default_factory=threading.Event)
    lease: CpuLease = field(default_factory=CpuLease)
    cgroup_dirs: dict[str, tuple[int, Path]] = field(default_factory=dict)
    """The container's memory and cpuacct cgroups on this host (empty for a remote engine)."""
    memory: MemoryPeak | None = None
    gpu_poll: GpuMemoryPoll | None = None


@register("docker")
class DockerSandbox(Sandbox):
    """A fresh container per run from a pinned image; see the module docstring for what is applied."""

    def __init__(self, *, image: str | None = None, gpus: str | None = None) -> None:
        _check_gpus(gpus)
        self.gpus = gpus
        self.image = image or default_image(gpus)
        try:
            self.client = docker.from_env(timeout=API_TIMEOUT_S, max_pool_size=CLIENT_POOL)
            self.api = self.client.api
            version = tuple(int(p) for p in self.api.api_version.split(".")[:2])
            info = self.client.info()
        except DockerException as exc:
            raise SandboxUnavailable(f"no Docker engine answers ({exc}): install docker.io and start dockerd") from exc
        if version < MIN_API:
            raise SandboxUnavailable(f"the Docker engine speaks API {self.api.api_version}; "
                                     f"{'.'.join(map(str, MIN_API))} or newer (Engine 20.10+) is needed")
        try:
            self.image_id: str = self.api.inspect_image(self.image)["Id"]
        except ImageNotFound:
            raise SandboxUnavailable(f"image {self.image} is not in the engine: build it with "
                                     "`tunegrade sandbox build-image`") from None
        except DockerException as exc:
            raise SandboxUnavailable(f"cannot inspect image {self.image}: {exc}") from exc
        self._userns = any("userns" in opt for opt in info.get("SecurityOptions") or [])
        self._cgroup = f"cgroup-v{info.get('CgroupVersion') or '1'}"
        self._host_cpus = int(info.get("NCPU") or 1)
        self._local = self.api.base_url.startswith("http+docker://local")
        """The engine runs on this host (unix socket): CPUs are pinned from this host's allocator."""

    # -- interface -------------------------------------------------------------------------
    def path_for(self, mount: Mount) -> str:
        return mount.target

    def isolation(self) -> Isolation:
        controllers = ("memory", "memory+swap", "pids", "cpu", *(["cpuset"] if self._local else []))
        enforced = [f"{self._cgroup}:{c}" for c in controllers]
        notes = [
            ("writes to the working copy, the outputs and /tmp live in memory (tmpfs) and count against "
             "the memory limit; each writable folder is capped at disk_mb"),
            "the command shares the host's kernel (seccomp and dropped capabilities narrow what it can ask of it)",
        ]
        if not self._userns:
            notes.append(f"no user namespace: uid {SANDBOX_UID} in the container is uid {SANDBOX_UID} on the host")
        if self.gpus is not None:
            notes.append(f"GPUs given to runs that ask for them: {self.gpus}")
        if not self._local:
            notes.append("the engine is not on this host: runs are not pinned to CPUs of their own, and memory "
                         "and CPU time come from its stats API at the end of the run")
        return Isolation(
            backend=self.name,
            mechanism="docker",
            level="full",
            namespaces=NAMESPACES + (["user"] if self._userns else []),
            limits_enforced=[*enforced, "rlimit:fsize", "rlimit:nofile", "rlimit:core", "tmpfs:size",
                             "wall-time", "output-cap"],
            notes=notes,
            image_digest=self.image_id,
        )

    def run(self, spec: RunSpec) -> ExecResult:
        check_spec(spec)
        spec.log_dir.mkdir(parents=True, exist_ok=True)
        cap = spec.limits.max_output_kb * 1024
        out, err = CappedSink(spec.log_dir / STDOUT_NAME, cap), CappedSink(spec.log_dir / STDERR_NAME, cap)
        run = _Run(run_id=uuid.uuid4().hex[:16])
        if self._local:
            run.lease = cpus.lease(cpus.wanted(spec.limits.cpus))
        writable = spec.writable_mounts()
        try:
            exec_id, start = self._start(spec, run, writable, out, err)
            returncode, timed_out, end = self._wait(exec_id, run, start + spec.limits.wall_time_s)
            frozen = self._freeze(run)
            run.output_done.wait(DRAIN_S)
            oom, meters = self._meter(run, returncode)
            notes = [run.lease.note] if run.lease.shared else []
            notes += self._collect(run, writable, spec.limits) if frozen else [
                "the container stopped before its writable folders could be copied out: outputs are lost"]
            isolation = self.isolation()
            if self._local and not run.lease.cpus:
                isolation.limits_enforced.remove(f"{self._cgroup}:cpuset")
                isolation.notes.append(run.lease.note or "CPUs not pinned")
            return ExecResult(
                returncode=None if timed_out else returncode,
                timed_out=timed_out,
                oom_killed=oom,
                duration_s=round(end - start, 3),
                **meters,
                pinned_cpus=run.lease.cpus,
                gpu_s=round((end - start) * spec.limits.gpus, 3) if spec.limits.gpus else None,
                gpu_memory_mb=run.gpu_poll.stop() if run.gpu_poll else None,
                stdout_path=out.path,
                stderr_path=err.path,
                stdout_truncated=out.truncated,
                stderr_truncated=err.truncated,
                isolation=isolation,
                notes=notes,
            )
        finally:
            try:
                self._cleanup(run)
            finally:
                if run.gpu_poll is not None:
                    run.gpu_poll.stop()
                out.close()
                err.close()
                run.lease.release()  # only now: the container is gone

    # -- steps -------------------------------------------------------------------------------
    def _start(self, spec: RunSpec, run: _Run, writable: list[Mount], out: CappedSink,
               err: CappedSink) -> tuple[str, float]:
        """Create and start the container, put the writable folders in, start the command."""
        labels = run_labels(run.run_id)
        size = f"{spec.limits.disk_mb}m"
        try:
            mounts = []
            for i, m in enumerate(writable):
                name = f"tunegrade-{run.run_id}-{i}"
                self.api.create_volume(name, driver="local", labels=labels, driver_opts={
                    "type": "tmpfs", "device": "tmpfs",
                    "o": f"size={size},uid={SANDBOX_UID},gid={SANDBOX_UID},nosuid,nodev"})
                run.volumes.append(name)
                mounts.append(docker.types.Mount(m.target, name, type="volume"))
            mounts += [docker.types.Mount(m.target, str(Path(m.source).resolve()), type="bind", read_only=True)
                       for m in spec.mounts if not m.writable]
            run.container = self.api.create_container(
                self.image, command=IDLE_COMMAND, user=f"{IDLE_UID}:{IDLE_UID}", stdin_open=True,
                hostname=HOSTNAME, labels=labels, working_dir=spec.workdir.target,
                environment={"PATH": f"{IMAGE_PYTHON_BIN}:{SYSTEM_PATH}"},
                host_config=self._host_config(spec.limits, mounts, run.lease.cpus), name=f"tunegrade-{run.run_id}",
            )["Id"]
            run.lifeline = self.api.attach_socket(run.container, params={"stdin": 1, "stream": 1})
            self.api.start(run.container)
            self._watch(run, spec.limits)
            for m in writable:
                if not any(Path(m.source).iterdir()):
                    continue  # the volume is already an empty folder owned by the sandbox user
                with pack_dir(Path(m.source), SANDBOX_UID, SANDBOX_UID) as tar:
                    if not self.api.put_archive(run.container, m.target, tar):
                        raise SandboxUnavailable(f"the engine refused the files for {m.target}")
            exec_id = self.api.exec_create(
                run.container, spec.argv, stdout=True, stderr=True, stdin=False,
                user=f"{SANDBOX_UID}:{SANDBOX_UID}", workdir=spec.workdir.target, environment=container_env(spec),
            )["Id"]
            start = time.monotonic()
            run.stream = self.api.exec_start(exec_id, stream=True, demux=True)
        except DockerException as exc:
            raise SandboxUnavailable(f"docker could not set up the run: {exc}") from exc
        run.reader = threading.Thread(target=_pump, args=(run.stream, out, err, run.output_done), daemon=True,
                                      name=f"tunegrade-{run.run_id}-output")
        run.reader.start()
        return exec_id, start

    def _host_config(self, limits: Limits, mounts: list[docker.types.Mount], cpu_list: list[int]) -> dict:
        memory = f"{limits.memory_mb}m"
        ids = f"uid={SANDBOX_UID},gid={SANDBOX_UID}"
        return self.api.create_host_config(
            init=True,
            network_mode="none",  # loopback only; the engine then writes /etc/hosts (a disabled network has none)
            extra_hosts={HOSTNAME: "127.0.0.1"},  # torchrun's rendezvous and gloo resolve the hostname
            dns=["127.0.0.1"], dns_search=["."],  # /etc/resolv.conf names no resolver or domain of the host
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            ipc_mode="private",
            mem_limit=memory,
            memswap_limit=memory,
            pids_limit=limits.pids + PIDS_OVERHEAD,
            nano_cpus=int(min(limits.cpus, self._host_cpus) * 1e9),  # the engine refuses more than the host has
            cpuset_cpus=",".join(map(str, cpu_list)) or None,
            shm_size=f"{max(1, limits.memory_mb // SHM_FRACTION)}m",
            ulimits=[docker.types.Ulimit(name="nofile", soft=NOFILE, hard=NOFILE),
                     docker.types.Ulimit(name="fsize", soft=limits.max_file_mb * MIB, hard=limits.max_file_mb * MIB),
                     docker.types.Ulimit(name="core", soft=0, hard=0)],
            tmpfs={"/tmp": f"rw,exec,nosuid,nodev,size={limits.disk_mb}m,{ids}"},
            mounts=mounts,
            device_requests=device_request(self.gpus, limits.gpus),
            log_config=docker.types.LogConfig(type="none"),
        )

    def _wait(self, exec_id: str, run: _Run, deadline: float) -> tuple[int | None, bool, float]:
        """(exit code, timed out, end time): poll the exec until it exits or the wall time is up."""
        poll = POLL_FIRST_S
        while True:
            if run.memory is not None:
                run.memory.sample()  # at each poll: a run has no rusage here to catch a short peak
            try:
                info = self.api.exec_inspect(exec_id)
            except DockerException as exc:
                raise SandboxUnavailable(f"docker lost the command: {exc}") from exc
            now = time.monotonic()
            if not info["Running"] and info["ExitCode"] is not None:
                return info["ExitCode"], False, now
            if now >= deadline:
                return None, True, now
            run.output_done.wait(min(poll, deadline - now))
            poll = min(poll * 1.5, POLL_MAX_S if run.memory is None else MEMORY_POLL_S)

    def _freeze(self, run: _Run) -> bool:
        """Stop every process of the run at once (cgroup freezer); False if the container is already gone."""
        try:
            self.api.pause(run.container)
        except APIError as exc:
            if exc.status_code in (404, 409):
                return False
            raise SandboxUnavailable(f"docker could not freeze the run: {exc}") from exc
        return True

    def _watch(self, run: _Run, limits: Limits) -> None:
        """Find the container's cgroups on this host, to sample its memory while it runs and read its CPU
        time at the end (the stats API is slow, and has no peak on cgroup v2); poll its GPU memory."""
        if not self._local:
            return
        pid = self.api.inspect_container(run.container)["State"].get("Pid") or 0
        run.cgroup_dirs = host_cgroup_dirs(pid, run.container)
        if "memory" in run.cgroup_dirs:
            run.memory = MemoryPeak(*run.cgroup_dirs["memory"])
            if limits.gpus and GpuMemoryPoll.available():
                run.gpu_poll = GpuMemoryPoll(lambda: cgroup_procs(run.cgroup_dirs["memory"][1])).start()

    def _meter(self, run: _Run, returncode: int | None) -> tuple[bool, dict]:
        """(out of memory, ExecResult's memory and CPU figures), read while the container is frozen.
        137 counts as OOM even without the engine's flag: the kernel may kill a child, or the engine
        may miss the event."""
        figures: dict = {}
        try:
            state = self.api.inspect_container(run.container)["State"]
            if run.memory is not None:
                run.memory.sample()  # frozen leftovers still hold theirs
                if run.memory.mb is not None:
                    figures.update(max_rss_mb=run.memory.mb, memory_source="cgroup")
            cpu = cpu_usage_s(*run.cgroup_dirs["cpuacct"]) if "cpuacct" in run.cgroup_dirs else None
            if cpu is not None:
                figures.update(cpu_s=round(cpu, 3), cpu_source="cgroup")
            if ("max_rss_mb" not in figures or "cpu_s" not in figures) and state.get("Running"):
                figures = engine_figures(self.api.stats(run.container, stream=False, one_shot=True)) | figures
        except DockerException as exc:
            raise SandboxUnavailable(f"docker could not inspect the run: {exc}") from exc
        return bool(state.get("OOMKilled")) or returncode == 137, figures

    def _collect(self, run: _Run, writable: list[Mount], limits: Limits) -> list[str]:
        """Copy every writable folder out into its host source, replacing what was there."""
        notes: list[str] = []
        for m in writable:
            dest = Path(m.source)
            try:
                chunks, _ = self.api.get_archive(run.container, m.target)
                clear_dir(dest)
                try:
                    notes += extract_artifacts(ChunkReader(chunks), dest, max_bytes=limits.disk_mb * MIB)
                finally:
                    chunks.close()
            except DockerException as exc:
                raise SandboxUnavailable(f"docker could not copy {m.target} out: {exc}") from exc
        return notes

    def _cleanup(self, run: _Run) -> None:
        """Kill and remove the container, then its volumes, tolerating what is already gone; every
        step is tried, and the first failure is raised at the end (the sweeper removes the rest)."""
        failures: list[str] = []
        if run.container is not None:
            _tolerate(lambda: self.api.remove_container(run.container, force=True), failures)
        if run.lifeline is not None:
            run.lifeline.close()
        if run.reader is not None:
            run.reader.join(READER_JOIN_S)
        for name in run.volumes:
            _tolerate(lambda name=name: self.api.remove_volume(name, force=True), failures)
        if failures:
            raise SandboxUnavailable(f"docker could not clean up run {run.run_id}: {failures[0]}")


def _tolerate(call, failures: list[str]) -> None:
    """Run an engine call whose 404 (gone) or 409 (already being removed) means the job is done."""
    try:
        call()
    except NotFound:
        pass
    except DockerException as exc:
        if not (isinstance(exc, APIError) and exc.status_code == 409):
            failures.append(str(exc))


def _pump(stream, out: CappedSink, err: CappedSink, done: threading.Event) -> None:
    """Copy the exec's demultiplexed output into the capped sinks until the stream ends (the
    command and everything holding its output are gone, or the container was removed)."""
    try:
        for chunk_out, chunk_err in stream:
            if chunk_out:
                out.write(chunk_out)
            if chunk_err:
                err.write(chunk_err)
    except (OSError, ValueError):  # the connection closed under us: the container was removed
        pass
    finally:
        done.set()
