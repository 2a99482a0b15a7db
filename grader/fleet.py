"""Grade a batch across a Ray cluster: `tunegrade batch --engine ray`.

The coordinator (this process) owns the batch database, exactly as the local batch does: a row is
started (with a fresh token) before its submission leaves, and finished only by the grade holding
that token. Each submission becomes one Ray task asking for its task's CPUs, GPUs and memory; the
node it lands on fetches the submission from the round's storage, grades it with that node's
sandbox, and puts the result folder back. A worker or node lost mid-grade is retried by Ray up to
``retries`` times, then recorded as ``error`` (infrastructure, retried on resume), never as the
candidate's failure. The first grade of each task runs before the rest of its cohort, so its
reference runs and measurements reach the storage once and every other node takes them from there.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from grader import __version__, cohort_share
from grader.batch import (
    BatchEvents,
    BatchRequest,
    BatchSummary,
    Entry,
    batch_entries,
    grade_entry,
    packs_of,
    require_sandbox,
    still_to_grade,
)
from grader.batch_store import BatchStore, Status
from grader.constants import BUILTIN_TASKS, RESULT_FILE
from grader.errors import BadInput, GraderFault, TunegradeError
from grader.pipeline import is_result_folder
from grader.result import load_result
from grader.storage import Storage, storage_url
from grader.tasks import TaskPack, get_task, task_dirs

INSTALL_HINT = "the ray engine needs Ray: pip install 'tunegrade[ray]'"
DEFAULT_RETRIES = 2


@dataclass
class FleetOptions:
    address: str | None = None
    """A running cluster (``host:port``, ``auto``); None starts a cluster of this machine alone."""
    storage: str | None = None
    """Where submissions and results travel (a shared path or an fsspec URL); default beside --out."""
    retries: int = DEFAULT_RETRIES
    """How often a grade whose worker or node was lost is started again elsewhere."""


class FleetJob(BaseModel):
    """What a node needs to grade one submission; everything else it reads from the storage."""

    candidate: str
    task: str | None
    task_version: str | None
    tool_version: str
    source_name: str
    token: str
    storage: str
    tasks_dirs: list[str] = []
    """The coordinator's task folders beyond the built-in ones: on a shared path for a fleet of machines."""
    options: dict[str, Any] = {}


class FleetOutcome(BaseModel):
    """What a node sends back; the result folder itself travels through the storage."""

    status: Status
    message: str
    verdict: str | None = None
    score: float | None = None
    result_key: str | None = None
    node: str = ""


def submission_key(job: FleetJob) -> str:
    return f"submissions/{job.candidate}/{job.token}.tar"


def result_key(job: FleetJob) -> str:
    return f"results/{job.candidate}/{job.token}.tar"


def tries_key(candidate: str, token: str) -> str:
    """One object per start of the grade on a node: Ray's retries after a lost worker, counted."""
    return f"tries/{candidate}/{token}"


def node_options(options: dict[str, Any], gpu_ids: list[str]) -> dict[str, Any]:
    """The grade's options on this node. Backend ``auto``: docker with the GPUs Ray gave this task on a
    GPU node, the local sandbox elsewhere."""
    if options.get("backend") != "auto":
        return options
    if gpu_ids:
        extra = {**options.get("backend_options", {}), "gpus": "device=" + ",".join(gpu_ids)}
        return {**options, "backend": "docker", "backend_options": extra}
    return {**options, "backend": "local", "backend_options": {}}


def grade_on_node(job: FleetJob) -> FleetOutcome:
    """The Ray task: runs on a worker node, in a worker process of the cluster."""
    import ray

    from grader.progress import Progress

    storage = Storage(job.storage)
    node = ray.get_runtime_context().get_node_id()
    storage.put_bytes(f"{tries_key(job.candidate, job.token)}/{uuid.uuid4().hex}", node.encode())
    cohort_share.pull(storage)
    before = cohort_share.local_entries()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    entry = Entry(name=job.candidate, path=Path(job.source_name), task=job.task)
    try:
        pack: TaskPack | None = get_task(job.task, [Path(d) for d in job.tasks_dirs]) if job.task else None
    except BadInput:
        pack = None
    if __version__ != job.tool_version or (pack.spec.version if pack else None) != job.task_version:
        raise GraderFault(f"node {node[:12]} has tunegrade {__version__} and task {job.task} "
                          f"{pack.spec.version if pack else 'unknown'}; the coordinator {job.tool_version} and "
                          f"{job.task_version}: install the same release on every node")
    options = node_options(job.options, gpu_ids)
    try:
        require_sandbox(options)
    except TunegradeError as exc:  # this node's set-up, never the candidate's input
        raise GraderFault(f"node {node[:12]} cannot grade: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="tunegrade-fleet-") as tmp:
        source = storage.get_tree(submission_key(job), Path(tmp) / "in")
        out = Path(tmp) / "out" / job.candidate
        graded = grade_entry(entry, source, pack, out, options, Progress())
        result = graded.result
        if result is not None:
            storage.put_tree(result_key(job), out)
    cohort_share.push(storage, before)
    return FleetOutcome(
        status=graded.status, message=graded.message,
        verdict=result.verdict if result else None, score=result.score if result else None,
        result_key=result_key(job) if result else None,
        node=node,
    )


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BadInput(INSTALL_HINT) from None
    return ray


def _reachable(address: str) -> str | None:
    """Why ``host:port`` takes no connection, or None: Ray itself would retry a dead address for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return f"{address!r} is not host:port"
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def connect(ray: Any, address: str | None) -> None:
    """Join the cluster at ``address`` (``auto``: the one this machine belongs to), or start one here."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address and address != "auto" and (why := _reachable(address)):
        raise BadInput(f"no Ray cluster at {address}: {why}")
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, include_dashboard=False,
                 configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"at {address}" if address else "on this machine"
        raise BadInput(f"no Ray cluster {where}: {_first_line(exc)}") from None


@dataclass(frozen=True)
class Capacity:
    """The largest node of the cluster: a grade never asks for more than one node has."""

    cpus: float
    gpus: float
    memory: float


def capacity(ray: Any) -> Capacity:
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cap = Capacity(max((n.get("CPU", 0) for n in nodes), default=0), max((n.get("GPU", 0) for n in nodes), default=0),
                   max((n.get("memory", 0) for n in nodes), default=0))
    if cap.cpus <= 0:
        raise BadInput("the Ray cluster has no node with CPUs to grade on")
    return cap


def resources(pack: TaskPack | None, cap: Capacity) -> dict[str, float]:
    """The task's ``limits`` as a Ray resource request, within the largest node."""
    if pack is None:
        return {"num_cpus": min(1.0, cap.cpus)}
    limits = pack.spec.limits
    return {"num_cpus": min(float(limits.cpus), cap.cpus), "num_gpus": min(float(limits.gpus), cap.gpus),
            "memory": min(limits.memory_mb * 2**20, cap.memory)}


def _take_result(storage: Storage, key: str, out: Path, candidate: str) -> None:
    """Put the node's result folder at ``out/candidate``, replacing an earlier grade's."""
    landing = out / f".incoming-{candidate}"
    shutil.rmtree(landing, ignore_errors=True)
    try:
        tree = storage.get_tree(key, landing)
        target = out / candidate
        if target.exists():
            if not is_result_folder(target):
                raise BadInput(f"{target} exists and is not a tunegrade result folder; choose another --out")
            shutil.rmtree(target)
        tree.rename(target)
    finally:
        shutil.rmtree(landing, ignore_errors=True)


@dataclass
class _Flight:
    entry: Entry
    token: str
    started: float = field(default_factory=time.perf_counter)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _infrastructure(exc: BaseException, retries: int) -> str:
    """The message of a grade the fleet could not finish: the node's own fault, or a lost worker."""
    cause = getattr(exc, "cause", None)  # RayTaskError: what the node's grader raised
    if isinstance(cause, BaseException):
        return f"infrastructure: {_first_line(cause)[:300]}"
    return f"infrastructure: {type(exc).__name__} after {retries + 1} starts: {_first_line(exc)[:300]}"


def run_fleet(req: BatchRequest, fleet: FleetOptions, events: BatchEvents | None = None) -> BatchSummary:
    """Grade every entry not yet recorded as finished, across the cluster; same contract as run_batch."""
    events = events or BatchEvents()
    ray = import_ray()
    entries = batch_entries(req)
    storage = Storage(storage_url(fleet.storage, req.out))
    storage.check()
    store = BatchStore(req.out)
    try:
        todo, skipped = still_to_grade(entries, store, req.regrade)
        packs = packs_of(todo, req.tasks_dirs)
        connect(ray, fleet.address)
        cap = capacity(ray)
        remote = ray.remote(grade_on_node)
        tasks_dirs = [str(d.resolve()) for d in task_dirs(req.tasks_dirs) if d != BUILTIN_TASKS]
        events.begin(len(todo), len(skipped))
        flights: dict[Any, _Flight] = {}
        progress: dict[str, Any] = {}
        variants: dict[str, str] = {}

        def launch(entry: Entry) -> bool:
            token = store.start(entry.name, entry.task, entry.path.name)
            pack = packs[entry.name]
            job = FleetJob(candidate=entry.name, task=entry.task, task_version=pack.spec.version if pack else None,
                           tool_version=__version__, source_name=entry.path.name, token=token, storage=storage.url,
                           tasks_dirs=tasks_dirs, options=req.options)
            try:
                storage.put_tree(submission_key(job), entry.path)
            except OSError as exc:  # as intake would refuse it on one machine
                store.finish(entry.name, token, "bad-input", seconds=0.0,
                             message=f"{entry.path.name}: cannot be read ({exc.strerror or exc})")
                events.finished(store.rows()[entry.name])
                return False
            ref = remote.options(**resources(pack, cap), max_retries=fleet.retries,
                                 retry_exceptions=False, name=f"tunegrade:{entry.name}").remote(job)
            flights[ref] = _Flight(entry, token)
            progress[entry.name] = events.grade_progress(entry)
            progress[entry.name].stage("on the fleet")
            return True

        cohorts: dict[str | None, deque[Entry]] = {}
        for entry in todo:
            cohorts.setdefault(entry.task, deque()).append(entry)
        # Tasks with reference work that no grade of this round has done yet: their grades go one at a time.
        cold = {task for task, queue in cohorts.items() if (p := packs[queue[0].name]) and p.spec.reference}
        warming: dict[str, str | None] = {}

        def advance(task: str | None) -> None:
            """Launch the cohort's next grades: one alone while its task is cold, else all of them."""
            queue = cohorts[task]
            while queue:
                entry = queue.popleft()
                if launch(entry) and task in cold:
                    warming[entry.name] = task
                    return

        for task in cohorts:
            advance(task)
        while flights:
            ready, _ = ray.wait(list(flights), num_returns=1)
            flight = flights.pop(ready[0])
            entry = flight.entry
            try:
                outcome: FleetOutcome = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - a lost worker or node, or a fault of the node's grader
                outcome = FleetOutcome(status="error", message=_infrastructure(exc, fleet.retries))
            outcome = _settle(outcome, flight, storage, req.out, variants)
            tries = len(storage.names(tries_key(entry.name, flight.token)))
            if tries > 1:
                outcome.message += f" ({tries} starts: {tries - 1} lost to the infrastructure)"
            progress.pop(entry.name).close()
            if store.finish(entry.name, flight.token, outcome.status, seconds=time.perf_counter() - flight.started,
                            verdict=outcome.verdict, score=outcome.score, message=outcome.message,
                            result=entry.name if outcome.result_key else None):
                events.finished(store.rows()[entry.name])
            if entry.name in warming:
                task = warming.pop(entry.name)
                if outcome.status == "graded":  # its reference work is in the storage now
                    cold.discard(task)
                advance(task)
        return BatchSummary(rows=store.rows(), graded_now=[e.name for e in todo], skipped=skipped)
    finally:
        events.close()
        store.close()
        if ray.is_initialized():
            ray.shutdown()


def _settle(outcome: FleetOutcome, flight: _Flight, storage: Storage, out: Path,
            variants: dict[str, str]) -> FleetOutcome:
    """Bring the result folder home and hold the cohort to one set of hidden inputs: a node that made
    other ones (other library versions, a broken generator) graded against another exam."""
    if outcome.result_key is None:
        return outcome
    try:
        _take_result(storage, outcome.result_key, out, flight.entry.name)
        variant = load_result(out / flight.entry.name / RESULT_FILE).hidden_variant
    except Exception as exc:  # noqa: BLE001 - the storage or the node failed us, not the candidate
        return FleetOutcome(status="error", message=f"infrastructure: result of {flight.entry.name} could not be "
                                                    f"brought back: {exc}")
    task = flight.entry.task or ""
    expected = variants.setdefault(task, variant)
    if variant != expected:
        return FleetOutcome(status="error", message=f"infrastructure: node {outcome.node[:12]} generated other hidden "
                                                    f"inputs ({variant} vs {expected} for {task})",
                            result_key=outcome.result_key)
    return outcome
