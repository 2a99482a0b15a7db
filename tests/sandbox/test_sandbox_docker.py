"""The docker backend against a real engine: the hardening as seen from inside a run, files in and
out, timeouts, OOM, the sweeper. Skipped without an engine and image, failed instead where
TUNEGRADE_REQUIRE_DOCKER=1 (CI). Each test also checks that no container or volume of its runs is
left (conftest.no_container_left_behind)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import docker
import pytest
from sandbox_helpers import Env, file_notes, py, require_docker

from grader.cli import main
from sandbox import Mount, SandboxUnavailable
from sandbox.docker import IMAGE_ENV, PIDS_OVERHEAD, SANDBOX_UID, DockerSandbox
from sandbox.docker_sweep import LABEL_PID, run_labels, sweep

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def _engine():
    require_docker()


@pytest.fixture
def env(tmp_path) -> Env:
    return Env("docker", tmp_path)


def _mine() -> dict:
    return {"label": [f"{LABEL_PID}={os.getpid()}"]}


INSIDE = """
    import errno, json, os, resource
    def first(*paths):
        for p in paths:
            if os.path.exists(p):
                return open(p).read().strip()
    status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if ':' in l)
    try:
        open('/planted', 'w')
        root = 'writable'
    except OSError as exc:
        root = errno.errorcode[exc.errno]
    tmp, shm = os.statvfs('/tmp'), os.statvfs('/dev/shm')
    script = '/tmp/x.sh'
    open(script, 'w').write('#!/bin/sh\\necho exec-ok\\n')
    os.chmod(script, 0o755)
    print(json.dumps({
        'uid': os.getuid(), 'gid': os.getgid(), 'euid': os.geteuid(), 'groups': os.getgroups(),
        'cap_eff': status['CapEff'].strip(), 'cap_bnd': status['CapBnd'].strip(),
        'no_new_privs': status['NoNewPrivs'].strip(), 'seccomp': status['Seccomp'].strip(),
        'root': root, 'tmp_mb': tmp.f_blocks * tmp.f_frsize >> 20, 'shm_mb': shm.f_blocks * shm.f_frsize >> 20,
        'tmp_exec': os.popen(script).read().strip(),
        'interfaces': sorted(os.listdir('/sys/class/net')),
        'routes': open('/proc/net/route').read().splitlines()[1:],
        'routes6': open('/proc/net/ipv6_route').read().splitlines() if os.path.exists('/proc/net/ipv6_route') else [],
        'pids_max': first('/sys/fs/cgroup/pids/pids.max', '/sys/fs/cgroup/pids.max'),
        'mem_max': first('/sys/fs/cgroup/memory/memory.limit_in_bytes', '/sys/fs/cgroup/memory.max'),
        'memsw_max': first('/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes', '/sys/fs/cgroup/memory.swap.max'),
        'fsize': resource.getrlimit(resource.RLIMIT_FSIZE), 'nofile': resource.getrlimit(resource.RLIMIT_NOFILE),
        'core': resource.getrlimit(resource.RLIMIT_CORE), 'hostname': os.uname().nodename,
    }))
"""


def test_hardening_is_applied_inside_a_run(env):
    r = env.run(py(INSIDE), memory_mb=300, pids=50, disk_mb=64, max_file_mb=8)
    assert r.ok, env.err(r)
    seen = json.loads(env.out(r))
    assert seen["uid"] == seen["euid"] == seen["gid"] == SANDBOX_UID and seen["uid"] != 0
    assert seen["groups"] in ([], [SANDBOX_UID])
    assert seen["cap_eff"] == seen["cap_bnd"] == "0000000000000000"
    assert (seen["no_new_privs"], seen["seccomp"]) == ("1", "2")  # seccomp 2 = filter mode (the default profile)
    assert seen["root"] == "EROFS"
    assert seen["tmp_mb"] == 64 and seen["tmp_exec"] == "exec-ok"
    assert seen["shm_mb"] == 300 // 4
    assert seen["interfaces"] == ["lo"] and seen["routes"] == [] and not any("lo" not in x for x in seen["routes6"])
    assert int(seen["pids_max"]) == 50 + PIDS_OVERHEAD
    assert int(seen["mem_max"]) == 300 << 20
    assert seen["memsw_max"] in (str(300 << 20), "0")  # v1: memory+swap = memory; v2: no swap at all
    assert seen["fsize"] == [8 << 20] * 2 and seen["nofile"] == [1024, 1024] and seen["core"] == [0, 0]
    assert seen["hostname"] == "sandbox"


def test_files_go_in_owned_by_the_sandbox_user_and_come_back(env, tmp_path):
    (env.work / "pkg").mkdir()
    (env.work / "pkg" / "mod.py").write_text("VALUE = 41\n")
    (env.work / "old.txt").write_text("to be deleted")
    (env.work / "run.sh").write_text("#!/bin/sh\necho shell-ran\n")
    (env.work / "run.sh").chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    m = Mount(source=out, target="/sandbox/out", writable=True)
    code = """
        import os, sys
        sys.path.insert(0, '.')
        from pkg.mod import VALUE
        st = os.stat('pkg/mod.py')
        print(VALUE + 1, st.st_uid, st.st_gid, os.popen('./run.sh').read().strip())
        os.remove('old.txt')
        os.makedirs('/sandbox/out/adapter/nested')
        open('/sandbox/out/adapter/nested/w.bin', 'wb').write(bytes(range(256)) * 4096)
        open('/sandbox/out/tool.sh', 'w').write('#!/bin/sh\\n')
        os.chmod('/sandbox/out/tool.sh', 0o4755)
    """
    r = env.run(py(code), mounts=[m])
    assert r.ok, env.err(r)
    assert env.out(r).split() == ["42", str(SANDBOX_UID), str(SANDBOX_UID), "shell-ran"]
    assert not (env.work / "old.txt").exists() and (env.work / "pkg" / "mod.py").exists()
    assert (out / "adapter" / "nested" / "w.bin").read_bytes() == bytes(range(256)) * 4096
    assert (out / "tool.sh").stat().st_mode & 0o7777 == 0o755  # no setuid bit crosses back
    assert file_notes(r) == []


def test_artifact_links_and_special_files_are_refused(env, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    code = """
        import os
        os.symlink('/etc/passwd', '/sandbox/out/passwd')
        open('/sandbox/out/real.txt', 'w').write('real')
        os.link('/sandbox/out/real.txt', '/sandbox/out/hard.txt')
        os.mkfifo('/sandbox/out/fifo')
    """
    r = env.run(py(code), mounts=[Mount(source=out, target="/sandbox/out", writable=True)])
    assert r.ok, env.err(r)
    kept = os.listdir(out)  # the tar holds the first of two linked names as a file, the other as a link
    assert len(kept) == 1 and kept[0] in ("real.txt", "hard.txt") and (out / kept[0]).read_text() == "real"
    assert any(n == "refused artifact passwd: symlink -> /etc/passwd" for n in r.notes), r.notes
    assert any(n.startswith("refused artifact") and "hard link" in n for n in r.notes), r.notes
    assert "refused artifact fifo: special file" in r.notes


def test_writable_folders_are_capped_at_disk_mb(env):
    code = """
        import errno
        n = 0
        try:
            with open('fill.bin', 'wb') as f:
                for _ in range(64):
                    f.write(b'x' * (1 << 20))
                    f.flush()
                    n += 1
        except OSError as exc:
            print(errno.errorcode[exc.errno], n)
    """
    r = env.run(py(code), disk_mb=8)
    assert r.ok, env.err(r)
    code_name, written = env.out(r).split()
    assert code_name == "ENOSPC" and int(written) <= 8


def test_timeout_kills_and_removes_the_container(env):
    t0 = time.monotonic()
    r = env.run(["sleep", "60"], wall_time_s=1)
    assert r.timed_out and r.returncode is None and not r.ok
    assert time.monotonic() - t0 < 1 + env.overhead_s
    api = docker.from_env().api
    assert api.containers(all=True, filters=_mine()) == []


def test_exit_137_counts_as_out_of_memory(env):
    r = env.run(["sh", "-c", "exit 137"])
    assert (r.returncode, r.oom_killed, r.ok) == (137, True, False)


def test_a_memory_bomb_is_reported_as_out_of_memory(env):
    bomb = """
        chunks = []
        while True:
            chunks.append(bytearray(b'x' * (16 << 20)))
    """
    r = env.run(py(bomb), memory_mb=128, wall_time_s=60)
    assert r.oom_killed and not r.timed_out and not r.ok
    # Sampled: the last burst before the kill (a fraction of a second) may fall between samples.
    assert r.memory_source == "cgroup" and r.max_rss_mb is not None and r.max_rss_mb <= 128


def test_a_missing_image_is_unavailable_not_a_result():
    with pytest.raises(SandboxUnavailable, match="tunegrade sandbox build-image"):
        DockerSandbox(image="tunegrade-test/never-built:0")


def test_the_image_comes_from_the_option_then_the_environment(monkeypatch):
    image = DockerSandbox().image
    monkeypatch.setenv(IMAGE_ENV, "tunegrade-test/never-built:0")
    with pytest.raises(SandboxUnavailable, match="never-built"):
        DockerSandbox()
    assert DockerSandbox(image=image).image == image


def test_gpus_without_an_nvidia_runtime_are_an_infrastructure_error(env):
    info = docker.from_env().info()
    if "nvidia" in (info.get("Runtimes") or {}) or info.get("CDISpecDirs"):
        pytest.skip("this engine has a GPU runtime")
    env.sb = DockerSandbox(image=env.sb.image, gpus="all")
    with pytest.raises(SandboxUnavailable, match="could not set up the run"):
        env.run(["true"], gpus=1)
    assert env.run(["true"]).ok  # a run that asks for no GPU gets none, and runs


def _crashed_grader_leftovers(image: str) -> tuple[str, str]:
    """A stopped container and a volume labelled by a grader process that has exited."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    labels = run_labels("crashed") | {LABEL_PID: dead.stdout.strip()}
    api = docker.from_env().api
    volume = api.create_volume(f"tunegrade-test-crashed-{os.getpid()}", labels=labels)["Name"]
    container = api.create_container(image, command=["true"], labels=labels,
                                     host_config=api.create_host_config(network_mode="none"))["Id"]
    return container, volume


def test_sweep_removes_what_a_crashed_grader_left_and_nothing_live(env, capsys):
    api = docker.from_env().api
    container, volume = _crashed_grader_leftovers(env.sb.image)
    live = api.create_container(env.sb.image, command=["true"], labels=run_labels("live"),
                                host_config=api.create_host_config(network_mode="none"))["Id"]
    try:
        listed = {(s.kind, s.name) for s in sweep(dry_run=True) if not s.removed}
        assert ("volume", volume) in listed and any(k == "container" for k, _ in listed)
        assert api.inspect_container(container) and api.inspect_volume(volume)

        assert main(["sandbox", "sweep"]) == 0
        printed = capsys.readouterr().out
        assert f"removed volume {volume} (grader pid" in printed and "removed container" in printed
        with pytest.raises(docker.errors.NotFound):
            api.inspect_container(container)
        with pytest.raises(docker.errors.NotFound):
            api.inspect_volume(volume)
        assert api.inspect_container(live)["Id"] == live  # its grader (this test) is alive and recent
    finally:
        api.remove_container(live, force=True)


def test_sweep_older_than_removes_even_a_live_graders_leftovers():
    api = docker.from_env().api
    image = DockerSandbox().image
    labels = run_labels("old") | {"tunegrade.created": str(int(time.time()) - 3 * 3600)}
    old = api.create_container(image, command=["true"], labels=labels,
                               host_config=api.create_host_config(network_mode="none"))["Id"]
    try:
        sweep(older_than_s=6 * 3600)
        assert api.inspect_container(old)["Id"] == old
        swept = sweep(older_than_s=2 * 3600)
        assert any(s.kind == "container" and s.reason == "created 3.0 h ago" and s.removed for s in swept)
        with pytest.raises(docker.errors.NotFound):
            api.inspect_container(old)
    finally:
        try:
            api.remove_container(old, force=True)
        except docker.errors.NotFound:
            pass


def test_the_digest_is_the_images_id_and_on_every_result(env):
    digest = docker.from_env().api.inspect_image(env.sb.image)["Id"]
    assert env.sb.isolation().image_digest == digest
    assert env.run(["true"]).isolation.image_digest == digest
