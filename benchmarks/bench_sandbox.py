"""Benchmark: what one sandboxed run costs on each backend, side by side in one process.

Times a trivial command (`python -c pass`: set-up, start, teardown and, for docker, the copy in
and out) on every backend that is usable here, interleaved so that machine noise hits them alike.
Usage: python benchmarks/bench_sandbox.py [--runs 10] [--backends local,process,docker]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sandbox import Limits, Mount, RunSpec, SandboxUnavailable, get_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--backends", default="local,process,docker")
    args = parser.parse_args()

    sandboxes = {}
    for name in args.backends.split(","):
        try:
            sandboxes[name] = get_backend(name)
        except SandboxUnavailable as exc:
            print(f"{name:8s} unavailable: {exc}")
    times: dict[str, list[float]] = {name: [] for name in sandboxes}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for name, sb in sandboxes.items():
                work = Path(tmp, f"{name}-{i}")
                work.mkdir()
                (work / "main.py").write_text("pass\n")
                python = "python" if name == "docker" else sys.executable
                spec = RunSpec(argv=[python, "main.py"], workdir=Mount(source=work, target="/sandbox/work", writable=True),
                               limits=Limits(wall_time_s=60, memory_mb=512), log_dir=work.with_suffix(".logs"))
                start = time.perf_counter()
                result = sb.run(spec)
                times[name].append(time.perf_counter() - start)
                assert result.ok, (name, result)
    print(f"one trivial run, median of {args.runs} (seconds):")
    for name, values in times.items():
        print(f"  {name:8s} {statistics.median(values):6.3f}  (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
