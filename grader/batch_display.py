"""What `tunegrade batch` shows while it runs: done / running / failed / ETA, and each running
candidate's stage, live on a terminal and as timestamped lines elsewhere."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as Bar
from rich.table import Table
from rich.text import Text

from grader.batch import BatchEvents, Entry
from grader.batch_store import GradeRow
from grader.progress import LineProgress, Progress, RunClock, printable
from sandbox.base import ExecResult


def _failed(row: GradeRow) -> bool:
    return row.status != "graded"


class _Tracked(Progress):
    """One running grade's current stage, for the live table."""

    def __init__(self) -> None:
        self.current = "starting"
        self._running: RunClock | None = None

    def stage(self, text: str) -> None:
        self.current = text

    def run_started(self, name: str, limit_s: float, log_dir: Path) -> None:
        self._running = RunClock(name, limit_s, log_dir)

    def run_finished(self, name: str, result: ExecResult | None, log_dir: Path) -> None:
        self._running = None

    def check_done(self, check_id: str, status: str, message: str) -> None:
        self.current = f"checks: {check_id} {status}"

    def describe(self) -> str:
        running = self._running
        return running.describe() if running is not None else self.current


class LiveBatch(BatchEvents):
    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Bar(TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[failed]} failed, {task.fields[running]} running"),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)
        self.running: dict[str, _Tracked] = {}
        self.failed = 0
        self._lock = threading.Lock()
        self._live = Live(get_renderable=self._render, console=console, refresh_per_second=2)

    def _render(self) -> Group:
        table = Table(show_header=False, show_edge=False, pad_edge=False, box=None)
        with self._lock:
            running = list(self.running.items())
        for name, tracked in running:
            table.add_row(name, Text(printable(tracked.describe(), 120), no_wrap=True, overflow="ellipsis"))
        return Group(self.bar, table)

    def begin(self, total: int, skipped: int) -> None:
        if skipped:
            self.console.print(f"{skipped} submission(s) already graded in this folder: not graded again "
                               "(--regrade grades them again)")
        self.task = self.bar.add_task("batch", total=total, failed=0, running=0)
        self._live.start()

    def grade_progress(self, entry: Entry) -> Progress:
        tracked = _Tracked()
        with self._lock:
            self.running[entry.name] = tracked
            self.bar.update(self.task, running=len(self.running))
        return tracked

    def finished(self, row: GradeRow) -> None:
        with self._lock:
            self.running.pop(row.candidate, None)
            self.failed += _failed(row)
            self.bar.update(self.task, advance=1, failed=self.failed, running=len(self.running))
        colour = "red" if _failed(row) else "green"
        self.console.print(Text.assemble((f"{row.candidate}: ", "bold"), (row.status, colour),
                                         f" {printable(row.message or '', 200)} ({row.seconds or 0:.0f} s)"))

    def close(self) -> None:
        self._live.stop()


class LineBatch(BatchEvents):
    """Plain lines: each grade's stages prefixed with the candidate's name, and a tally per grade."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.stream, self.quiet = console.file, quiet
        self.total = self.done = self.failed = 0
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self._lock:
            self.stream.write(f"{datetime.now():%H:%M:%S} {text}\n")
            self.stream.flush()

    def begin(self, total: int, skipped: int) -> None:
        self.total = total
        self._line(f"batch: {total} to grade, {skipped} already graded")

    def grade_progress(self, entry: Entry) -> Progress:
        return Progress() if self.quiet else LineProgress(self.stream, prefix=entry.name)

    def finished(self, row: GradeRow) -> None:
        with self._lock:
            self.done += 1
            self.failed += _failed(row)
        self._line(f"[{self.done}/{self.total}, {self.failed} failed] {row.candidate}: {row.status} "
                   f"{printable(row.message or '', 200)} ({row.seconds or 0:.0f} s)")


def for_console(console: Console, quiet: bool) -> BatchEvents:
    if console.is_terminal and not quiet:
        return LiveBatch(console)
    return LineBatch(console, quiet)
