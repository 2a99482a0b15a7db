"""cgroup detection and per-run cgroups: real v1/v2 where this host has them, parsing and file
writes against a fake tree for the version it lacks (the kernel side is covered by the
conformance suite's memory, pids and cpu tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import Limits
from sandbox.cgroups import (CgroupLayout, Hierarchy, RunCgroup, _candidates, cgroup_mounts, cgroup_paths, detect,
                             mounted_dir)
from sandbox.limits import MIB, PIDS_OVERHEAD
from sandbox.metering import cpu_usage_s, memory_in_use

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 /docker/abc /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 23 0:40 / /proc rw - proc proc rw
"""
SELF_CGROUP = """\
9:pids:/docker/abc/grader
4:memory:/process_api/1
2:cpu,cpuacct:/
0::/user.slice
"""


def test_mountinfo_and_self_cgroup_parsing():
    mounts = cgroup_mounts(MOUNTINFO)
    assert [(m[0], str(m[1]), m[2]) for m in mounts] == [
        ("cgroup", "/sys/fs/cgroup/cpu,cpuacct", "/"),
        ("cgroup", "/sys/fs/cgroup/memory", "/"),
        ("cgroup", "/sys/fs/cgroup/pids", "/docker/abc"),
        ("cgroup2", "/sys/fs/cgroup/unified", "/"),
    ]
    assert {"cpu", "cpuacct"} <= mounts[0][3]
    assert cgroup_paths(SELF_CGROUP) == {"pids": "/docker/abc/grader", "memory": "/process_api/1", "cpu": "/",
                                       "cpuacct": "/", "": "/user.slice"}


def test_candidates_nest_under_our_own_cgroup(tmp_path):
    (tmp_path / "grader").mkdir()
    # mount root /docker/abc, our path /docker/abc/grader -> <mount>/grader, then the mount's root
    assert _candidates(tmp_path, "/docker/abc", "/docker/abc/grader") == [tmp_path / "grader", tmp_path]
    assert _candidates(tmp_path, "/", "/missing") == [tmp_path]


def _fake_run(tmp_path: Path, version: int, limits: Limits, cpus: list[int] | None = None) -> RunCgroup:
    (tmp_path / "cpuset.cpus").write_text("0-3\n")
    (tmp_path / "cpuset.mems").write_text("0\n")
    layout = CgroupLayout([Hierarchy(version, tmp_path, ("memory", "pids", "cpu", "cpuacct", "cpuset"))])
    return RunCgroup(layout, limits, name="run", cpus=cpus)


def test_v2_limits_are_written(tmp_path):
    cg = _fake_run(tmp_path, 2, Limits(memory_mb=300, pids=50, cpus=1.5), cpus=[2, 3])
    run = tmp_path / "run"
    assert cg.enforced == ["cgroup-v2:memory", "cgroup-v2:pids", "cgroup-v2:cpu", "cgroup-v2:cpuacct",
                           "cgroup-v2:cpuset"]
    assert (run / "memory.max").read_text() == str(300 * MIB)
    assert (run / "pids.max").read_text() == str(50 + PIDS_OVERHEAD)
    assert (run / "cpu.max").read_text() == "150000 100000"
    assert (run / "cpuset.cpus").read_text() == "2,3" and cg.pinned
    assert cg.procs_files == [str(run / "cgroup.procs")]
    assert cg.oom_kills() == 0 and not cg.has_oom_counter()
    (run / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    assert cg.oom_kills() == 1 and cg.has_oom_counter()
    # Memory in use is anon + file_mapped + shmem; page cache ("file") is not the run's memory.
    (run / "memory.stat").write_text(f"anon {100 * MIB}\nfile {900 * MIB}\nkernel 4096\nfile_mapped {20 * MIB}\n"
                                      f"shmem {5 * MIB}\nfile_dirty 0\n")
    (run / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    assert memory_in_use(*cg.dir_for("memory")) == 125 * MIB
    assert cpu_usage_s(*cg.dir_for("cpuacct")) == 2.5
    # Where the kernel offers them: no swap, and an OOM kills the whole run.
    other = tmp_path / "other"
    other.mkdir()
    for name in ("memory.swap.max", "memory.oom.group"):
        (other / name).write_text("max\n")
    RunCgroup._limit(2, "memory", other, Limits())
    assert (other / "memory.swap.max").read_text() == "0" and (other / "memory.oom.group").read_text() == "1"


def test_v1_limits_are_written(tmp_path):
    cg = _fake_run(tmp_path, 1, Limits(memory_mb=200, pids=10, cpus=0.5), cpus=[1])
    run = tmp_path / "run"
    assert cg.enforced == ["cgroup-v1:memory", "cgroup-v1:pids", "cgroup-v1:cpu", "cgroup-v1:cpuacct",
                           "cgroup-v1:cpuset"]
    assert (run / "memory.limit_in_bytes").read_text() == str(200 * MIB)
    assert not (run / "memory.memsw.limit_in_bytes").exists()  # only set where the kernel offers it
    assert (run / "pids.max").read_text() == str(10 + PIDS_OVERHEAD)
    assert (run / "cpu.cfs_quota_us").read_text() == "50000"
    # A v1 cpuset admits tasks only once both are set; mems are the parent's.
    assert (run / "cpuset.cpus").read_text() == "1" and (run / "cpuset.mems").read_text() == "0"
    (run / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cg.oom_kills() == 2
    # The hierarchical totals (this cgroup and any below it); the local rss/cache lines are ignored.
    (run / "memory.stat").write_text(f"cache {900 * MIB}\nrss {MIB}\nmapped_file 0\ntotal_cache {900 * MIB}\n"
                                      f"total_rss {300 * MIB}\ntotal_mapped_file {10 * MIB}\ntotal_shmem {2 * MIB}\n")
    (run / "cpuacct.usage").write_text("1234567890\n")
    assert memory_in_use(*cg.dir_for("memory")) == 312 * MIB
    assert cpu_usage_s(*cg.dir_for("cpuacct")) == 1.23456789


def test_v1_cpuset_without_cpus_keeps_the_parents(tmp_path):
    cg = _fake_run(tmp_path, 1, Limits())
    assert (tmp_path / "run" / "cpuset.cpus").read_text() == "0-3" and not cg.pinned


def test_v1_cpuset_that_cannot_be_set_is_not_joined(tmp_path):
    """An empty v1 cpuset refuses every task: the run must not try to join it."""
    layout = CgroupLayout([Hierarchy(1, tmp_path, ("cpuset",))])  # no parent cpuset.cpus to copy
    cg = RunCgroup(layout, Limits(), name="run")
    assert cg.dirs == [] and cg.procs_files == [] and not cg.pinned
    assert not (tmp_path / "run").exists() and "cpuset" in cg.notes[0]


def test_mounted_dir():
    assert mounted_dir(Path("/sys/fs/cgroup/memory"), "/", "/docker/abc") == Path("/sys/fs/cgroup/memory/docker/abc")
    assert mounted_dir(Path("/sys/fs/cgroup/pids"), "/docker/abc", "/docker/abc/grader") == Path(
        "/sys/fs/cgroup/pids/grader")


def test_unwritable_cgroups_are_notes_not_errors(tmp_path):
    layout = CgroupLayout([Hierarchy(1, tmp_path / "missing", ("memory",))])
    cg = RunCgroup(layout, Limits())
    assert cg.enforced == [] and cg.procs_files == []
    assert "not created" in cg.notes[0]
    assert detect(str(tmp_path / "no-mountinfo"), "/proc/self/cgroup").notes[0].startswith("cgroups not used")


def _real_layout():
    layout = detect()
    if not layout.hierarchies:
        pytest.skip(f"no writable cgroups here: {layout.notes}")
    return layout


def test_real_run_cgroup_sets_limits_and_is_removed():
    layout = _real_layout()
    cg = RunCgroup(layout, Limits(memory_mb=321, pids=17, cpus=0.25))
    try:
        assert cg.enforced and not cg.notes
        for h, path in cg.dirs:
            assert path.parent == h.parent and path.is_dir()
            if "memory" in h.controllers:
                name = "memory.limit_in_bytes" if h.version == 1 else "memory.max"
                assert int((path / name).read_text()) == 321 * MIB
            if "pids" in h.controllers:
                assert (path / "pids.max").read_text().strip() == str(17 + PIDS_OVERHEAD)
        assert cg.pids() == set() and cg.oom_kills() == 0
    finally:
        paths = [p for _, p in cg.dirs]
        assert cg.remove()
    assert not any(p.exists() for p in paths)


def test_memory_cgroup_nests_under_the_graders_own(tmp_path):
    layout = _real_layout()
    own = cgroup_paths(Path("/proc/self/cgroup").read_text())
    for h in layout.hierarchies:
        if h.version == 1 and "memory" in h.controllers and own.get("memory", "/") != "/":
            assert str(h.parent).endswith(own["memory"])
            return
    pytest.skip("the grader is in the root memory cgroup here")


def test_stale_cgroups_of_dead_graders_are_removed():
    layout = _real_layout()
    dead_pid = 4_194_304 + 17  # above any pid_max: certainly not alive
    stale = [h.parent / f"tunegrade-{dead_pid}-0123456789ab" for h in layout.hierarchies]
    live = [h.parent / f"tunegrade-{os.getpid()}-live0000test" for h in layout.hierarchies]
    for p in stale + live:
        p.mkdir()
    try:
        detect()
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in live)  # a live grader's cgroups are never touched
    finally:
        for p in stale + live:
            if p.exists():
                p.rmdir()
