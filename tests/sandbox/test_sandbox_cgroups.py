"""cgroup detection and per-run cgroups: real v1/v2 where this host has them, parsing and file
writes against a fake tree for the version it lacks (the kernel side is covered by the
conformance suite's memory, pids and cpu tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import Limits
from sandbox.cgroups import CgroupLayout, Hierarchy, RunCgroup, _candidates, _mounts, _own_paths, detect
from sandbox.limits import MIB, PIDS_OVERHEAD

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
    mounts = _mounts(MOUNTINFO)
    assert [(m[0], str(m[1]), m[2]) for m in mounts] == [
        ("cgroup", "/sys/fs/cgroup/cpu,cpuacct", "/"),
        ("cgroup", "/sys/fs/cgroup/memory", "/"),
        ("cgroup", "/sys/fs/cgroup/pids", "/docker/abc"),
        ("cgroup2", "/sys/fs/cgroup/unified", "/"),
    ]
    assert {"cpu", "cpuacct"} <= mounts[0][3]
    assert _own_paths(SELF_CGROUP) == {"pids": "/docker/abc/grader", "memory": "/process_api/1", "cpu": "/",
                                       "cpuacct": "/", "": "/user.slice"}


def test_candidates_nest_under_our_own_cgroup(tmp_path):
    (tmp_path / "grader").mkdir()
    # mount root /docker/abc, our path /docker/abc/grader -> <mount>/grader, then the mount's root
    assert _candidates(tmp_path, "/docker/abc", "/docker/abc/grader") == [tmp_path / "grader", tmp_path]
    assert _candidates(tmp_path, "/", "/missing") == [tmp_path]


def _fake_run(tmp_path: Path, version: int, limits: Limits) -> RunCgroup:
    layout = CgroupLayout([Hierarchy(version, tmp_path, ("memory", "pids", "cpu"))])
    return RunCgroup(layout, limits, name="run")


def test_v2_limits_are_written(tmp_path):
    cg = _fake_run(tmp_path, 2, Limits(memory_mb=300, pids=50, cpus=1.5))
    run = tmp_path / "run"
    assert cg.enforced == ["cgroup-v2:memory", "cgroup-v2:pids", "cgroup-v2:cpu"]
    assert (run / "memory.max").read_text() == str(300 * MIB)
    assert (run / "pids.max").read_text() == str(50 + PIDS_OVERHEAD)
    assert (run / "cpu.max").read_text() == "150000 100000"
    assert cg.procs_files == [str(run / "cgroup.procs")]
    assert cg.oom_kills() == 0 and not cg.has_oom_counter()
    (run / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    (run / "memory.peak").write_text(str(310 * MIB))
    assert cg.oom_kills() == 1 and cg.has_oom_counter() and cg.peak_mb() == 310
    # Where the kernel offers them: no swap, and an OOM kills the whole run.
    other = tmp_path / "other"
    other.mkdir()
    for name in ("memory.swap.max", "memory.oom.group"):
        (other / name).write_text("max\n")
    RunCgroup._limit(2, "memory", other, Limits())
    assert (other / "memory.swap.max").read_text() == "0" and (other / "memory.oom.group").read_text() == "1"


def test_v1_limits_are_written(tmp_path):
    cg = _fake_run(tmp_path, 1, Limits(memory_mb=200, pids=10, cpus=0.5))
    run = tmp_path / "run"
    assert cg.enforced == ["cgroup-v1:memory", "cgroup-v1:pids", "cgroup-v1:cpu"]
    assert (run / "memory.limit_in_bytes").read_text() == str(200 * MIB)
    assert not (run / "memory.memsw.limit_in_bytes").exists()  # only set where the kernel offers it
    assert (run / "pids.max").read_text() == str(10 + PIDS_OVERHEAD)
    assert (run / "cpu.cfs_quota_us").read_text() == "50000"
    (run / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cg.oom_kills() == 2


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
    own = _own_paths(Path("/proc/self/cgroup").read_text())
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
