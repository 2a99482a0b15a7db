"""`tunegrade batch --engine ray` on a real Ray cluster of this machine (a head and two worker nodes,
each with its own cache): the same verdicts as the local batch, a worker killed mid-grade retried
elsewhere, the coordinator killed and restarted, and every submission recorded exactly once
(grader/fleet.py, grader/cohort_share.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from grader.batch import BatchRequest, run_batch
from grader.batch_store import read_rows
from grader.cohort_share import FETCHED_FILE, REFERENCE_DIR
from grader.constants import RESULT_FILE
from grader.result import load_result

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib: make helpers importable
from raycluster import LocalCluster, ray_env  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TUNEGRADE = Path(sys.executable).with_name("tunegrade")
ECHO = REPO / "tests" / "fixtures" / "tasks" / "echo"
DATA_PREP = REPO / "tasks" / "data-prep" / "solutions"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """An S3 endpoint on loopback (moto's server: the S3 HTTP API, no cloud here); the environment that
    points fsspec's s3 (s3fs) at it, given to the coordinator and every node."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "fleet", "AWS_SECRET_ACCESS_KEY": "fleet-secret", "AWS_DEFAULT_REGION": "us-east-1",
           "FSSPEC_S3_ENDPOINT_URL": f"http://{host}:{port}"}
    try:
        yield env
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3: dict[str, str]) -> Iterator[LocalCluster]:
    caches = tmp_path_factory.mktemp("node-caches")
    c = LocalCluster(**s3).start()
    try:
        c.add_worker(1, caches / "a")
        c.add_worker(1, caches / "b")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """echo with time to be killed in (60 s limit) and a reference run, so a cohort has shared work."""
    root = tmp_path_factory.mktemp("tasks")
    shutil.copytree(ECHO, root / "echo-fleet")
    spec_path = root / "echo-fleet" / "task.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["id"] = "echo-fleet"
    spec["limits"]["wall_time_s"] = 60
    spec["reference"] = {"solution": "solutions/good"}
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


def _echo(root: Path, name: str, sleep: float = 0.0) -> None:
    d = root / name
    d.mkdir(parents=True)
    code = (ECHO / "solutions" / "good" / "main.py").read_text()
    (d / "main.py").write_text((f"import time; time.sleep({sleep})\n" if sleep else "") + code)


def _batch(folder: Path, out: Path, cluster: LocalCluster, *args: str) -> list[str]:
    return [str(TUNEGRADE), "batch", str(folder), "--out", str(out), "--engine", "ray", "--address", cluster.address,
            "--quiet", *args]


def _env(tasks: Path | None = None) -> dict[str, str]:
    return ray_env(**({"TUNEGRADE_TASKS": str(tasks)} if tasks else {}))


def _wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _verdicts(out: Path) -> dict[str, tuple]:
    found = {}
    for name, row in read_rows(out).items():
        checks = ()
        if row.result:
            result = load_result(out / row.result / RESULT_FILE)
            checks = tuple((c.id, c.status, c.score) for c in result.checks)
        found[name] = (row.status, row.verdict, row.score, checks)
    return found


def test_a_cohort_grades_on_the_fleet_as_on_one_machine(cluster: LocalCluster, tmp_path: Path) -> None:
    subs = tmp_path / "subs"
    for name in ("good", "flawed-html", "flawed-leakage", "flawed-no-pii", "flawed-unseeded"):
        shutil.copytree(DATA_PREP / name, subs / name)
    shutil.make_archive(str(subs / "archived"), "gztar", DATA_PREP / "good")
    (subs / "broken.tar.gz").write_bytes(b"not an archive")
    options = {"backend": "local", "role": "llm-engineer"}
    run_batch(BatchRequest(folder=subs, out=tmp_path / "local", task="data-prep", options=options))
    proc = subprocess.run(_batch(subs, tmp_path / "fleet", cluster, "--task", "data-prep", "--role", "llm-engineer"),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    local, fleet = _verdicts(tmp_path / "local"), _verdicts(tmp_path / "fleet")
    assert fleet == local
    assert fleet["good"][:2] == ("graded", "strong") and fleet["archived"][:2] == ("graded", "strong")
    assert fleet["flawed-html"][1] == "below" and fleet["broken"][0] == "bad-input"
    assert all(r.attempts == 1 for r in read_rows(tmp_path / "fleet").values())
    assert (tmp_path / "fleet" / "good" / "report.html").is_file() and (tmp_path / "fleet" / "index.html").is_file()


def _running_worker(name: str) -> int | None:
    """The Ray worker process grading ``name`` (Ray titles it after the task's name)."""
    proc = subprocess.run(["pgrep", "-f", f"^ray::tunegrade:{name}( |$)"], capture_output=True, text=True)
    pids = proc.stdout.split()
    return int(pids[0]) if pids else None


def _kill_worker(name: str) -> None:
    pid = _running_worker(name)
    assert pid is not None and pid > 1, f"no worker grades {name}"
    os.kill(pid, signal.SIGKILL)


def test_a_worker_killed_mid_grade_loses_and_duplicates_nothing(cluster: LocalCluster, tasks_dir: Path,
                                                                 tmp_path: Path) -> None:
    subs, out = tmp_path / "subs", tmp_path / "out"
    for name in ("ada", "bo", "cy"):
        _echo(subs, name, sleep=4)
    batch = subprocess.Popen(_batch(subs, out, cluster, "--task", "echo-fleet"), env=_env(tasks_dir),
                             stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _running_worker("bo") is not None and read_rows(out).get("bo") is not None, 120,
              "bo's grade on a worker")
    time.sleep(1.5)  # inside the candidate's run
    _kill_worker("bo")
    _, stderr = batch.communicate(timeout=300)
    assert batch.returncode == 0, stderr
    rows = read_rows(out)
    assert {n: (r.status, r.verdict, r.attempts) for n, r in rows.items()} == {
        n: ("graded", "strong", 1) for n in ("ada", "bo", "cy")}
    assert "2 starts: 1 lost to the infrastructure" in (rows["bo"].message or "")
    assert load_result(out / "bo" / RESULT_FILE).score == 100.0


def test_a_grade_whose_workers_keep_dying_is_an_error_then_regraded(cluster: LocalCluster, tasks_dir: Path,
                                                                     tmp_path: Path) -> None:
    subs, out = tmp_path / "subs", tmp_path / "out"
    _echo(subs, "ada", sleep=4)
    batch = subprocess.Popen(_batch(subs, out, cluster, "--task", "echo-fleet", "--retries", "0"),
                             env=_env(tasks_dir), stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _running_worker("ada") is not None, 120, "ada's grade on a worker")
    time.sleep(1.5)
    _kill_worker("ada")
    _, stderr = batch.communicate(timeout=300)
    assert batch.returncode == 1, stderr  # the grader's (infrastructure's) fault, never the candidate's fail
    row = read_rows(out)["ada"]
    assert (row.status, row.verdict, row.score) == ("error", None, None)
    assert row.message and row.message.startswith("infrastructure: ")
    again = subprocess.run(_batch(subs, out, cluster, "--task", "echo-fleet"), env=_env(tasks_dir),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    row = read_rows(out)["ada"]
    assert (row.status, row.verdict, row.attempts) == ("graded", "strong", 2)


def test_the_coordinator_killed_and_restarted_finishes_exactly_once(cluster: LocalCluster, tasks_dir: Path,
                                                                   tmp_path: Path) -> None:
    subs, out = tmp_path / "subs", tmp_path / "out"
    for name in ("ada", "bo", "cy", "di", "ed"):
        _echo(subs, name, sleep=3)
    first = subprocess.Popen(_batch(subs, out, cluster, "--task", "echo-fleet"), env=_env(tasks_dir),
                             stderr=subprocess.DEVNULL, start_new_session=True)

    def one_done_one_running() -> bool:
        statuses = [r.status for r in read_rows(out).values()]
        return "graded" in statuses and "running" in statuses

    _wait_for(one_done_one_running, 240, "one grade recorded and one in flight")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    before = read_rows(out)
    done_before = {n: r.finished_at for n, r in before.items() if r.status == "graded"}
    in_flight = {n for n, r in before.items() if r.status == "running"}
    again = subprocess.run(_batch(subs, out, cluster, "--task", "echo-fleet"), env=_env(tasks_dir),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    rows = read_rows(out)
    assert {r.status for r in rows.values()} == {"graded"} and len(rows) == 5
    for name, finished in done_before.items():
        assert (rows[name].attempts, rows[name].finished_at) == (1, finished)
    for name in in_flight:
        assert rows[name].attempts == 2
    assert f"{len(rows) - len(done_before)} graded now, {len(done_before)} already graded" in again.stderr


def test_a_grade_past_its_limit_is_the_candidates_as_on_one_machine(cluster: LocalCluster, tasks_dir: Path,
                                                                    tmp_path: Path) -> None:
    subs, out = tmp_path / "subs", tmp_path / "out"
    _echo(subs, "prompt")
    _echo(subs, "slow", sleep=30)
    proc = subprocess.run(_batch(subs, out, cluster, "--task", "echo-fleet", "--time-scale", "0.1"),
                          env=_env(tasks_dir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr  # a timeout is a grade, not an infrastructure error
    rows = read_rows(out)
    assert (rows["slow"].status, rows["slow"].verdict, rows["slow"].attempts) == ("graded", "below", 1)
    slow = load_result(out / "slow" / RESULT_FILE)
    assert slow.runs[0].timed_out and next(c for c in slow.checks if c.id == "runs").status == "fail"
    assert (rows["prompt"].status, rows["prompt"].verdict) == ("graded", "strong")


def test_a_node_that_cannot_isolate_is_an_infrastructure_error(cluster: LocalCluster, tasks_dir: Path,
                                                               tmp_path: Path) -> None:
    subs, out = tmp_path / "subs", tmp_path / "out"
    _echo(subs, "ada")
    proc = subprocess.run(_batch(subs, out, cluster, "--task", "echo-fleet", "--backend", "process", "--retries", "0"),
                          env=_env(tasks_dir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    row = read_rows(out)["ada"]
    assert (row.status, row.verdict) == ("error", None)  # retried on resume, never the candidate's bad input
    assert "cannot grade: refusing to run candidate code with reduced isolation" in (row.message or "")


def test_a_cohort_computes_its_reference_once_for_every_node(cluster: LocalCluster, tasks_dir: Path,
                                                             tmp_path: Path) -> None:
    subs, out = tmp_path / "subs", tmp_path / "out"
    for name in ("ada", "bo", "cy", "di"):
        _echo(subs, name, sleep=2)  # the three after the first overlap: both nodes grade
    proc = subprocess.run(_batch(subs, out, cluster, "--task", "echo-fleet", "--hidden-seed", "shared-once"),
                          env=_env(tasks_dir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    shared = [p.name.removesuffix(".tar") for p in (out / ".fleet-storage" / "cohort" / REFERENCE_DIR).iterdir()]
    assert len(shared) == 1  # this cohort's one reference run (other tests' cohorts have other hidden seeds)
    on_nodes = [(cache / REFERENCE_DIR / shared[0] / FETCHED_FILE).is_file() for cache in cluster.workers
                if (cache / REFERENCE_DIR / shared[0] / "reference.json").is_file()]
    assert sorted(on_nodes) == [False, True]  # run on one node; the other took it from the storage


def test_submissions_and_results_travel_through_object_storage(cluster: LocalCluster, s3: dict[str, str],
                                                               tasks_dir: Path, tmp_path: Path) -> None:
    import fsspec

    subs, out = tmp_path / "subs", tmp_path / "out"
    for name in ("ada", "bo"):
        _echo(subs, name)
    fs = fsspec.filesystem("s3", endpoint_url=s3["FSSPEC_S3_ENDPOINT_URL"], key=s3["AWS_ACCESS_KEY_ID"],
                           secret=s3["AWS_SECRET_ACCESS_KEY"])
    fs.mkdir("hiring-round")
    proc = subprocess.run(_batch(subs, out, cluster, "--task", "echo-fleet", "--storage", "s3://hiring-round/r1",
                                 "--hidden-seed", "via-s3"),
                          env={**_env(tasks_dir), **s3}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {n: (r.status, r.verdict) for n, r in read_rows(out).items()} == {
        "ada": ("graded", "strong"), "bo": ("graded", "strong")}
    assert load_result(out / "bo" / RESULT_FILE).score == 100.0
    fs.invalidate_cache()
    assert {p.rsplit("/", 1)[-1] for p in fs.ls("hiring-round/r1")} == {"cohort", "results", "submissions", "tries"}
    assert len(fs.ls("hiring-round/r1/cohort/reference")) == 1
    assert not (out / ".fleet-storage").exists()


def test_missing_ray_is_one_line(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no ray here')\n")
    _echo(tmp_path / "subs", "ada")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    proc = subprocess.run([str(TUNEGRADE), "batch", str(tmp_path / "subs"), "--task", "data-prep", "--engine", "ray",
                           "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["tunegrade: error: the ray engine needs Ray: pip install 'tunegrade[ray]'"]


@pytest.mark.parametrize("args, message", [
    (["--engine", "ray", "--jobs", "2"], "--jobs is an option of the local engine"),
    (["--address", "127.0.0.1:1"], "--address and --storage are options of --engine ray"),
    (["--backend", "auto"], "--backend auto chooses per node"),
    (["--engine", "ray", "--address", "127.0.0.1:1"], "no Ray cluster at 127.0.0.1:1: Connection refused"),
    (["--engine", "ray", "--storage", "nosuchprotocol://bucket"], "storage 'nosuchprotocol://bucket' is not usable"),
])
def test_engine_options_are_checked(tmp_path: Path, args: list[str], message: str) -> None:
    _echo(tmp_path / "subs", "ada")
    proc = subprocess.run([str(TUNEGRADE), "batch", str(tmp_path / "subs"), "--task", "data-prep", *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
