"""One conformance suite for every backend (``local`` = bubblewrap, ``process`` = fallback,
``docker`` = a container per run, in the image's Python).

Known, documented differences are strict xfails (see ``expected_failure``):
- process cannot enforce read-only mounts or hide host files (no mount namespace);
- process without a cgroup cannot catch a setsid'd daemon once the command killed its supervisor;
- docker reports a signal n as exit 128+n, and a missing program as the runtime's exit 126.
Everything else must hold on all. Tests about killing process trees also run without cgroups
(``tree_env``), since CI (non-root) and many hosts have none; docker always has them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sandbox_helpers import expected_failure, marker, processes_with, py

from sandbox import Mount, SandboxUnavailable, cgroups, cpus
from sandbox.docker import IMAGE_PYTHON_BIN, DockerSandbox
from sandbox.docker_sweep import sweep
from sandbox.limits import python_bin_dir
from sandbox.local import LocalSandbox
from sandbox.process import ProcessSandbox, remove_stale_homes


@pytest.fixture(params=[True, False], ids=["cgroups", "no-cgroups"])
def tree_env(request, env):
    """``env`` with and without cgroups: killing a process tree must not depend on cgroups
    (bwrap: the PID namespace; process: the subreaper supervisor and the process group)."""
    if not request.param:
        if env.name == "docker":
            pytest.skip("docker always runs in the container's cgroups")
        env.sb = (LocalSandbox if env.name == "local" else ProcessSandbox)(use_cgroups=False)
    env.use_cgroups = request.param
    return env


def test_exit_codes_propagate(env):
    assert env.run(["sh", "-c", "exit 0"]).ok
    r = env.run(["sh", "-c", "exit 7"])
    assert (r.returncode, r.ok, r.timed_out, r.oom_killed) == (7, False, False, False)


def test_signal_is_negative_and_exit_137_is_not_a_signal(env, request):
    expected_failure(request, env, {"docker": "the engine reports a signal n as exit 128+n, like a shell"})
    r = env.run(py("import os, signal; os.kill(os.getpid(), signal.SIGTERM)"))
    assert r.returncode == -signal.SIGTERM
    assert env.run(["sh", "-c", "exit 137"]).returncode == 137


def test_failing_command_is_a_result_not_an_exception(env, request):
    expected_failure(request, env, {"docker": "a missing program is the runtime's exit 126, with its "
                                              "'OCI runtime exec failed' message on stdout"})
    r = env.run(py("raise SystemExit('boom: ' + 'x' * 3)"))
    assert r.returncode == 1 and not r.ok
    assert "boom: xxx" in env.err(r)
    r = env.run(["/nonexistent/tool", "--flag"])
    assert r.returncode == 127
    assert "cannot execute" in env.err(r)


def test_stdout_and_stderr_go_to_log_files(env):
    r = env.run(["sh", "-c", "echo to-out; echo to-err >&2"])
    assert r.stdout_path == env.logs / "stdout.txt" and r.stderr_path == env.logs / "stderr.txt"
    assert env.out(r) == "to-out\n" and env.err(r) == "to-err\n"
    assert not r.stdout_truncated and not r.stderr_truncated


def test_stdin_is_empty(env):
    r = env.run(py("import sys; print(repr(sys.stdin.read()))"), wall_time_s=10)
    assert env.out(r).strip() == "''" and not r.timed_out


def test_environment_is_cleared_and_explicit(env, monkeypatch):
    monkeypatch.setenv("TUNEGRADE_TEST_SECRET", "hunter2-secret-value")
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_leak")
    r = env.run(py("import os, json; print(json.dumps(dict(os.environ)))"), env={"EXTRA": "1"}, cpus=3.5)
    seen = json.loads(env.out(r))
    assert "TUNEGRADE_TEST_SECRET" not in seen and "HF_TOKEN" not in seen
    assert not any("hunter2" in v or "hf_do_not_leak" in v for v in seen.values())
    assert seen["PATH"].split(":")[0] == (IMAGE_PYTHON_BIN if env.name == "docker" else python_bin_dir())
    assert seen["OMP_NUM_THREADS"] == seen["MKL_NUM_THREADS"] == "3"
    assert seen["OMP_WAIT_POLICY"] == "PASSIVE"  # idle OpenMP threads sleep instead of spinning
    for key, value in {"LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
                       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                       "EXTRA": "1", "CUDA_VISIBLE_DEVICES": ""}.items():
        assert seen[key] == value, key
    # Only what the backend sets (bwrap also sets PWD to the working directory, docker HOSTNAME).
    allowed = {"PWD", "HOSTNAME", "PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
               "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "OMP_NUM_THREADS",
               "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "CUDA_VISIBLE_DEVICES", "EXTRA"}
    assert set(seen) <= allowed, set(seen) - allowed


def test_workdir_is_cwd_and_writable(env):
    inside = env.sb.path_for(env.workdir)
    r = env.run(py("import os; open('made.txt', 'w').write('hello'); print(os.getcwd())"))
    assert r.ok, env.err(r)
    assert env.out(r).strip() == inside
    assert (env.work / "made.txt").read_text() == "hello"


def test_path_for(env):
    m = Mount(source=env.tmp, target="/sandbox/in/x")
    assert env.sb.path_for(m) == ("/sandbox/in/x" if env.name != "process" else str(env.tmp))


def test_mounts_are_visible_at_path_for(env, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.txt").write_text("payload")
    m = Mount(source=tmp_path / "in", target="/sandbox/in")
    r = env.run(["cat", f"{env.sb.path_for(m)}/data.txt"], mounts=[m])
    assert env.out(r) == "payload"


def test_read_only_mount_cannot_be_written(env, tmp_path, request):
    expected_failure(request, env, {"process": "no mount namespace: read-only mounts are not enforced"})
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "keep.txt").write_text("original")
    m = Mount(source=tmp_path / "ro", target="/sandbox/ro")
    inside = env.sb.path_for(m)
    r = env.run(["sh", "-c", f"echo evil > {inside}/keep.txt; echo new > {inside}/new.txt; true"], mounts=[m])
    assert r.ok
    assert (tmp_path / "ro" / "keep.txt").read_text() == "original"
    assert not (tmp_path / "ro" / "new.txt").exists()


def test_writable_mount_can_be_written(env, tmp_path):
    (tmp_path / "rw").mkdir()
    m = Mount(source=tmp_path / "rw", target="/sandbox/out", writable=True)
    r = env.run(["sh", "-c", f"echo result > {env.sb.path_for(m)}/r.txt"], mounts=[m])
    assert r.ok and (tmp_path / "rw" / "r.txt").read_text() == "result\n"


def test_host_files_are_hidden(env, tmp_path, request):
    expected_failure(request, env, {"process": "no mount namespace: the host filesystem is visible"})
    secret = tmp_path / "host-secret.txt"
    secret.write_text("s3cret")
    r = env.run(py("import sys, os; print(os.path.exists(sys.argv[1]))", str(secret)))
    assert env.out(r).strip() == "False"


def test_output_is_capped_and_the_child_never_blocks(env):
    code = """
        import os, sys
        chunk = b'A' * (1 << 20)
        for _ in range(50):
            os.write(1, chunk)
            os.write(2, chunk)
        print('done', file=sys.stderr)
    """
    t0 = time.monotonic()
    r = env.run(py(code), max_output_kb=64, wall_time_s=60)
    elapsed = time.monotonic() - t0
    assert r.ok, env.err(r)[-500:]
    assert elapsed < 10
    assert r.stdout_truncated and r.stderr_truncated
    assert r.stdout_path.stat().st_size == 64 * 1024 == r.stderr_path.stat().st_size
    assert set(r.stdout_path.read_bytes()) == {ord("A")}


SLEEPER = """
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        open(sys.argv[1], 'w').write('started')
        time.sleep(30)
        os._exit(0)
    time.sleep(30)
"""

DAEMON = """
    import os, sys, time
    marker_file, tag = sys.argv[1], sys.argv[2]
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:               # double-forked, own session, holds stdout open
            time.sleep(float(sys.argv[3]))
            open(marker_file, 'w').write('escaped')
            os._exit(0)
        os._exit(0)
    print('parent running', flush=True)
    time.sleep(float(sys.argv[4]))
"""


def test_timeout_kills_double_forked_setsid_grandchild(tree_env):
    env = tree_env
    tag = marker()
    marker_file = env.work / "escaped.txt"
    t0 = time.monotonic()
    r = env.run(py(DAEMON, str(env.sb.path_for(env.workdir)) + "/escaped.txt", tag, "1.5", "60"), wall_time_s=0.5)
    assert r.timed_out and r.returncode is None and not r.ok
    assert time.monotonic() - t0 < 1.5 + env.overhead_s
    assert processes_with(tag) == []
    time.sleep(max(0.0, t0 + 1.8 - time.monotonic()))  # past the grandchild's wake-up
    assert not marker_file.exists()
    assert processes_with(tag) == []


def test_nothing_outlives_a_command_that_exits(tree_env):
    env = tree_env
    tag = marker()
    t0 = time.monotonic()
    r = env.run(py(DAEMON, str(env.sb.path_for(env.workdir)) + "/escaped.txt", tag, "1.5", "0"), wall_time_s=20)
    assert r.ok and not r.timed_out
    assert time.monotonic() - t0 < 1.5 + env.overhead_s  # the daemon holding stdout open did not keep the run alive
    assert processes_with(tag) == []
    time.sleep(max(0.0, t0 + 1.8 - time.monotonic()))
    assert not (env.work / "escaped.txt").exists()


def test_command_that_kills_its_supervisor_still_dies(tree_env, request):
    env = tree_env
    if env.name == "process" and not env.use_cgroups:
        expected_failure(request, env, {"process": "without a cgroup, a setsid'd process escapes once the "
                                                   "supervisor is dead (stated in isolation().notes)"})
    tag = marker()
    # os.wait(): the first child exits only once the daemon is in its own session, so the supervisor
    # dies after the escape, never before it (which would make the outcome a race).
    code = DAEMON.replace("print('parent running', flush=True)",
                          "os.wait(); import signal; os.kill(os.getppid(), signal.SIGKILL)")
    t0 = time.monotonic()
    r = env.run(py(code, str(env.sb.path_for(env.workdir)) + "/escaped.txt", tag, "1.5", "30"), wall_time_s=20)
    assert not r.ok and not r.timed_out
    assert time.monotonic() - t0 < 1.5 + env.overhead_s
    deadline = time.monotonic() + 1
    while processes_with(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    leftover = processes_with(tag)
    for pid in leftover:  # do not leak the escaped daemon out of the (expected-failure) test
        os.kill(pid, signal.SIGKILL)
    assert leftover == []
    time.sleep(max(0.0, t0 + 1.8 - time.monotonic()))
    assert not (env.work / "escaped.txt").exists()


TORCHRUN = ["torchrun", "--standalone", "--nproc_per_node", "2"]
"""How candidates launch a multi-process run: typed by name, so it must be on every sandbox's PATH."""
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

DIST = """
    import ipaddress, json, os, socket, sys, torch, torch.distributed as dist
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    open(os.path.join(sys.argv[1], f"rank{rank}"), "w").write(str(dist.get_world_size()))
    if rank == 0:
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=1).close()
            outside = "connected"
        except OSError as exc:
            outside = type(exc).__name__
        master = {a[4][0] for a in socket.getaddrinfo(os.environ["MASTER_ADDR"], None)}
        json.dump({"sum": total.item(), "ifaces": [n for _, n in socket.if_nameindex()], "outside": outside,
                   "master_loopback": all(ipaddress.ip_address(a).is_loopback for a in master)},
                  open(os.path.join(sys.argv[1], "result.json"), "w"))
    dist.destroy_process_group()
"""


def test_torchrun_launch_runs_every_rank_over_loopback_only(env, tmp_path):
    """torchrun's --standalone rendezvous and gloo's collective need only the loopback (and the
    sandbox's hostname resolving to it): the network stays closed."""
    (env.work / "dist.py").write_text(textwrap.dedent(DIST))
    (tmp_path / "out").mkdir()
    out = Mount(source=tmp_path / "out", target="/sandbox/out", writable=True)
    r = env.run([*TORCHRUN, "dist.py", env.sb.path_for(out)], mounts=[out], env=ONE_THREAD, memory_mb=2048)
    assert r.ok, env.err(r)[-2000:]
    assert [(tmp_path / "out" / f"rank{i}").read_text() for i in range(2)] == ["2", "2"]
    seen = json.loads((tmp_path / "out" / "result.json").read_text())
    assert seen["sum"] == 3.0  # 1 + 2: the all_reduce crossed both ranks
    if env.name != "process":  # the process backend shares the host's network (stated in its isolation notes)
        assert seen["ifaces"] == ["lo"] and seen["outside"] != "connected" and seen["master_loopback"]


RANK_SLEEPER = """
    import os, sys, time
    open(os.path.join(sys.argv[1], "rank" + os.environ["RANK"]), "w").write("started")
    time.sleep(60)
"""


def test_torchrun_launch_killed_at_the_wall_time_leaves_no_rank(tree_env):
    """torchrun starts each rank in a session of its own: the wall-time kill must reach them anyway.
    The limit doubles until both ranks were up when it struck: torchrun imports torch before it
    starts them, 2-3 s on an idle 2-core host and twice that on a busy one."""
    env = tree_env
    (env.work / "sleeper.py").write_text(textwrap.dedent(RANK_SLEEPER))
    ranks = [env.work / f"rank{i}" for i in range(2)]
    for wall_time_s in (4.0, 8.0, 16.0):
        tag = marker()
        for f in ranks:
            f.unlink(missing_ok=True)
        t0 = time.monotonic()
        r = env.run([*TORCHRUN, "sleeper.py", env.sb.path_for(env.workdir), tag], env=ONE_THREAD,
                    wall_time_s=wall_time_s)
        assert r.timed_out and r.returncode is None
        assert time.monotonic() - t0 < wall_time_s + 2 + env.overhead_s
        deadline = time.monotonic() + 1
        while processes_with(tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_with(tag) == []
        if all(f.exists() for f in ranks):
            break
    else:
        pytest.fail("torchrun never had both ranks running before the wall time")


def _memory_enforced(result) -> bool:
    return any(e.endswith(":memory") and e.startswith("cgroup") for e in result.isolation.limits_enforced)


HOG = """
    import sys
    chunks = []
    for i in range(200):                       # up to ~2 GB, every page touched
        chunks.append(bytearray(b'x' * (10 << 20)))
        if i % 10 == 0:
            print(i * 10, 'MB', flush=True)
"""


def test_memory_limit_kills_or_fails_a_memory_hog(env):
    r = env.run(py(HOG), memory_mb=200, wall_time_s=60)
    assert not r.ok
    if _memory_enforced(r):
        killed = 128 + signal.SIGKILL if env.name == "docker" else -signal.SIGKILL
        assert r.oom_killed and r.returncode == killed, (r, env.err(r)[-300:])
    else:
        assert r.returncode != 0 and ("MemoryError" in env.err(r) or r.returncode == -signal.SIGKILL)
    assert int(env.out(r).split()[-2]) < 400


def test_memory_limit_without_cgroups_is_rlimit_data(env):
    if env.name == "docker":
        pytest.skip("docker always limits memory through the container's cgroup")
    env.sb = (LocalSandbox if env.name == "local" else ProcessSandbox)(use_cgroups=False)
    r = env.run(py(HOG), memory_mb=200, wall_time_s=60)
    assert r.returncode == 1 and not r.oom_killed
    assert "MemoryError" in env.err(r)
    assert not any(e.startswith("cgroup") for e in r.isolation.limits_enforced)


def test_pids_limit(env):
    code = """
        import threading, time
        n = 0
        try:
            for _ in range(100):
                threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
                n += 1
        except RuntimeError:
            pass
        print(n)
    """
    r = env.run(py(code), pids=20)
    if not any(e.endswith(":pids") for e in r.isolation.limits_enforced):
        pytest.skip("no pids cgroup on this host (RLIMIT_NPROC does not bind root)")
    assert r.ok, env.err(r)
    assert 5 < int(env.out(r)) < 20 + 4  # limits.pids plus the backend's own processes


def test_cpu_limit(env):
    code = """
        import time
        t0, c0 = time.monotonic(), time.process_time()
        while time.monotonic() - t0 < 1.0:
            pass
        print((time.process_time() - c0) / (time.monotonic() - t0))
    """
    r = env.run(py(code), cpus=0.3)
    if not any(e.endswith(":cpu") for e in r.isolation.limits_enforced):
        pytest.skip("no cpu cgroup on this host")
    assert float(env.out(r)) < 0.5


def test_file_size_limit(env):
    code = """
        import os
        with open('big.bin', 'wb') as f:
            for _ in range(4):
                f.write(b'x' * (1 << 20))
    """
    r = env.run(py(code), max_file_mb=1)
    assert r.returncode != 0
    assert "File too large" in env.err(r)
    assert (env.work / "big.bin").stat().st_size <= 1 << 20


def test_max_rss_is_reported(env):
    """Held for half a second: docker only samples its cgroup (every 0.25 s at most) and has no
    rusage to catch a shorter peak."""
    r = env.run(py("import time; b = bytearray(150 << 20); b[::4096] = b'y' * len(b[::4096]); time.sleep(0.5)"))
    assert r.ok and r.max_rss_mb is not None
    assert 150 <= r.max_rss_mb < 400
    assert r.memory_source == ("cgroup" if env.name == "docker" or _memory_enforced(r) else "rusage")


def _source(env) -> str:
    """What measures a run's CPU time and memory: the run's cgroup where the backend has one."""
    return "cgroup" if env.name == "docker" or env.use_cgroups else "rusage"


def test_cpu_time_of_a_busy_loop(tree_env):
    env = tree_env
    code = """
        import time
        t0 = time.process_time()
        while time.process_time() - t0 < 2.0:
            pass
    """
    r = env.run(py(code))
    assert r.ok, env.err(r)
    assert r.cpu_source == _source(env)
    assert 2.0 <= r.cpu_s < 2.8, r.cpu_s  # the loop, Python's start and (cgroup) the supervisor's


GRANDCHILD = """
    import os, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:               # double-forked into its own session; its parent exits at once
            block = bytearray(600 << 20)
            block[::4096] = b'y' * len(block[::4096])     # touch every page
            t0 = time.process_time()
            while time.process_time() - t0 < 1.0:
                pass
            time.sleep(0.6)              # hold the memory across a few samples
            open('done', 'w').close()
            os._exit(0)
        os._exit(0)
    os.wait()
    deadline = time.monotonic() + 20
    while not os.path.exists('done') and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def test_escaped_grandchild_counts_in_cpu_and_memory(tree_env):
    """A daemon that left its parent is the run's too: its CPU time and its 600 MB."""
    env = tree_env
    r = env.run(py(GRANDCHILD), memory_mb=1024)
    assert r.ok and (env.work / "done").exists(), env.err(r)
    assert (r.cpu_source, r.memory_source) == (_source(env), _source(env))
    assert 1.0 <= r.cpu_s < 2.5, r.cpu_s
    assert 600 <= r.max_rss_mb < 900, r.max_rss_mb


def test_cpus_1_pins_one_cpu_and_concurrent_runs_get_their_own(tree_env, tmp_path, monkeypatch):
    env = tree_env
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a host with two CPUs")
    monkeypatch.setattr(cpus, "LOCK_DIRS", (tmp_path / "cpus",))  # runs of other graders here do not count
    code = "import os, time; print(sorted(os.sched_getaffinity(0))); time.sleep(1)"

    def one(i: int):
        sub = env.tmp / f"pin{i}"
        sub.mkdir()
        return env.sb.run(env.spec(py(code), cpus=1).model_copy(update={"log_dir": sub}))

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, range(2)))
    seen = [json.loads(env.out(r)) for r in results]
    assert all(r.ok for r in results)
    assert [len(s) for s in seen] == [1, 1] and seen[0] != seen[1]
    assert seen == [r.pinned_cpus for r in results]
    assert all(r.notes == [] for r in results)  # nobody shared
    by_cgroup = env.name == "docker" or (env.use_cgroups and cgroups.detect().has("cpuset"))
    assert by_cgroup == any(e.endswith(":cpuset") for e in results[0].isolation.limits_enforced)


def test_grader_exception_mid_run_leaves_nothing(tree_env):
    env = tree_env
    tag = marker()

    class Boom(Exception):
        pass

    def alarm(signum, frame):
        seen_running.extend(processes_with(tag))
        raise Boom

    seen_running: list[int] = []
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.7)
    t0 = time.monotonic()
    try:
        with pytest.raises(Boom):
            env.run(py(SLEEPER, str(env.sb.path_for(env.workdir)) + "/started", tag), wall_time_s=60)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < 5
    assert len(seen_running) >= 2  # the command and its setsid'd daemon were running when the grader failed
    if env.name != "docker":  # docker copies the working copy out only after a run that ends
        assert (env.work / "started").exists()
    deadline = time.monotonic() + 2
    while processes_with(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(tag) == []


def test_killed_grader_leaves_no_process(tree_env, tmp_path):
    """The grader itself dies (SIGKILL) mid-run: the supervisor sees EOF on its lifeline and kills
    the run (bwrap: also --die-with-parent)."""
    env = tree_env
    tag = marker()
    cls = {"local": "LocalSandbox", "process": "ProcessSandbox", "docker": "DockerSandbox"}[env.name]
    options = "" if env.name == "docker" else f"use_cgroups={env.use_cgroups}"
    remapped = env.name == "docker" or (env.name == "local" and env.sb.usable)
    started = "/sandbox/work/started" if remapped else str(env.work / "started")
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parents[2])!r})
from sandbox import RunSpec, Mount, Limits
from sandbox.local import LocalSandbox
from sandbox.process import ProcessSandbox
from sandbox.docker import DockerSandbox
sb = {cls}({options})
spec = RunSpec(argv={[env.python, *py(SLEEPER, started, tag)[1:]]!r},
               workdir=Mount(source={str(env.work)!r}, target="/sandbox/work", writable=True),
               log_dir={str(tmp_path / 'glogs')!r}, limits=Limits(wall_time_s=60))
sb.run(spec)
"""
    grader = subprocess.Popen([sys.executable, "-c", script])
    try:
        # Wait until the command runs. (Killed during bwrap's own setup, bwrap's monitor can leave
        # its namespace init blocked before running anything: see sandbox/README.md.)
        def running() -> bool:
            """The daemon child has started. On docker its file is in the container's tmpfs, but no
            wrapper there carries the tag: two tagged processes are the command and its child.
            (bwrap's own argv carries the tag, so locally only the file tells.)"""
            if env.name == "docker":
                return len(processes_with(tag)) >= 2
            return (env.work / "started").exists()

        deadline = time.monotonic() + 10
        while not running() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert running()
    finally:
        grader.kill()
        grader.wait()
    deadline = time.monotonic() + 3
    while processes_with(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(tag) == []
    # Its cgroup and private HOME are stale now: the next grader process removes them.
    remove_stale_homes.__wrapped__()
    assert list(Path(tempfile.gettempdir()).glob(f"tunegrade-home-{grader.pid}-*")) == []
    stale = [p for h in cgroups.detect().hierarchies for p in h.parent.iterdir()
             if p.name.startswith(f"tunegrade-{grader.pid}-")]
    assert stale == []
    if env.name == "docker":  # its stopped container and volumes are left for the sweeper
        swept = sweep()
        assert {s.kind for s in swept if s.reason == f"grader pid {grader.pid} on this host is gone"} == {
            "container", "volume"}
        assert all(s.removed for s in swept if str(grader.pid) in s.reason)


def test_bad_specs_are_rejected(env, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        env.run(["true"], mounts=[Mount(source=tmp_path / "missing", target="/sandbox/m")])
    with pytest.raises(ValueError, match="absolute"):
        env.run(["true"], mounts=[Mount(source=tmp_path, target="relative/path")])
    with pytest.raises(ValueError, match="log_dir"):
        env.sb.run(env.spec(["true"]).model_copy(update={"log_dir": env.work / "logs"}))


def test_concurrent_runs_are_independent(env):
    def one(i: int):
        sub = env.tmp / f"c{i}"
        sub.mkdir()
        spec = env.spec(["sh", "-c", f"echo run-{i}; exit {i}"]).model_copy(update={"log_dir": sub})
        return env.sb.run(spec)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert [r.returncode for r in results] == [0, 1, 2, 3]
    assert [r.stdout_path.read_text() for r in results] == [f"run-{i}\n" for i in range(4)]


def test_isolation_describes_the_backend(env):
    iso = env.sb.isolation()
    assert iso.backend == env.name
    assert "rlimit:fsize" in iso.limits_enforced and "wall-time" in iso.limits_enforced
    if env.name == "local":
        assert (iso.mechanism, iso.level) == ("bubblewrap", "full")
        assert {"user", "pid", "network", "mount", "ipc", "uts"} <= set(iso.namespaces)
    elif env.name == "docker":
        assert (iso.mechanism, iso.level) == ("docker", "full")
        assert {"pid", "network", "mount", "ipc", "uts"} <= set(iso.namespaces)
        assert iso.image_digest is not None and iso.image_digest.startswith("sha256:")
    else:
        assert (iso.mechanism, iso.level, iso.namespaces) == ("process-group", "reduced", [])
        text = " ".join(iso.notes)
        for word in ("filesystem", "network", "process isolation"):
            assert word in text
    r = env.run(["true"])
    assert r.isolation is not None and r.isolation.backend == env.name
    assert r.isolation.image_digest == iso.image_digest


def test_unavailable_is_an_exception_not_a_result(env, monkeypatch):
    """An infrastructure failure (here: the interpreter running the supervisor is missing; for
    docker, the image vanished from the engine) raises."""
    import sandbox.local
    import sandbox.process

    if isinstance(env.sb, DockerSandbox):
        env.sb.image = "tunegrade-test/vanished:0"

    def broken(*args):
        return ["/nonexistent/python-for-shim", "-c", "pass"]

    monkeypatch.setattr(sandbox.local, "shim_argv", broken)
    monkeypatch.setattr(sandbox.process, "shim_argv", broken)
    with pytest.raises(SandboxUnavailable):
        env.run(["true"])


def test_trivial_run_is_fast(env):
    env.run(["true"])
    t0 = time.monotonic()
    for _ in range(3):
        assert env.run(["true"]).ok
    assert (time.monotonic() - t0) / 3 < 1.0

