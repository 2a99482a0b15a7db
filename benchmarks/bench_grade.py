"""Benchmark: a full grade of a task's good solution, and the grader's own share of it.

The grader's share is everything but the candidate's process: intake, input generation,
sandbox set-up, the checks' own measurements (model loads, NLL on hidden data) and the report.
The reference solution's runs, and the grader's measurements of them and of the base model, are
cached; a first, cold grade pays for them once and is reported apart. Usage: python benchmarks/bench_grade.py [--task lora-sft] [--base-model tiny] [--repeat 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from grader.pipeline import GradeRequest, grade
from grader.report import render_report
from grader.tasks import get_task


def one(task: str, base_model: str, device: str, out: Path) -> tuple[float, float, float]:
    pack = get_task(task)
    t0 = time.perf_counter()
    result = grade(GradeRequest(pack=pack, source=pack.dir / "solutions" / "good", out=out, candidate="bench",
                                base_model=base_model, device=device))
    render_report(result, out / "report.html")
    total = time.perf_counter() - t0
    candidate = sum(r.duration_s for r in result.runs)
    assert result.verdict == "strong", (result.verdict, [(c.id, c.status) for c in result.checks])
    return total, candidate, result.timings.checks_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="lora-sft")
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        one(args.task, args.base_model, args.device, Path(tmp) / "warmup")
        print(f"first grade (fills the reference cache if cold): {time.perf_counter() - t0:.1f} s")
        rows = [one(args.task, args.base_model, args.device, Path(tmp) / f"run{i}") for i in range(args.repeat)]
    total = statistics.median(r[0] for r in rows)
    cand = statistics.median(r[1] for r in rows)
    checks = statistics.median(r[2] for r in rows)
    print(f"task {args.task}, base model {args.base_model}, {args.repeat} warm grades (medians):")
    print(f"  full grade            {total:7.1f} s")
    print(f"  candidate's process   {cand:7.1f} s")
    print(f"  grader's own share    {total - cand:7.1f} s  ({(total - cand) / total:.1%} of the grade)")
    print(f"    of which checks     {checks:7.1f} s")


if __name__ == "__main__":
    main()
