"""The CPU allocator: real flock(2) locks in a private folder, across threads and processes."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import cpus


@pytest.fixture(autouse=True)
def lock_dir(tmp_path, monkeypatch) -> Path:
    """A folder of this test's own, so that runs of other graders on this host do not interfere."""
    directory = tmp_path / "cpus"
    monkeypatch.setattr(cpus, "LOCK_DIRS", (directory,))
    return directory


def test_wanted_is_whole_cpus():
    assert [cpus.wanted(c) for c in (0.3, 1, 1.5, 2, 3.5)] == [1, 1, 2, 2, 4]


def test_free_cpus_first_then_the_least_used():
    pool = {0, 1, 2, 3}
    a, b = cpus.lease(2, pool), cpus.lease(2, pool)
    assert (a.cpus, b.cpus, a.shared, b.shared, a.note, b.note) == ([0, 1], [2, 3], [], [], None, None)
    c = cpus.lease(1, pool)  # none free: shares the least used (all equal: the lowest)
    assert c.cpus == c.shared == [0] and "shares CPU(s) 0" in c.note
    d = cpus.lease(3, pool)  # CPU 0 is used twice now
    assert d.cpus == [1, 2, 3] and d.shared == [1, 2, 3]
    for lease in (a, c, d):
        lease.release()
    e = cpus.lease(4, pool)  # only b's are still held
    assert e.cpus == [0, 1, 2, 3] and e.shared == [2, 3]
    for lease in (b, e):
        lease.release()
    assert cpus.lease(4, pool).shared == []


def test_more_than_the_host_has_is_all_of_it():
    lease = cpus.lease(8, {0, 1})
    assert lease.cpus == [0, 1] and lease.shared == []


def test_a_lease_of_another_process_is_seen_and_dropped_when_it_dies(lock_dir):
    script = (f"import pathlib, sys; from sandbox import cpus; cpus.LOCK_DIRS = (pathlib.Path({str(lock_dir)!r}),); "
              "lease = cpus.lease(1, {0, 1}); print(lease.cpus[0], flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[2])
    try:
        theirs = int(holder.stdout.readline())
        mine = cpus.lease(1, {0, 1})
        assert mine.cpus == [1 - theirs] and mine.shared == []
        mine.release()
    finally:
        holder.kill()
        holder.wait()
    both = cpus.lease(2, {0, 1})  # the kernel dropped the dead holder's lock
    assert both.cpus == [0, 1] and both.shared == []


def test_unusable_folder_means_unpinned_not_an_error(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(cpus, "LOCK_DIRS", (tmp_path / "a-file" / "cpus",))
    lease = cpus.lease(1, {0})
    assert lease.cpus == [] and "not pinned" in lease.note


def test_planted_lock_files_are_skipped(lock_dir):
    lock_dir.mkdir()
    (lock_dir / "cpu0.0").symlink_to("/etc/passwd")  # O_NOFOLLOW: never opened
    lease = cpus.lease(1, {0})
    assert lease.cpus == [0] and lease.shared == []
    assert (lock_dir / "cpu0.1").exists() and (lock_dir / "cpu0.0").is_symlink()


def test_a_stuck_guard_means_unpinned_not_a_wait(lock_dir, monkeypatch):
    monkeypatch.setattr(cpus, "GUARD_WAIT_S", 0.1)
    lock_dir.mkdir()
    fd = os.open(lock_dir / "alloc.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        lease = cpus.lease(1, {0})
    finally:
        os.close(fd)
    assert lease.cpus == [] and "alloc.lock held" in lease.note
