"""Progress of a grade as it happens: each stage, each run against its time limit with the
candidate's last log line, each check.

A grade of a model task runs for minutes; the person waiting must see where it is, and when a run
fails, why (the last lines of its stderr) without opening files. :class:`Progress` ignores every
event (``--quiet``); :class:`LineProgress` writes timestamped plain lines (CI, logs, a batch without
a terminal); :class:`LiveProgress` keeps one live line on a terminal. Candidate output is hostile:
only printable characters of it ever reach the terminal.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from sandbox.base import ExecResult
from sandbox.limits import STDERR_NAME, STDOUT_NAME

TAIL_BYTES = 8192
FAILED_RUN_LINES = 20
LOG_LINE_CHARS = 160
POLL_S = 30.0


def printable(text: str, limit: int = LOG_LINE_CHARS) -> str:
    """Candidate text made safe for a terminal: no escape sequences or control characters, one line
    (its indentation kept, so a traceback stays readable)."""
    clean = "".join(c if c.isprintable() else " " for c in text).rstrip()
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` non-empty lines of a log file, read from its end only."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = [printable(line) for line in data.replace("\r", "\n").splitlines()]
    return [line for line in lines if line.strip()][-count:]


def last_log_line(log_dir: Path) -> str:
    """The newest line of the run's stdout or stderr, whichever was written last (tqdm bars and
    tracebacks go to stderr, prints to stdout)."""
    files = [log_dir / STDOUT_NAME, log_dir / STDERR_NAME]
    present = [f for f in files if f.is_file() and f.stat().st_size]
    for path in sorted(present, key=lambda f: f.stat().st_mtime, reverse=True):
        lines = tail_lines(path, 1)
        if lines:
            return lines[0].strip()
    return ""


def run_outcome(result: ExecResult | None) -> str:
    if result is None:
        return "did not run (sandbox fault)"
    if result.timed_out:
        return f"timed out after {result.duration_s:.0f} s"
    if result.oom_killed:
        return "ran out of memory"
    if result.disk_exceeded:
        return "exceeded its disk limit"
    return f"exited with status {result.returncode}"


class Progress:
    """Receives a grade's events; this base ignores them all."""

    def stage(self, text: str) -> None:
        """A stage began: intake, inputs, reference runs, checks."""

    def run_started(self, name: str, limit_s: float, log_dir: Path) -> None:
        """A run of the candidate's code began; its stdout and stderr grow in ``log_dir``."""

    def run_finished(self, name: str, result: ExecResult | None, log_dir: Path) -> None:
        """The run ended: ``result`` None when the sandbox itself failed."""

    def check_done(self, check_id: str, status: str, message: str) -> None:
        """One check was assessed."""

    def close(self) -> None:
        """The grade is over (also after an exception)."""


class RunClock:
    """The run in progress, shared by the displays."""

    def __init__(self, name: str, limit_s: float, log_dir: Path) -> None:
        self.name, self.limit_s, self.log_dir, self.t0 = name, limit_s, log_dir, time.monotonic()

    def describe(self) -> str:
        line = last_log_line(self.log_dir)
        elapsed = time.monotonic() - self.t0
        return f"run {self.name}: {elapsed:.0f} s of {self.limit_s:.0f} s" + (f" | {line}" if line else "")


class LineProgress(Progress):
    """Timestamped plain lines, ``prefix`` first (a batch's candidate name); a running run is
    reported every ``poll_s`` seconds with its last log line."""

    def __init__(self, stream: TextIO, prefix: str = "", poll_s: float = POLL_S) -> None:
        self.stream, self.prefix, self.poll_s = stream, f"{prefix}: " if prefix else "", poll_s
        self._lock = threading.Lock()
        self._running: RunClock | None = None
        self._wake = threading.Event()
        self._poller: threading.Thread | None = None

    def _line(self, text: str) -> None:
        with self._lock:
            stamp = datetime.now().strftime("%H:%M:%S")
            self.stream.write(f"{stamp} {self.prefix}{text}\n")
            self.stream.flush()

    def stage(self, text: str) -> None:
        self._line(text)

    def run_started(self, name: str, limit_s: float, log_dir: Path) -> None:
        self._running = RunClock(name, limit_s, log_dir)
        self._line(f"run {name}: started (limit {limit_s:.0f} s)")
        self._wake.clear()
        self._poller = threading.Thread(target=self._poll, name="tunegrade-progress", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._wake.wait(self.poll_s):
            running = self._running
            if running is not None:
                self._line(running.describe())

    def _stop_poller(self) -> None:
        self._running = None
        self._wake.set()
        if self._poller is not None:
            self._poller.join()
            self._poller = None

    def run_finished(self, name: str, result: ExecResult | None, log_dir: Path) -> None:
        self._stop_poller()
        if result is not None and result.ok:
            self._line(f"run {name}: done in {result.duration_s:.1f} s")
            return
        self._line(f"run {name}: {run_outcome(result)}")
        for line in tail_lines(log_dir / STDERR_NAME, FAILED_RUN_LINES):
            self._line(f"  | {line}")

    def check_done(self, check_id: str, status: str, message: str) -> None:
        self._line(f"check {check_id}: {status}: {printable(message)}")

    def close(self) -> None:
        self._stop_poller()


class LiveProgress(LineProgress):
    """On a terminal: finished stages scroll as lines, the current one stays live below them with
    the run's elapsed time and last log line."""

    def __init__(self, console: Console) -> None:
        super().__init__(console.file)
        self.console = console
        self._current = ""
        self._live = Live(get_renderable=self._render, console=console, refresh_per_second=2, transient=True)
        self._live.start()

    def _render(self) -> Text:
        running = self._running
        return Text(running.describe() if running is not None else self._current, style="cyan", overflow="ellipsis",
                    no_wrap=True)

    def _line(self, text: str) -> None:
        self.console.print(Text(f"{datetime.now():%H:%M:%S} {self.prefix}{text}"))

    def stage(self, text: str) -> None:
        self._current = text
        super().stage(text)

    def run_started(self, name: str, limit_s: float, log_dir: Path) -> None:
        self._running = RunClock(name, limit_s, log_dir)
        self._line(f"run {name}: started (limit {limit_s:.0f} s)")

    def run_finished(self, name: str, result: ExecResult | None, log_dir: Path) -> None:
        self._running = None
        super().run_finished(name, result, log_dir)

    def close(self) -> None:
        self._running = None
        self._live.stop()


def for_console(console: Console, quiet: bool) -> Progress:
    """The display for one grade: live on a terminal, lines elsewhere, none with ``--quiet``."""
    if quiet:
        return Progress()
    if console.is_terminal:
        return LiveProgress(console)
    return LineProgress(console.file)
