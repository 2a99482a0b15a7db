"""A candidate's tracked training runs: the TensorBoard event files their trials wrote.

Tasks that ask for hyperparameter trials ask for one tracked run per trial, written by the
Trainer's ``report_to="tensorboard"`` (``torch.utils.tensorboard.SummaryWriter``). With it the
grader sees the loss curves the candidate's own training produced, not numbers they typed into a
report. The files are hostile input, so they are read with tensorboard's own record reader and
protos, under caps, never through a symlink, and anything wrong with them is a
:class:`~grader.checks.CandidateFault` naming the file.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import sys
from pathlib import Path, PurePosixPath

from pydantic import BaseModel
from tensorboard import data_compat, dataclass_compat
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub import errors as tb_errors
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.util import tensor_util

from grader.checks import CandidateFault

EVENT_FILE_PREFIX = "events.out.tfevents."
"""What ``SummaryWriter`` names its files (``events.out.tfevents.<time>.<host>.<pid>.<n>``)."""
MAX_DEPTH = 4
"""Run folders are looked for this many levels below the root at most: the Trainer's own layout,
``<output_dir>/runs/<date>_<host>[/<trial>]``, is 2-3 levels deep; deeper folders are not walked."""
MAX_ENTRIES = 10_000
"""Directory entries walked at most: a tree of millions of files would stall the grade."""
MAX_EVENT_FILES = 256
"""Event files read at most, all runs together: one per trial, plus one per later
``trainer.evaluate()`` (the callback reopens its writer after training closed it)."""
MAX_BYTES = 16 << 20
"""Event-file bytes read at most, all files together. tensorboard checks each record's CRC-32C in
pure Python (about 0.3 s per MiB), so this bounds the reading time too. The Trainer writes about
250 bytes per logging step (loss, grad_norm, learning_rate, epoch) plus ~10 kB of text per run."""
MAX_RECORDS = 200_000
"""Event records decoded at most, all files together (about 30 µs each: 6 s at the cap)."""
MAX_SCALAR_POINTS = 200_000
"""Scalar points kept at most, all runs together (one record may hold many)."""
TRAIN_LOSS_TAGS = ("train/loss", "loss")
"""The Trainer's per-logging-step training loss under ``report_to="tensorboard"`` (its callback
prefixes ``train/``), or as a candidate's own ``SummaryWriter`` might name it. Not
``train/train_loss``: that is the whole run's mean, logged once at the end."""
EVAL_LOSS_TAGS = ("eval/loss", "eval_loss")
"""The Trainer's validation loss (``eval_loss`` in its logs, ``eval/loss`` in TensorBoard)."""


class TrackedRun(BaseModel):
    """One run: a folder holding event files, read as TensorBoard would show it."""

    name: str
    """The folder, relative to the runs root (posix; ``"."`` for the root itself)."""
    files: list[str]
    """Its event files, in reading order (by name, as TensorBoard orders them)."""
    truncated: list[str] = []
    """Those of ``files`` whose last record was cut short (a writer killed mid-write); the records
    before it were kept, as TensorBoard keeps them."""
    scalars: dict[str, list[tuple[int, float]]]
    """Tag -> (step, value) points in file order, files merged; steps may repeat or go back (a
    resumed run), which checks judge, not the reader."""

    def series(self, *tags: str) -> list[tuple[int, float]]:
        """The points of the first of ``tags`` (aliases of one quantity) that the run has."""
        return next((self.scalars[tag] for tag in tags if tag in self.scalars), [])

    @property
    def train_loss(self) -> list[tuple[int, float]]:
        return self.series(*TRAIN_LOSS_TAGS)

    @property
    def eval_loss(self) -> list[tuple[int, float]]:
        return self.series(*EVAL_LOSS_TAGS)


def read_tensorboard_runs(root: Path) -> list[TrackedRun]:
    """Every run under ``root``, sorted by name: ``root`` or any folder at most :data:`MAX_DEPTH`
    levels below it that directly holds ``events.out.tfevents.*`` files. A missing ``root`` has no
    runs (the check says what that means for the task).

    A symlink anywhere in the tree, a file that is not an event file, a corrupt record (checksum
    or protobuf), or a cap exceeded is a :class:`CandidateFault`. A file whose *last* record is cut
    short keeps the records before it, as TensorBoard does (a writer killed mid-record leaves
    one), and lists it in :attr:`TrackedRun.truncated`; a non-empty file without one whole record
    is not an event file.
    """
    if not os.path.lexists(root):
        return []
    budget = _Budget()
    runs = []
    for folder, files in _run_folders(root, budget):
        runs.append(_read_run(root, folder, files, budget))
    return sorted(runs, key=lambda run: run.name)


class _Budget:
    """What is left of the caps, shared by all files of one call."""

    def __init__(self) -> None:
        self.entries = MAX_ENTRIES
        self.files = MAX_EVENT_FILES
        self.bytes = MAX_BYTES
        self.records = MAX_RECORDS
        self.points = MAX_SCALAR_POINTS


def _show(root: Path, rel: PurePosixPath) -> str:
    """``rel`` as a message names it: under the root's own name, escaped if not printable."""
    text = (PurePosixPath(root.name) / rel).as_posix()
    return text if text.isprintable() else ascii(text)


def _run_folders(root: Path, budget: _Budget) -> list[tuple[PurePosixPath, list[str]]]:
    """(folder, its event file names sorted) for each folder that has any; symlinks refused."""
    found: list[tuple[PurePosixPath, list[str]]] = []
    stack = [(PurePosixPath("."), 0)]
    if os.path.islink(root):
        raise CandidateFault(f"{_show(root, PurePosixPath('.'))} is a symlink; runs must be plain folders")
    if not root.is_dir():
        raise CandidateFault(f"{_show(root, PurePosixPath('.'))} is not a folder")
    while stack:
        rel, depth = stack.pop()
        events: list[str] = []
        try:
            with os.scandir(root / rel) as entries:
                for entry in entries:
                    budget.entries -= 1
                    if budget.entries < 0:
                        raise CandidateFault(f"{_show(root, PurePosixPath('.'))} holds more than {MAX_ENTRIES} entries")
                    path = rel / entry.name
                    if entry.is_symlink():
                        raise CandidateFault(f"{_show(root, path)} is a symlink; runs must be plain folders and files")
                    if entry.is_dir(follow_symlinks=False):
                        if depth < MAX_DEPTH:
                            stack.append((path, depth + 1))
                    elif entry.name.startswith(EVENT_FILE_PREFIX):
                        events.append(entry.name)
        except OSError as e:
            raise CandidateFault(f"{_show(root, rel)}: unreadable folder ({e.strerror})") from None
        if events:
            name = rel.as_posix()
            if not name.isprintable():
                raise CandidateFault(f"{_show(root, rel)}: a run folder name must be printable text")
            found.append((rel, sorted(events)))
    return found


def _read_run(root: Path, folder: PurePosixPath, files: list[str], budget: _Budget) -> TrackedRun:
    run = TrackedRun(name=folder.as_posix(), files=files, scalars={})
    for name in files:
        budget.files -= 1
        if budget.files < 0:
            raise CandidateFault(f"{_show(root, folder / name)}: more than {MAX_EVENT_FILES} event files")
        data = _read_bytes(root, folder / name, budget)
        if _read_events(data, _show(root, folder / name), run.scalars, budget):
            run.truncated.append(name)
    return run


def _read_bytes(root: Path, rel: PurePosixPath, budget: _Budget) -> bytes:
    """The file's bytes, opened without following a symlink (one swapped in after the walk) and
    refused unless it is a regular file within what is left of :data:`MAX_BYTES`."""
    shown = _show(root, rel)
    try:
        fd = os.open(root / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CandidateFault(f"{shown} is a symlink; runs must be plain folders and files") from None
        raise CandidateFault(f"{shown}: cannot be opened ({e.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CandidateFault(f"{shown}: not a regular file")
        chunks, size = [], 0
        while size <= budget.bytes and (chunk := os.read(fd, min(1 << 20, budget.bytes + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as e:
        raise CandidateFault(f"{shown}: unreadable ({e.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > budget.bytes:
        raise CandidateFault(f"{shown}: event files larger than {MAX_BYTES >> 20} MiB in all")
    budget.bytes -= len(data)
    return data


class _Bytes(io.BytesIO):
    """Bytes read as a file: at most what is left, however many are asked for (``BytesIO``
    itself raises ``OverflowError`` beyond ``sys.maxsize``)."""

    def read(self, size: int | None = -1) -> bytes:
        return super().read(-1 if size is None or size > sys.maxsize else size)


class _BytesRecordReader(PyRecordReader_New):
    """tensorboard's (pure-Python) TFRecord reader, over bytes already read.

    Its constructor opens the file by path, and it reopens it by path for each 16 MiB, following
    whatever symlink is there by then; and it reads a record's *declared* length in one call, which
    on a real file allocates that many bytes first (a header may declare 2**64 - 1). Bytes in
    memory give only what is there. ``GetNext`` and ``record`` are tensorboard's, unchanged.
    """

    def __init__(self, data: bytes, name: str) -> None:  # not super(): it opens a path
        self.filename = name
        self.file_handle = _Bytes(data)
        self._buffer = b""
        self._buffer_pos = 0
        self.curr_event = None


def _read_events(data: bytes, shown: str, scalars: dict[str, list[tuple[int, float]]], budget: _Budget) -> bool:
    """Add the file's scalar points to ``scalars``; whether its last record was cut short.

    The records are decoded as ``EventFileLoader`` decodes them (``Event`` proto, then
    ``data_compat`` and ``dataclass_compat``, which turn legacy ``simple_value`` scalars into
    tensor ones), but not with ``EventFileLoader`` itself: it ends a file silently at *any*
    ``DataLossError``, so a checksum failure mid-file would read as a shorter run, not a corrupt one.
    """
    reader = _BytesRecordReader(data, shown)
    initial_metadata: dict[str, summary_pb2.SummaryMetadata] = {}
    count = 0
    while True:
        try:
            reader.GetNext()
        except tb_errors.OutOfRangeError:
            return False
        except tb_errors.DataLossError as e:
            if "truncated record" not in str(e):
                raise CandidateFault(
                    f"{shown}: record {count + 1} fails its checksum (corrupt, or not an event file)"
                ) from None
            if count == 0:
                raise CandidateFault(f"{shown}: not an event file (not one whole record)") from None
            return True
        except Exception as e:  # noqa: BLE001 - tensorboard's reader on the candidate's bytes
            raise CandidateFault(f"{shown}: unreadable record {count + 1} ({type(e).__name__})") from None
        count += 1
        budget.records -= 1
        if budget.records < 0:
            raise CandidateFault(f"{shown}: more than {MAX_RECORDS} event records in all")
        try:
            points = _scalar_points(reader.record(), initial_metadata)
        except CandidateFault as e:
            raise CandidateFault(f"{shown}: record {count}: {e}") from None
        except Exception as e:  # noqa: BLE001 - protobuf and tensorboard's migrations on candidate bytes
            raise CandidateFault(f"{shown}: record {count} is not a readable event ({type(e).__name__})") from None
        budget.points -= len(points)
        if budget.points < 0:
            raise CandidateFault(f"{shown}: more than {MAX_SCALAR_POINTS} scalar points in all")
        for tag, step, value in points:
            scalars.setdefault(tag, []).append((step, value))


def _scalar_points(
    record: bytes, initial_metadata: dict[str, summary_pb2.SummaryMetadata]
) -> list[tuple[str, int, float]]:
    """The (tag, step, value) scalars of one record: values whose tag's first metadata in the file
    says scalar, as TensorBoard's scalars dashboard selects them.

    An event of legacy ``simple_value`` scalars only (what ``add_scalar`` writes, one per event) is
    read directly: the migration would turn each into a one-float tensor proto and back, the same
    float32, at three times the cost of the rest of the reading."""
    event = event_pb2.Event.FromString(record)
    values = event.summary.value
    if len(values) > MAX_SCALAR_POINTS:  # before building a list of millions from one record
        raise CandidateFault(f"more than {MAX_SCALAR_POINTS} scalar points in all")
    if values and all(value.WhichOneof("value") == "simple_value" for value in values):
        for value in values:
            if value.tag not in initial_metadata:  # what data_compat + dataclass_compat would keep
                initial_metadata[value.tag] = summary_pb2.SummaryMetadata(
                    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=scalar_metadata.PLUGIN_NAME)
                )
        return [
            (value.tag, event.step, value.simple_value) for value in values if _is_scalar(initial_metadata[value.tag])
        ]
    event = data_compat.migrate_event(event)
    points = []
    for migrated in dataclass_compat.migrate_event(event, initial_metadata):
        if not migrated.HasField("summary"):
            continue
        for value in migrated.summary.value:
            metadata = initial_metadata.get(value.tag)
            if metadata is not None and _is_scalar(metadata):
                points.append((value.tag, migrated.step, _scalar_value(value)))
    return points


def _is_scalar(metadata: summary_pb2.SummaryMetadata) -> bool:
    return (
        metadata.data_class == summary_pb2.DATA_CLASS_SCALAR
        or metadata.plugin_data.plugin_name == scalar_metadata.PLUGIN_NAME
    )


def _scalar_value(value: summary_pb2.Summary.Value) -> float:
    """The one number a scalar summary's tensor holds. The shape is checked before
    ``make_ndarray``, which fills a tensor of the *declared* shape from one value."""
    if any(dim.size != 1 for dim in value.tensor.tensor_shape.dim):
        raise CandidateFault(f"scalar {_tag(value.tag)} is a tensor of more than one value")
    array = tensor_util.make_ndarray(value.tensor)
    if array.size != 1 or array.dtype.kind not in "biuf":
        raise CandidateFault(f"scalar {_tag(value.tag)} is not one real number ({array.dtype})")
    return float(array.reshape(()))


def _tag(tag: str) -> str:
    """A candidate's tag as a one-line message shows it."""
    return ascii(tag) if len(tag) <= 80 else ascii(tag[:80]) + "..."
