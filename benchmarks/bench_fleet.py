"""Benchmark: a cohort graded by the local batch and on a Ray cluster of this machine with 1 and 2 worker
nodes, side by side; and the coordinator's own cost per submission.

Each configuration grades the same cohort from cold caches (fresh node caches, fresh storage), so the
first grade of the cohort (reference runs and measurements, done once and shared) is reported apart
from the rest: "steady" is the throughput once that is done, what a large round runs at. Each worker
node offers the task's CPUs; on a 2-core machine two lora-sft nodes oversubscribe the cores, which the
figures show. Overhead: trivial submissions (the echo fixture, no reference) graded by the local batch
and by the fleet, the difference per submission, and the coordinator's CPU seconds per submission.
Usage: python benchmarks/bench_fleet.py [--task data-prep --task lora-sft] [--solutions good flawed-html]
[--overhead 24]
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grader.batch_store import read_rows
from grader.solutions import materialise
from grader.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("raycluster", REPO / "tests" / "grader" / "raycluster.py")
assert _spec and _spec.loader
raycluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(raycluster)  # the tests' cluster: a head and worker nodes on loopback
LocalCluster, ray_env = raycluster.LocalCluster, raycluster.ray_env

TUNEGRADE = Path(sys.executable).with_name("tunegrade")
ECHO = REPO / "tests" / "fixtures" / "tasks"
LORA_SUBSET = ["flawed-untrained", "good", "good-trl", "flawed-q-only"]


def cohort_folder(task: str, solutions: list[str] | None, root: Path) -> Path:
    pack = get_task(task)
    names = solutions or sorted(p.name for p in (pack.dir / "solutions").iterdir() if p.is_dir())
    for name in names:
        materialise(pack, name, root / name)
    return root


def grade(folder: Path, out: Path, task: str, engine: str, cache: Path, address: str | None = None,
          extra_env: dict[str, str] | None = None) -> dict[str, float]:
    """One `tunegrade batch`; wall seconds, the first grade's, and the batch process's CPU seconds (on the
    fleet: the coordinator's own; locally: the grading too)."""
    args = [str(TUNEGRADE), "batch", str(folder), "--task", task, "--out", str(out), "--quiet",
            "--role", "llm-engineer", "--engine", engine]
    if address:
        args += ["--address", address]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=ray_env(TUNEGRADE_CACHE=str(cache), **(extra_env or {})), capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{engine} batch failed: {proc.stderr[-2000:]}")
    rows = read_rows(out)
    first = min(rows.values(), key=lambda r: r.started_at)
    return {"wall": wall, "n": len(rows), "first": first.seconds or 0.0,
            "coordinator_cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def on_cluster(workers: int, cpus: int, root: Path, run) -> dict[str, float]:  # noqa: ANN001
    cluster = LocalCluster().start()
    try:
        for i in range(workers):
            cluster.add_worker(cpus, root / f"node-cache-{i}")
        return run(cluster.address)
    finally:
        cluster.stop()


def line(name: str, m: dict[str, float]) -> str:
    steady = (m["n"] - 1) / max(m["wall"] - m["first"], 1e-9) * 3600
    return (f"  {name:<22} {m['wall']:8.1f} s  first grade {m['first']:6.1f} s  steady {steady:7.0f} grades/h  "
            f"CPU of the batch process {m['coordinator_cpu'] / m['n']:.2f} s/submission")


def throughput(task: str, solutions: list[str] | None, tmp: Path) -> None:
    folder = cohort_folder(task, solutions, tmp / task / "cohort")
    cpus = int(get_task(task).spec.limits.cpus)
    n = len(list(folder.iterdir()))
    print(f"\n{task}: {n} submissions, {cpus} CPU(s) per grade, cold caches in every configuration")
    m = grade(folder, tmp / task / "local", task, "local", tmp / task / "local-cache")
    print(line("local batch", m), flush=True)
    for workers in (1, 2):
        m = on_cluster(workers, cpus, tmp / task / f"ray{workers}",
                       lambda address, w=workers: grade(folder, tmp / task / f"ray{w}-out", task, "ray",
                                                        tmp / task / f"ray{w}-coordinator-cache", address))
        print(line(f"ray, {workers} worker node(s)", m), flush=True)


def overhead(count: int, tmp: Path) -> None:
    folder = tmp / "overhead" / "cohort"
    for i in range(count):
        shutil.copytree(ECHO / "echo" / "solutions" / "good", folder / f"c{i:03d}")
    env = {"TUNEGRADE_TASKS": str(ECHO)}
    local = grade(folder, tmp / "overhead" / "local", "echo", "local", tmp / "overhead" / "cache", extra_env=env)
    fleet = on_cluster(2, 1, tmp / "overhead", lambda address: grade(folder, tmp / "overhead" / "ray", "echo", "ray",
                                                                     tmp / "overhead" / "cache", address, env))
    print(f"\ncoordinator overhead: {count} trivial submissions (echo fixture, about 1 s of grading each)")
    print(line("local batch", local))
    print(line("ray, 2 worker nodes", fleet))
    extra = (fleet["wall"] - local["wall"]) / count
    print(f"  fleet minus local: {extra:+.2f} s wall per submission (transfer through the storage, scheduling)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", help="default: data-prep and lora-sft")
    parser.add_argument("--solutions", nargs="*", help=f"default: all (lora-sft: {' '.join(LORA_SUBSET)})")
    parser.add_argument("--overhead", type=int, default=24, help="trivial submissions for the overhead figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        overhead(args.overhead, Path(tmp))
        for task in args.task or ["data-prep", "lora-sft"]:
            subset = args.solutions or (LORA_SUBSET if task == "lora-sft" else None)
            throughput(task, subset, Path(tmp))


if __name__ == "__main__":
    main()
