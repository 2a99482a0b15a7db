"""Benchmark: the grader's own share per candidate of a cohort, with and without the measurements that do
not depend on the candidate kept across its grades (grader/measurements.py).

"before": every grade starts from an empty measurement store, so it measures the base model and the
reference adapters again; "after": one store kept across the cohort, empty when the cohort starts (its
first grade fills it). The reference runs stay cached in both (grader/reference.py; a first grade, not
counted, fills that cache if cold). Before and after grades alternate, so that a busy machine slows
both alike. Usage: python benchmarks/bench_cohort.py [--task lora-sft --task qlora-tune]
[--solutions good good-trl] [--base-model tiny]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from grader import measurements
from grader.pipeline import GradeRequest, grade
from grader.solutions import materialise
from grader.tasks import get_task


@contextmanager
def measurement_store(root: Path) -> Iterator[None]:
    """Point the measurement store (only it: the reference runs' cache stays where it is) at ``root``."""
    real = measurements.cache_root
    measurements.cache_root = lambda: root
    try:
        yield
    finally:
        measurements.cache_root = real


def one(task: str, source: Path, out: Path, store: Path, base_model: str, device: str) -> dict[str, float]:
    """One grade with the measurement store at ``store``: its seconds in all, the candidate's, the checks'."""
    with measurement_store(store):
        t0 = time.perf_counter()
        result = grade(GradeRequest(pack=get_task(task), source=source, out=out, candidate=source.name,
                                    base_model=base_model, device=device))
        total = time.perf_counter() - t0
    candidate = sum(r.duration_s for r in result.runs)
    return {"total": total, "candidate": candidate, "grader": total - candidate, "checks": result.timings.checks_s,
            "score": result.score if result.score is not None else float("nan")}


def cohort(task: str, solutions: list[str], base_model: str, device: str, tmp: Path) -> None:
    pack = get_task(task)
    sources = [materialise(pack, name, tmp / task / "solutions" / name) for name in solutions]
    t0 = time.perf_counter()
    one(task, sources[0], tmp / task / "warmup", tmp / task / "warmup-store", base_model, device)
    print(f"\n{task}: first grade, not counted (fills the reference cache if cold): {time.perf_counter() - t0:.1f} s")
    kept = tmp / task / "kept-store"
    rows: list[dict[str, dict[str, float]]] = []
    for i, source in enumerate(sources):
        before = one(task, source, tmp / task / f"before{i}", tmp / task / f"empty-store{i}", base_model, device)
        after = one(task, source, tmp / task / f"after{i}", kept, base_model, device)
        rows.append({"before": before, "after": after})
    print(f"{'candidate':<12} {'grade s':>15} {'candidate s':>15} {'grader share s':>15} {'checks s':>15} "
          f"{'score':>13}   (before / after)")
    for source, row in zip(sources, rows):
        b, a = row["before"], row["after"]
        print(f"{source.name:<12} " + " ".join(f"{b[k]:7.1f}/{a[k]:<7.1f}" for k in ("total", "candidate", "grader",
                                                                                      "checks"))
              + f" {b['score']:6.1f}/{a['score']:<6.1f}")

    def mean(mode: str, key: str, first: int = 0) -> float:
        return statistics.fmean(r[mode][key] for r in rows[first:])

    print(f"mean per candidate, before → after: grader share {mean('before', 'grader'):.1f} → "
          f"{mean('after', 'grader'):.1f} s, checks {mean('before', 'checks'):.1f} → {mean('after', 'checks'):.1f} s"
          + (f"; after, candidates past the first: grader share {mean('after', 'grader', 1):.1f} s, checks "
             f"{mean('after', 'checks', 1):.1f} s" if len(rows) > 1 else ""))

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", help="lora-sft and qlora-tune unless given")
    parser.add_argument("--solutions", nargs="+", default=["good", "good-trl"])
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.task or ["lora-sft", "qlora-tune"]:
            cohort(task, args.solutions, args.base_model, args.device, Path(tmp))


if __name__ == "__main__":
    main()
