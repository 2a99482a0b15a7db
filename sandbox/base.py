"""Backend-neutral sandbox interface: run one command in an isolated working copy.

A backend turns a :class:`RunSpec` into an :class:`ExecResult`. A command that fails,
times out or runs out of memory is a *result* (the candidate's doing); a backend that
cannot run anything raises :class:`SandboxUnavailable` (infrastructure, never the
candidate's fault).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class SandboxUnavailable(RuntimeError):
    """The backend cannot run commands here (missing tool, broken engine, setup failure)."""


class Limits(BaseModel):
    """Resource limits of one run, declared once in task.yaml and translated by each backend."""

    model_config = ConfigDict(extra="forbid")

    wall_time_s: float = Field(600, gt=0, description="Wall-clock limit; the whole process tree is killed past it.")
    memory_mb: int = Field(4096, gt=0, description="Memory limit (RAM, no swap beyond it).")
    cpus: float = Field(2, gt=0, description="CPU share; also sets the thread-count environment.")
    gpus: int = Field(0, ge=0, description="GPUs the run may use.")
    pids: int = Field(256, gt=0, description="Maximum number of processes and threads.")
    max_file_mb: int = Field(1024, gt=0, description="Largest file the run may write.")
    max_output_kb: int = Field(1024, gt=0, description="Bytes of stdout and of stderr kept, each; the rest is dropped.")
    disk_mb: int = Field(1024, gt=0, description="Total MB the run may write to its working copy and outputs.")
    network: Literal["none"] = Field("none", description="Network access; only 'none' exists.")


class Mount(BaseModel):
    """A host path made visible inside the sandbox at ``target``."""

    model_config = ConfigDict(extra="forbid")

    source: Path
    target: str = Field(description="Absolute path inside the sandbox, e.g. /sandbox/in/raw.")
    writable: bool = False


class RunSpec(BaseModel):
    """Everything a backend needs for one run. ``argv`` uses in-sandbox paths (see Sandbox.path_for)."""

    model_config = ConfigDict(extra="forbid")

    argv: list[str]
    workdir: Mount = Field(description="The working copy: writable, the command's cwd.")
    mounts: list[Mount] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment; nothing else is inherited.")
    limits: Limits = Field(default_factory=Limits)
    log_dir: Path = Field(description="Host folder receiving stdout.txt and stderr.txt.")

    def writable_mounts(self) -> list[Mount]:
        """The working copy and every writable mount: all the command may change."""
        return [self.workdir, *(m for m in self.mounts if m.writable)]


class Isolation(BaseModel):
    """What isolation actually applied: recorded in every result and shown in the report."""

    model_config = ConfigDict(extra="forbid")

    backend: str
    mechanism: str = Field(description="e.g. bubblewrap, process-group, docker")
    level: Literal["full", "reduced"]
    namespaces: list[str] = Field(default_factory=list)
    limits_enforced: list[str] = Field(default_factory=list, description="e.g. cgroup-v1:memory, rlimit:fsize")
    notes: list[str] = Field(default_factory=list, description="Plain statements of what is NOT contained.")
    image_digest: str | None = None


MeterSource = Literal["cgroup", "rusage", "engine"]
"""What measured a figure: ``cgroup`` the run's cgroup (every process of the run, daemons that left
their parent included); ``rusage`` the processes the in-sandbox supervisor reaped (a subreaper, so
all of them, but memory is the largest single process, not a sum); ``engine`` docker's stats API."""


class ExecResult(BaseModel):
    """The outcome of one run. A non-zero exit, a timeout or an OOM kill is a normal result."""

    model_config = ConfigDict(extra="forbid")

    returncode: int | None = Field(description="Exit status; negative for a signal; None if killed on timeout.")
    timed_out: bool = False
    oom_killed: bool = False
    disk_exceeded: bool = Field(
        False, description="Killed for writing more than limits.disk_mb to the working copy and outputs."
    )
    duration_s: float
    max_rss_mb: float | None = Field(None, description=(
        "Peak memory of the run. cgroup: the most the run's processes held together (anonymous + "
        "mapped-file + shared memory, sampled every 0.25 s), or the largest reaped process if more; "
        "rusage: the largest single process; engine: the container's peak usage, page cache included."))
    memory_source: MeterSource | None = None
    cpu_s: float | None = Field(None, description=(
        "CPU seconds (user + system) of every process of the run; cgroup figures include the "
        "sandbox's own supervisor (a few hundredths of a second)."))
    cpu_source: MeterSource | None = None
    pinned_cpus: list[int] = Field(default_factory=list, description=(
        "CPUs the run was held to (empty: not pinned); a note says when another run shared them."))
    gpu_s: float | None = Field(None, description="GPU-seconds: wall seconds x limits.gpus; None without GPUs.")
    gpu_memory_mb: float | None = Field(None, description=(
        "Peak GPU memory summed over the run's processes (nvidia-smi every 2 s); None where not measured."))
    stdout_path: Path
    stderr_path: Path
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    isolation: Isolation | None = Field(
        None, description="What this run actually got (limits that could not be applied are missing)."
    )
    notes: list[str] = Field(
        default_factory=list, description=("What the backend did to the run's files, e.g. an artifact link it "
                                           "refused to copy out, and CPUs it had to share with other runs.")
    )

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.oom_killed and not self.disk_exceeded


class Sandbox(ABC):
    """One isolation backend. Subclasses register themselves with :func:`sandbox.registry.register`."""

    name: ClassVar[str]

    @abstractmethod
    def isolation(self) -> Isolation:
        """Describe the isolation this backend will apply on this host."""

    @abstractmethod
    def path_for(self, mount: Mount) -> str:
        """The path under which the command sees ``mount`` (its target, or the host path if not remapped)."""

    @abstractmethod
    def run(self, spec: RunSpec) -> ExecResult:
        """Run ``spec`` to completion or timeout; always leaves no process behind.

        Raises SandboxUnavailable when the backend itself fails (not when the command does).
        """
