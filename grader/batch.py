"""Grade a folder of submissions, several at a time, resumable: `tunegrade batch`.

Each entry of the folder (a sub-folder, a git repository or an archive) is one candidate, named
after the entry. Grades run side by side in threads within the host's CPUs and GPUs, as the tasks'
``limits`` ask (a lora-sft grade takes both cores of a 2-core host, two data-prep grades share
them), and each is recorded in the batch database (:mod:`grader.batch_store`) as it ends. Nothing a
submission does stops the batch: bad input, a hostile archive or a grader fault is recorded with
its status and the batch goes on.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grader.batch_store import FINISHED, BatchStore, GradeRow, Status
from grader.cohort import Ungraded
from grader.constants import COHORT_FILE, DEFAULT_BACKEND, OUTPUT_MARKER, REPORT_FILE, RESULT_FILE, TASK_MARKER
from grader.errors import BadInput, TunegradeError
from grader.intake import ARCHIVE_SUFFIXES
from grader.pipeline import GradeRequest, grade, open_sandbox, require_isolation
from grader.progress import Progress
from grader.report import render_all, render_report, slug
from grader.result import Result, load_result
from grader.tasks import TaskPack, get_task
from sandbox.local import gpu_device_nodes


@dataclass(frozen=True)
class Entry:
    """One candidate's submission in the batch folder."""

    name: str
    path: Path
    task: str | None
    """From --task, else the entry's own task marker (an exported repo); None: unknown."""


def find_entries(folder: Path, task: str | None, out: Path) -> list[Entry]:
    """The candidates of ``folder``, by name; hidden entries, the batch's own output and tunegrade
    result folders are not candidates."""
    if not folder.is_dir():
        raise BadInput(f"{folder} is not a folder of submissions")
    entries: dict[str, Entry] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.resolve() == out.resolve() or (path / OUTPUT_MARKER).exists():
            continue
        if path.is_dir() and not path.is_symlink():
            name = path.name
            marker = path / TASK_MARKER
            own = marker.read_text(encoding="utf-8").strip() if marker.is_file() and not marker.is_symlink() else None
        elif path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
            name = next(path.name[: -len(s)] for s in ARCHIVE_SUFFIXES if path.name.endswith(s))
            own = None
        else:
            continue
        if slug(name) in entries:
            raise BadInput(f"{folder}: two submissions are named {slug(name)!r} ({entries[slug(name)].path.name} "
                           f"and {path.name}); rename one")
        entries[slug(name)] = Entry(name=slug(name), path=path, task=task or own)
    if not entries:
        raise BadInput(f"{folder} holds no submissions (sub-folders, git repositories or archives)")
    return list(entries.values())


class Slots:
    """Admits a grade when its task's CPUs and GPUs fit beside those running; with ``jobs`` set, a
    plain count instead. A grade that needs more than the host has runs alone."""

    def __init__(self, cpus: float, gpus: int, jobs: int | None) -> None:
        self.cpus, self.gpus, self.jobs = cpus, gpus, jobs
        self._used = [0.0, 0, 0]
        self._cond = threading.Condition()

    def _need(self, pack: TaskPack | None) -> tuple[float, int]:
        if pack is None:
            return 0.0, 0
        return min(pack.spec.limits.cpus, self.cpus), min(pack.spec.limits.gpus, self.gpus)

    def _fits(self, cpus: float, gpus: int) -> bool:
        running = self._used[2]
        if running == 0:
            return True
        if self.jobs is not None:
            return running < self.jobs
        return self._used[0] + cpus <= self.cpus + 1e-9 and self._used[1] + gpus <= self.gpus

    def acquire(self, pack: TaskPack | None) -> None:
        cpus, gpus = self._need(pack)
        with self._cond:
            self._cond.wait_for(lambda: self._fits(cpus, gpus))
            self._used = [self._used[0] + cpus, self._used[1] + gpus, self._used[2] + 1]

    def release(self, pack: TaskPack | None) -> None:
        cpus, gpus = self._need(pack)
        with self._cond:
            self._used = [self._used[0] - cpus, self._used[1] - gpus, self._used[2] - 1]
            self._cond.notify_all()


def host_slots(jobs: int | None) -> Slots:
    return Slots(float(len(os.sched_getaffinity(0))), len(gpu_device_nodes()), jobs)


class BatchEvents:
    """What a batch reports as it goes; the base reports nothing."""

    def begin(self, total: int, skipped: int) -> None:
        """``total`` grades to run now, ``skipped`` already recorded."""

    def grade_progress(self, entry: Entry) -> Progress:
        return Progress()

    def finished(self, row: GradeRow) -> None:
        """One grade ended and is recorded."""

    def close(self) -> None:
        """The batch is over."""


@dataclass
class BatchRequest:
    folder: Path
    out: Path
    task: str | None = None
    jobs: int | None = None
    regrade: bool = False
    tasks_dirs: list[Path] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    """GradeRequest's other fields, the same for every candidate (backend, seeds, base model...)."""


@dataclass
class BatchSummary:
    rows: dict[str, GradeRow]
    graded_now: list[str]
    skipped: list[str]

    def count(self, status: Status) -> int:
        return sum(1 for r in self.rows.values() if r.status == status)


def _outcome(result: Result) -> tuple[Status, str]:
    if result.verdict in ("error", "incomplete"):
        return "error", "; ".join(result.errors) or f"verdict {result.verdict}"
    score = f"{result.score:.1f}" if result.score is not None else "no score"
    return "graded", f"{result.verdict}, {score}"


@dataclass
class Graded:
    """How one entry's grade ended: its status, a one-line message and the result, when there is one."""

    status: Status
    message: str
    result: Result | None = None


def grade_entry(entry: Entry, source: Path, pack: TaskPack | None, out: Path, options: dict[str, Any],
                progress: Progress) -> Graded:
    """Grade ``source`` (the entry's submission, where this machine has it) into ``out`` and render its
    report. Nothing raises: bad input, grader faults and grader bugs become the entry's status."""
    try:
        if pack is None:
            why = (f"its {TASK_MARKER} names no known task ({entry.task!r})" if entry.task
                   else f"no --task given and no {TASK_MARKER} marker in the submission")
            raise BadInput(f"{entry.path.name}: {why}")
        result = grade(GradeRequest(pack=pack, source=source, out=out, candidate=entry.name, progress=progress,
                                    **options))
        render_report(result, out / REPORT_FILE)
        return Graded(*_outcome(result), result=result)
    except BadInput as exc:
        return Graded("bad-input", str(exc))
    except TunegradeError as exc:
        return Graded("error", str(exc))
    except Exception as exc:  # noqa: BLE001 - a grader bug ends this grade, never the batch
        return Graded("error", f"internal error: {type(exc).__name__}: {exc}")
    finally:
        progress.close()


def _grade_one(req: BatchRequest, entry: Entry, pack: TaskPack | None, store: BatchStore,
               events: BatchEvents) -> GradeRow:
    t0 = time.perf_counter()
    token = store.start(entry.name, entry.task, entry.path.name)
    graded = grade_entry(entry, entry.path, pack, req.out / entry.name, req.options, events.grade_progress(entry))
    result = graded.result
    store.finish(entry.name, token, graded.status, seconds=time.perf_counter() - t0,
                 verdict=result.verdict if result else None, score=result.score if result else None,
                 message=graded.message, result=entry.name if result else None)
    return store.rows()[entry.name]


def packs_of(entries: list[Entry], tasks_dirs: list[Path]) -> dict[str, TaskPack | None]:
    """Each entry's task pack; an unknown task is that entry's bad input, not the batch's."""
    packs: dict[str, TaskPack | None] = {}
    for entry in entries:
        try:
            packs[entry.name] = get_task(entry.task, tasks_dirs) if entry.task else None
        except BadInput:
            packs[entry.name] = None
    return packs


def batch_entries(req: BatchRequest) -> list[Entry]:
    if req.task is not None:
        get_task(req.task, req.tasks_dirs)  # an unknown --task is the whole batch's bad input
    return find_entries(req.folder, req.task, req.out)


def still_to_grade(entries: list[Entry], store: BatchStore, regrade: bool) -> tuple[list[Entry], list[str]]:
    """The entries to grade now (all with ``regrade``, else those not recorded as finished), and the
    names of the others."""
    done = store.rows()
    todo = [e for e in entries if regrade or e.name not in done or done[e.name].status not in FINISHED]
    return todo, [e.name for e in entries if e not in todo]


def require_sandbox(options: dict[str, Any]) -> None:
    """The sandbox every grade of this machine will use must isolate (or be allowed not to): refused once
    for the whole batch, never recorded as each candidate's bad input."""
    sandbox = open_sandbox(options.get("backend", DEFAULT_BACKEND), options.get("backend_options", {}))
    require_isolation(sandbox, options.get("allow_reduced_isolation", False))


def run_batch(req: BatchRequest, events: BatchEvents | None = None) -> BatchSummary:
    """Grade every entry not yet recorded as finished (every entry with ``regrade``)."""
    events = events or BatchEvents()
    entries = batch_entries(req)
    require_sandbox(req.options)
    store = BatchStore(req.out)
    try:
        todo, skipped = still_to_grade(entries, store, req.regrade)
        packs = packs_of(todo, req.tasks_dirs)
        slots = host_slots(req.jobs)
        if len(todo) > 1:
            # transformers resolves its names lazily and not thread-safely (two checks importing
            # PreTrainedTokenizerFast at once got an ImportError): resolve it before grades overlap.
            from transformers import PreTrainedTokenizerFast  # noqa: F401
        events.begin(len(todo), len(skipped))
        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            futures: list[Future[GradeRow]] = []
            for entry in todo:
                pack = packs[entry.name]
                slots.acquire(pack)

                def work(entry: Entry = entry, pack: TaskPack | None = pack) -> GradeRow:
                    try:
                        row = _grade_one(req, entry, pack, store, events)
                    finally:
                        slots.release(pack)
                    events.finished(row)
                    return row

                futures.append(pool.submit(work))
            for future in futures:
                future.result()
        return BatchSummary(rows=store.rows(), graded_now=[e.name for e in todo], skipped=skipped)
    finally:
        events.close()
        store.close()


def render_batch_pages(out: Path, rows: dict[str, GradeRow]) -> Path:
    """The batch folder's cohort page over every recorded result, linking each candidate's folder, with
    the entries that have no result listed apart."""
    with_result = [row for row in rows.values() if row.result]
    results = [load_result(out / str(row.result) / RESULT_FILE) for row in with_result]
    ungraded = [Ungraded(row.candidate, row.status, row.message or "") for row in rows.values() if not row.result]
    render_all(results, out, folders=[out / str(row.result) for row in with_result],
               names=[str(row.result) for row in with_result], ungraded=ungraded, cohort_page=True)
    return out / COHORT_FILE
