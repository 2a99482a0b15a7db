"""Hostile submissions (tests/hostile/submissions/<case>, each with its ATTACK.md) graded through the
real pipeline on every backend: a clear verdict, containment seen from the host, nothing left.

GAPS lists, per case, the backends that do not contain the attack; their containment assertions
must fail (a pass means the table is stale) and their isolation notes must say so.
"""

from __future__ import annotations

import hashlib
import stat
import uuid
from pathlib import Path

import pytest
from hostile_harness import Gap, Harness

PROCESS_FS = Gap("no filesystem isolation: host paths are the grader's to read and write",
                 "no filesystem isolation")
PROCESS_ROOT = Gap("runs with the grader's privileges (root here: every capability)",
                   "holds every capability")
GAPS: dict[str, dict[str, Gap]] = {
    "network": {"process": Gap("no network namespace: the host's interfaces and loopback are reachable",
                               "no network isolation")},
    "host_files": {"process": PROCESS_FS},
    "write_outside": {"process": PROCESS_FS},
    "setuid": {"process": PROCESS_ROOT},
    "syscalls": {"process": PROCESS_ROOT},
    "env_secrets": {"process": Gap("other processes' /proc/<pid>/environ is readable",
                                   "read their environment in /proc")},
    "disk_fill_tmp": {"process": Gap("/tmp is the host's, outside disk_mb", "/tmp and /dev/shm are the host's")},
    "disk_fill_shm": {"process": Gap("/dev/shm is the host's, outside disk_mb", "/tmp and /dev/shm are the host's")},
}
HIDDEN_KEY = hashlib.sha256(b"key\0hostile-fixture").hexdigest()[:24]
"""The grader-only key the fixture's generator derives from its default hidden seed."""
DISK_OVERSHOOT_MB = 256
"""What a run may write beyond disk_mb before a polling backend kills it (a 2 GB fill must not pass)."""
slow = pytest.mark.slow


def _failed_run(h: Harness, case: str, **target):
    g = h.grade(case, **target)
    assert g.check("runs").status == "fail"
    return g


def _every_case_is_tested() -> None:
    cases = {p.name for p in (Path(__file__).parent / "submissions").iterdir() if p.is_dir()}
    tested = {name[len("test_"):] for name in globals() if name.startswith("test_")}
    assert cases <= tested, f"submissions without a test: {sorted(cases - tested)}"


def test_corpus_is_complete_and_documented() -> None:
    _every_case_is_tested()
    for case in (Path(__file__).parent / "submissions").iterdir():
        note = (case / "ATTACK.md").read_text().strip()
        assert note and "\n" not in note, f"{case.name}/ATTACK.md must be one line"


# -- resources --------------------------------------------------------------------------------
@slow
def test_fork_bomb(hostile: Harness) -> None:
    g = _failed_run(hostile, "fork_bomb")
    with hostile.contained(GAPS.get("fork_bomb", {}), g.result):
        assert g.seen.max_procs <= hostile.pids_cap(), f"{g.seen.max_procs} processes ran at once"
        hostile.assert_host_clean(g)


@slow
def test_thread_bomb(hostile: Harness) -> None:
    g = _failed_run(hostile, "thread_bomb")
    with hostile.contained(GAPS.get("thread_bomb", {}), g.result):
        assert g.seen.max_threads <= hostile.pids_cap(), f"{g.seen.max_threads} threads ran at once"
        hostile.assert_host_clean(g)


@slow
def test_memory_bomb(hostile: Harness) -> None:
    g = _failed_run(hostile, "memory_bomb")
    assert g.run.oom_killed and "out of memory" in g.check("runs").evidence.message
    with hostile.contained(GAPS.get("memory_bomb", {}), g.result):
        assert g.seen.max_rss_mb <= hostile.limits.memory_mb * 1.25, f"{g.seen.max_rss_mb:.0f} MB resident"
        hostile.assert_host_clean(g)


@slow
def test_disk_fill_work(hostile: Harness) -> None:
    g = _failed_run(hostile, "disk_fill_work")
    if "disk-poll" in g.result.isolation.limits_enforced:  # measured and killed; docker's tmpfs answers ENOSPC
        assert g.run.disk_exceeded and "disk limit" in g.check("runs").evidence.message
    with hostile.contained(GAPS.get("disk_fill_work", {}), g.result):
        assert g.seen.max_tree_mb <= hostile.limits.disk_mb + DISK_OVERSHOOT_MB, \
            f"{g.seen.max_tree_mb:.0f} MB written on the host"
        hostile.assert_host_clean(g)


@slow
def test_disk_fill_tmp(hostile: Harness) -> None:
    g = _failed_run(hostile, "disk_fill_tmp")
    with hostile.contained(GAPS.get("disk_fill_tmp", {}), g.result):
        assert g.seen.max_tagged_mb == 0, f"{g.seen.max_tagged_mb:.0f} MB written to the host's /tmp"
        hostile.assert_host_clean(g)


@slow
def test_disk_fill_shm(hostile: Harness) -> None:
    g = _failed_run(hostile, "disk_fill_shm")
    with hostile.contained(GAPS.get("disk_fill_shm", {}), g.result):
        assert g.seen.max_tagged_mb == 0, f"{g.seen.max_tagged_mb:.0f} MB written to the host's /dev/shm"
        hostile.assert_host_clean(g)


@slow
def test_zombies(hostile: Harness) -> None:
    g = hostile.grade("zombies")
    assert g.result.score == 100.0, g.result.checks
    with hostile.contained(GAPS.get("zombies", {}), g.result):
        assert g.seen.max_procs <= hostile.pids_cap(), f"{g.seen.max_procs} processes (zombies included) at once"
        hostile.assert_host_clean(g)


# -- process tree -----------------------------------------------------------------------------
@slow
def test_daemon_timeout(hostile: Harness) -> None:
    g = _failed_run(hostile, "daemon_timeout")
    assert g.run.timed_out and "timed out" in g.check("runs").evidence.message
    with hostile.contained(GAPS.get("daemon_timeout", {}), g.result):
        assert g.run.duration_s < hostile.limits.wall_time_s + 5
        hostile.assert_host_clean(g)


def test_daemon_exit(hostile: Harness) -> None:
    g = hostile.grade("daemon_exit")
    assert g.result.score == 100.0, g.result.checks
    with hostile.contained(GAPS.get("daemon_exit", {}), g.result):
        assert g.run.duration_s < hostile.limits.wall_time_s, "the run waited for the daemon"
        hostile.assert_host_clean(g)


# -- reach: network, host files, privileges, secrets ------------------------------------------
def test_network(hostile: Harness) -> None:
    listener = hostile.start_listener()
    g = hostile.grade("network", port=listener.port)
    assert g.result.score == 100.0, g.result.checks
    seen = g.evidence()
    routes = [line.split()[0] for line in seen["route"]] + [line.split()[-1] for line in seen["ipv6_route"]]
    with hostile.contained(GAPS.get("network", {}), g.result):
        assert listener.accepted == 0, "the run connected to the host's loopback"
        assert seen["interfaces"] == ["lo"] and set(routes) <= {"lo"}, seen
        hostile.assert_host_clean(g)


def test_host_files(hostile: Harness) -> None:
    """The run also probes beside its input folder and the grader's temporary folders for the answer key."""
    secret = hostile.host_secret(f"host-secret-{uuid.uuid4().hex}\n")
    targets = [secret, hostile.pack_dir / "hidden" / "generate.py", hostile.pack_dir / "checks.py"]
    g = hostile.grade("host_files", files=[str(p) for p in targets])
    assert g.result.score == 100.0, g.result.checks
    hidden = [secret.read_text().strip(), HIDDEN_KEY, "a grader-only key it must never see",
              "Host-side evidence that the run changed none"]  # the key, lines of the generator and checks
    seen = g.evidence()
    beside = {path: got for path, got in seen["stolen"].items() if "/../" in path}
    assert len(beside) == 2 and HIDDEN_KEY not in str(beside), beside  # on every backend, process included
    with hostile.contained(GAPS.get("host_files", {}), g.result):
        assert not {s: g.leaked(s) for s in hidden if g.leaked(s)}
        assert not seen["shadow_readable"], "/etc/shadow was readable"
        assert seen["proc1_cmdline"] != Path("/proc/1/cmdline").read_text(), "the host's PID 1 is visible"
        assert not seen["docker_socket"].startswith("HTTP"), "the docker socket answered"
        hostile.assert_host_clean(g)


def test_write_outside(hostile: Harness) -> None:
    escape = Path("/tmp") / f"{hostile.tag}-escape.txt"
    targets = [escape, hostile.pack_dir / "checks.py", hostile.src / "main.py"]
    g = hostile.grade("write_outside", files=[str(p) for p in targets])
    assert g.check("runs").status == "pass"
    with hostile.contained(GAPS.get("write_outside", {}), g.result):
        assert g.check("intact").status == "pass", g.check("intact").evidence
        assert g.check("echoed").status == "pass", "the run changed its own input"
        assert "pwned" not in (g.run_dir / "stdout.txt").read_text(), "the run forged its own log"
        hostile.assert_host_clean(g)  # the /tmp path, the task pack and the submission's source


def test_setuid(hostile: Harness) -> None:
    g = hostile.grade("setuid")
    assert g.result.score == 100.0, g.result.checks
    flagged = [str(p) for p in hostile.out.rglob("*")
               if p.is_file() and p.lstat().st_mode & (stat.S_ISUID | stat.S_ISGID)]
    assert not flagged, f"setuid/setgid files left in the result folder: {flagged}"
    seen = g.evidence()
    inner = seen["inner"]
    with hostile.contained(GAPS.get("setuid", {}), g.result):
        assert "resuid" in inner, f"the setuid copy did not run: {inner}"
        assert set(inner["resuid"]) == set(seen["me"]), f"uid changed: {seen['me']} -> {inner['resuid']}"
        assert int(inner["cap_eff"], 16) == 0, f"capabilities: {inner['cap_eff']}"
        assert inner["setuid0"] != "allowed" and inner["chroot"] != "allowed", inner
        hostile.assert_host_clean(g)


def test_syscalls(hostile: Harness) -> None:
    victim = hostile.start_victim("unused")
    g = hostile.grade("syscalls", victim=victim)
    assert g.result.score == 100.0, g.result.checks
    seen = g.evidence()
    with hostile.contained(GAPS.get("syscalls", {}), g.result):
        assert not g.seen.victim_traced, "a host process was ptrace-attached"
        assert not g.seen.mounts, f"mounts appeared on the host: {g.seen.mounts}"
        allowed = [name for name, status in seen.items() if status == "ok"]
        assert not allowed, f"privileged calls succeeded: {allowed}"
        hostile.assert_host_clean(g)


def test_env_secrets(hostile: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"grader-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("TUNEGRADE_TEST_SECRET", secret)
    victim = hostile.start_victim(secret)
    g = hostile.grade("env_secrets", victim=victim)
    assert g.result.score == 100.0, g.result.checks
    assert "TUNEGRADE_TEST_SECRET" not in g.evidence()["own"]
    with hostile.contained(GAPS.get("env_secrets", {}), g.result):
        assert not g.leaked(secret), f"the secret reached {g.leaked(secret)}"
        hostile.assert_host_clean(g)


# -- artifacts and output ---------------------------------------------------------------------
def test_link_artifacts(hostile: Harness) -> None:
    secret = hostile.host_secret(f"host-secret-{uuid.uuid4().hex}\n")
    g = hostile.grade("link_artifacts", secret=str(secret))
    assert g.check("runs").status == "pass" and g.check("echoed").status == "fail"
    left = [p for p in (g.run_dir / "out").rglob("*")
            if p.is_symlink() or not (p.is_file() or p.is_dir()) or (p.is_file() and p.stat().st_nlink > 1)]
    with hostile.contained(GAPS.get("link_artifacts", {}), g.result):
        assert not left, f"links or special files reached the checks: {left}"
        assert any("echo.txt" in n for n in g.run.notes), g.run.notes
        assert not g.leaked(secret.read_text().strip()) and secret.stat().st_nlink == 1
        hostile.assert_host_clean(g)


def test_huge_artifact(hostile: Harness) -> None:
    g = hostile.grade("huge_artifact")
    assert g.check("runs").status == "pass" and g.check("echoed").status == "fail"
    assert any("discarded" in n for n in g.run.notes), g.run.notes
    with hostile.contained(GAPS.get("huge_artifact", {}), g.result):
        assert not list((g.run_dir / "out").iterdir()), "oversized outputs reached the checks"
        hostile.assert_host_clean(g)


def test_huge_stdout(hostile: Harness) -> None:
    g = hostile.grade("huge_stdout")
    assert g.result.score == 100.0, g.result.checks
    assert g.run.stdout_truncated and g.run.stderr_truncated
    cap = hostile.limits.max_output_kb * 1024
    with hostile.contained(GAPS.get("huge_stdout", {}), g.result):
        assert (g.run_dir / "stdout.txt").stat().st_size <= cap and (g.run_dir / "stderr.txt").stat().st_size <= cap
        hostile.assert_host_clean(g)
