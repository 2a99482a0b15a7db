"""Host-side observers for the hostile suite: what a run did, seen from outside the sandbox.

Nothing here believes the submission. Processes are found in the host's /proc by the run's tag
(in every argv of the run) and by parentage (zombies have no argv); files by the tag in their
name and by the size of the result folder; mounts in the host's mount table.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_S = 0.05
SHARED_DIRS = (Path("/tmp"), Path("/dev/shm"), Path("/var/tmp"))
"""Host folders every process may write: a run's files must not appear there."""


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str
    threads: int
    start: int
    rss_mb: float
    cmdline: bytes


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    f = stat[stat.rindex(b")") + 2:].split()
    return Proc(pid, int(f[1]), f[0].decode(), int(f[17]), int(f[19]), int(f[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20,
                cmdline)


def all_procs() -> list[Proc]:
    found = (read_proc(int(n)) for n in os.listdir("/proc") if n.isdigit())
    return [p for p in found if p is not None]


def tree_mb(root: Path) -> float:
    """Disk space used under ``root`` (allocated blocks: sparse files count what they occupy)."""
    total = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            total += st.st_blocks * 512
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
    return total / 2**20


def tagged_paths(tag: str) -> list[Path]:
    """Entries of the shared host folders named after the run's tag."""
    return [p for d in SHARED_DIRS if d.is_dir() for p in d.iterdir() if tag in p.name]


def mounts_under(root: Path) -> list[str]:
    """Mount points of the host's mount table at or below ``root``."""
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == str(root) or p.startswith(f"{root}/")]


@dataclass
class Observed:
    """Peaks seen during one grade."""

    procs: dict[int, int] = field(default_factory=dict)
    """pid -> start time of every process of the run seen (tagged, or a child of one)."""
    max_procs: int = 0
    max_threads: int = 0
    max_rss_mb: float = 0.0
    max_tree_mb: float = 0.0
    max_tagged_mb: float = 0.0
    victim_traced: bool = False
    mounts: set[str] = field(default_factory=set)


class Watch(threading.Thread):
    """Samples the host every 50 ms while a grade runs."""

    def __init__(self, tag: str, tree: Path, mount_root: Path, victim: int | None) -> None:
        super().__init__(daemon=True)
        self.tag, self.tree, self.mount_root, self.victim = tag.encode(), tree, mount_root, victim
        self.seen = Observed()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(SAMPLE_S):
            self.sample()

    def stop(self) -> Observed:
        self._stop_event.set()
        self.join()
        self.sample()
        return self.seen

    def sample(self) -> None:
        s = self.seen
        procs = all_procs()
        mine: dict[int, Proc] = {}
        grew = True
        while grew:  # a child may be listed before its parent
            grew = False
            for p in procs:
                if p.pid not in mine and (self.tag in p.cmdline or p.ppid in mine or p.ppid in s.procs):
                    mine[p.pid] = p
                    grew = True
        for p in mine.values():
            s.procs.setdefault(p.pid, p.start)
        s.max_procs = max(s.max_procs, len(mine))
        s.max_threads = max(s.max_threads, sum(p.threads for p in mine.values()))
        s.max_rss_mb = max(s.max_rss_mb, sum(p.rss_mb for p in mine.values()))
        s.max_tree_mb = max(s.max_tree_mb, tree_mb(self.tree))
        tagged = 0.0
        for path in tagged_paths(self.tag.decode()):
            try:
                tagged += path.lstat().st_blocks * 512 / 2**20
            except OSError:
                pass
        s.max_tagged_mb = max(s.max_tagged_mb, tagged)
        s.mounts.update(mounts_under(self.mount_root))
        if self.victim is not None:
            try:
                status = Path(f"/proc/{self.victim}/status").read_text()
            except OSError:
                return
            tracer = next(line.split()[1] for line in status.splitlines() if line.startswith("TracerPid:"))
            s.victim_traced |= tracer != "0"


def survivors(seen: Observed, tag: str) -> list[Proc]:
    """Processes of the run still present (zombies included), and any process carrying its tag."""
    return [p for p in all_procs() if seen.procs.get(p.pid) == p.start or tag.encode() in p.cmdline]


def docker_leftovers() -> list[str]:
    """Containers and volumes this grader process made that still exist (the backend labels them)."""
    if shutil.which("docker") is None:
        return []
    filters = ["--filter", "label=tunegrade=1", "--filter", f"label=tunegrade.pid={os.getpid()}"]
    found = []
    for cmd in (["docker", "ps", "-a", "-q"], ["docker", "volume", "ls", "-q"]):
        done = subprocess.run([*cmd, *filters], capture_output=True, text=True, timeout=30)
        if done.returncode == 0:
            found += done.stdout.split()
    return found


class Listener(threading.Thread):
    """A TCP listener on the host's 127.0.0.1 that counts who connects."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop_event.set()
        self.join()
        self.sock.close()
