"""Parsers and readers of the resource figures (the kernel side runs in the conformance suite)."""

from __future__ import annotations

import os
import time

import pytest

from sandbox import Limits, Mount, RunSpec
from sandbox.limits import MIB
from sandbox.metering import (
    GpuMemoryPoll,
    MemoryPeak,
    engine_figures,
    host_cgroup_dirs,
    parse_compute_apps,
)
from sandbox.process import ProcessSandbox, ShimStatus, parse_shim_status


def test_shim_status_lines_old_and_new():
    assert parse_shim_status("exit 3 2048 1500000\n") == ShimStatus(3, 2048, 1.5)
    assert parse_shim_status("signal 9 100 0\n") == ShimStatus(-9, 100, 0.0)
    assert parse_shim_status("exit 0 2048\n") == ShimStatus(0, 2048, None)  # before CPU time was reported
    for bad in ("", "exit", "exit x 1 2", "exit 1 2 3 4", "crash 1 2 3"):
        assert parse_shim_status(bad) is None, bad


def test_compute_apps_are_summed_per_process():
    text = "1234, 1500\n1234, 500\n777, 64\n[N/A], [N/A]\n99, [Not Supported]\nNo running processes found\n"
    assert parse_compute_apps(text) == {1234: 2000.0, 777: 64.0}
    assert parse_compute_apps("") == {}


def test_gpu_poll_sums_the_runs_processes(tmp_path, monkeypatch):
    """nvidia-smi replaced by a script printing two processes of the run and one of another."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '10, 1000'\necho '11, 24'\necho '99, 5000'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert GpuMemoryPoll.available()
    poll = GpuMemoryPoll(lambda: {10, 11, 12}, interval_s=0.05).start()
    deadline = time.monotonic() + 5
    while poll.peak_mb is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert poll.stop() == 1024.0


def test_engine_figures():
    stats = {"memory_stats": {"max_usage": 300 * MIB, "usage": 200 * MIB},
             "cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}}}
    assert engine_figures(stats) == {"max_rss_mb": 300.0, "memory_source": "engine", "cpu_s": 2.5,
                                     "cpu_source": "engine"}
    assert engine_figures({"memory_stats": {}, "cpu_stats": {}}) == {}


def test_memory_peak_keeps_the_largest_sample(tmp_path):
    peak = MemoryPeak(2, tmp_path)
    assert peak.mb is None
    peak.sample()  # no memory.stat: nothing measured
    assert peak.mb is None
    for anon in (100, 300, 50):
        (tmp_path / "memory.stat").write_text(f"anon {anon * MIB}\nfile {10_000 * MIB}\nshmem 0\nfile_mapped 0\n")
        peak.sample()
    assert peak.mb == 300


def test_host_cgroup_dirs_of_this_process():
    """What docker does with a container's pid, done with ours (every path contains '')."""
    found = host_cgroup_dirs(os.getpid(), "")
    if "memory" not in found:
        pytest.skip("no memory cgroup mounted here")
    version, directory = found["memory"]
    assert (directory / "memory.stat").exists() and version in (1, 2)
    assert os.getpid() in {int(p) for p in (directory / "cgroup.procs").read_text().split()}
    assert host_cgroup_dirs(os.getpid(), "no-such-container") == {}
    assert host_cgroup_dirs(0, "") == {}


def test_gpu_seconds_without_a_gpu(tmp_path, monkeypatch):
    """gpus=1 on the process backend (it only sets CUDA_VISIBLE_DEVICES): GPU-seconds are wall
    seconds; GPU memory is not measured where nvidia-smi is absent."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi, whatever the host has
    (tmp_path / "w").mkdir()
    r = ProcessSandbox().run(RunSpec(argv=["sleep", "0.3"], workdir=Mount(source=tmp_path / "w", target="/w"),
                                     limits=Limits(gpus=1, wall_time_s=10), log_dir=tmp_path / "logs"))
    assert r.ok and r.gpu_s == r.duration_s >= 0.3 and r.gpu_memory_mb is None
    r = ProcessSandbox().run(RunSpec(argv=["true"], workdir=Mount(source=tmp_path / "w", target="/w"),
                                     log_dir=tmp_path / "logs"))
    assert r.gpu_s is None and r.gpu_memory_mb is None
