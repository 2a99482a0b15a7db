"""What only the bubblewrap backend contains: identity, network, filesystem view, capabilities.

These run real bubblewrap; they are skipped where it cannot run (CI installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from sandbox_helpers import Env, needs_bwrap, py

from sandbox import Mount, SandboxUnavailable
from sandbox.local import LocalSandbox, python_paths

pytestmark = [needs_bwrap, pytest.mark.bwrap]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path) -> Env:
    return Env("local", tmp_path)


def _json(env: Env, code: str, **kw) -> dict:
    r = env.run(py(code), **kw)
    assert r.ok, env.err(r)
    return json.loads(env.out(r))


def test_identity_is_nobody_without_capabilities(env):
    seen = _json(env, """
        import os, json
        status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if ':' in l)
        print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'euid': os.geteuid(),
                          'groups': os.getgroups(), 'pid': os.getpid(), 'host': os.uname().nodename,
                          **{k: status[k].strip() for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')}}))
    """)
    assert (seen["uid"], seen["gid"], seen["euid"]) == (65534, 65534, 65534)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(seen[cap], 16) == 0, cap
    assert seen["pid"] < 10  # own PID namespace: bwrap's init is 1, the supervisor 2
    assert seen["host"] == "sandbox"


def test_no_network_but_loopback(env):
    seen = _json(env, """
        import json, os, socket
        ifaces = sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:])
        try:
            socket.create_connection(('1.1.1.1', 53), timeout=2)
            outside = 'connected'
        except OSError as exc:
            outside = type(exc).__name__
        print(json.dumps({'ifaces': ifaces, 'outside': outside}))
    """)
    assert seen["ifaces"] == ["lo"]
    assert seen["outside"] != "connected"


def test_host_filesystem_is_not_visible(env, tmp_path):
    secret = tmp_path / "host-secret.txt"
    secret.write_text("s3cret")
    host_root_entries = [str(p) for p in Path("/root").iterdir()] if os.access("/root", os.R_OK) else []
    probes = [str(secret), str(REPO / "sandbox" / "base.py"), str(REPO / "pyproject.toml"), str(Path(__file__)),
              "/home", "/var", "/run", "/srv", "/opt", "/mnt", "/etc/shadow", "/etc/gshadow", "/etc/sudoers",
              "/var/run/docker.sock", "/run/docker.sock", "/sys/fs/cgroup", "/etc/environment",
              *host_root_entries]
    visible_python = python_paths()
    probes = [p for p in probes if os.path.exists(p) and not any(
        p == v or p.startswith(v + "/") or v.startswith(p + "/") for v in visible_python)]
    seen = _json(env, """
        import json, os, sys
        print(json.dumps({p: os.path.exists(p) for p in sys.argv[1:]}))
    """.replace("sys.argv[1:]", json.dumps(probes)))
    assert [p for p, exists in seen.items() if exists] == []
    assert len(probes) >= 6  # the check is not vacuous: these all exist on the host


def test_only_the_python_environment_is_visible_from_host_dirs(env):
    """/root, /work etc. exist only as the parents of the bound interpreter paths."""
    seen = _json(env, """
        import json, os
        print(json.dumps(sorted(os.listdir('/'))))
    """)
    allowed = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "proc", "dev", "tmp", "sandbox"}
    allowed |= {p.split("/")[1] for p in python_paths()}
    assert set(seen) <= allowed, set(seen) - allowed


def test_etc_is_minimal_and_synthetic(env):
    seen = _json(env, """
        import json, os, pwd
        print(json.dumps({'etc': sorted(os.listdir('/etc')), 'me': pwd.getpwuid(os.getuid()).pw_name,
                          'passwd': open('/etc/passwd').read()}))
    """)
    assert seen["me"] == "nobody"
    assert "root:x:0:0" in seen["passwd"] and seen["passwd"].count("\n") == 2  # not the host's
    for name in ("shadow", "gshadow", "sudoers", "ssh", "environment", "machine-id"):
        assert name not in seen["etc"]


def test_system_is_read_only_and_tmp_is_private(env, tmp_path):
    (Path("/tmp") / "tunegrade-host-tmp-probe").write_text("host")
    try:
        seen = _json(env, """
            import json, os
            out = {}
            for path in ('/usr/tunegrade-x', '/etc/tunegrade-x', '/tunegrade-x', '/dev/tunegrade-x',
                         sys_prefix + '/tunegrade-x', '/tmp/tunegrade-x', '/dev/shm/tunegrade-x'):
                try:
                    open(path, 'w').write('x')
                    out[path] = 'written'
                except OSError as exc:
                    out[path] = exc.strerror
            out['host_tmp_visible'] = os.path.exists('/tmp/tunegrade-host-tmp-probe')
            st = os.statvfs('/tmp')
            out['tmp_mb'] = st.f_blocks * st.f_frsize // (1 << 20)
            print(json.dumps(out))
        """.replace("sys_prefix", repr(sys.prefix)), memory_mb=300)
    finally:
        (Path("/tmp") / "tunegrade-host-tmp-probe").unlink()
    for path in ("/usr/tunegrade-x", "/etc/tunegrade-x", "/tunegrade-x", "/dev/tunegrade-x", sys.prefix + "/tunegrade-x"):
        assert seen[path] == "Read-only file system", path
    assert seen["/tmp/tunegrade-x"] == seen["/dev/shm/tunegrade-x"] == "written"
    assert seen["host_tmp_visible"] is False
    assert seen["tmp_mb"] == 300  # tmpfs sized to limits.memory_mb
    assert not Path(sys.prefix, "tunegrade-x").exists()


def test_no_new_user_namespaces(env):
    if not shutil.which("unshare"):
        pytest.skip("util-linux unshare not installed")
    r = env.run(["unshare", "--user", "--map-root-user", "id"])
    assert r.returncode != 0 and "uid=0" not in env.out(r)


def test_other_processes_are_invisible(env):
    seen = _json(env, """
        import json, os
        print(json.dumps(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())))
    """)
    assert seen == [1, 2, 3]  # bwrap's init, the supervisor, this Python: nothing of the host


def test_command_start_failure_vs_sandbox_failure(env, monkeypatch):
    # The candidate's command missing: a result (127), the sandbox ran.
    r = env.run(["definitely-not-a-command"])
    assert r.returncode == 127
    # bubblewrap itself failing (here: an option it rejects) is SandboxUnavailable with its message.
    import sandbox.local

    real = sandbox.local._bwrap_argv

    def broken(*args, **kw):
        argv = real(*args, **kw)
        return [argv[0], "--no-such-bwrap-option", *argv[1:]]

    monkeypatch.setattr(sandbox.local, "_bwrap_argv", broken)
    with pytest.raises(SandboxUnavailable, match="no-such-bwrap-option"):
        env.run(["true"])


def test_mount_targets_that_shadow_the_sandbox_are_rejected(env, tmp_path):
    for target in ("/usr/share/x", "/etc", "/proc/x", "/tmp", sys.prefix, "/work" if sys.prefix.startswith("/work/") else "/dev"):
        with pytest.raises(ValueError, match="overlaps"):
            env.run(["true"], mounts=[Mount(source=tmp_path, target=target)])
    r = env.run(["ls", "/tmp/in"], mounts=[Mount(source=tmp_path, target="/tmp/in")])
    assert r.ok


def test_fallback_when_bubblewrap_is_missing(tmp_path):
    sb = LocalSandbox(bwrap="/nonexistent/bwrap")
    iso = sb.isolation()
    assert (iso.backend, iso.level, iso.mechanism, iso.namespaces) == ("local", "reduced", "process-group", [])
    assert "bubblewrap is not usable" in iso.notes[0] and "/nonexistent/bwrap" in iso.notes[0]
    env = Env("local", tmp_path, sandbox=sb)
    assert sb.path_for(env.workdir) == str(env.work)
    r = env.run(py("import os; print(os.getcwd())"))
    assert r.ok and env.out(r).strip() == str(env.work)
    assert r.isolation.level == "reduced"


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
                    reason="torch/transformers not installed in the grader's environment")
def test_torch_and_transformers_work_under_default_limits(env):
    code = """
        import json, torch, transformers
        x = torch.randn(64, 64)
        print(json.dumps({'torch': torch.__version__, 'sum': float((x @ x).sum()), 'threads': torch.get_num_threads(),
                          'transformers': transformers.__version__, 'cuda': torch.cuda.is_available()}))
    """
    t0 = time.monotonic()
    r = env.run(py(code), memory_mb=4096, wall_time_s=120)  # the Limits defaults
    assert r.ok, env.err(r)[-2000:]
    seen = json.loads(env.out(r).splitlines()[-1])
    assert seen["threads"] == 2 and seen["cuda"] is False
    assert time.monotonic() - t0 < 60


@pytest.mark.gpu
@pytest.mark.skipif(not Path("/dev/nvidia0").exists(), reason="no NVIDIA GPU on this host")
def test_gpu_passthrough(env):  # pragma: no cover - needs a GPU host
    r = env.run(py("import torch; print(torch.cuda.is_available(), torch.cuda.device_count())"), gpus=1,
                memory_mb=8192, wall_time_s=120)
    assert r.ok, env.err(r)[-2000:]
    assert env.out(r).split() == ["True", "1"]


@pytest.mark.gpu
@pytest.mark.skipif(not Path("/dev/nvidia0").exists(), reason="no NVIDIA GPU on this host")
def test_gpu_figures(env):  # pragma: no cover - needs a GPU host
    code = "import time, torch; x = torch.ones(1 << 30, dtype=torch.uint8, device='cuda'); time.sleep(5)"
    r = env.run(py(code), gpus=1, memory_mb=8192, wall_time_s=120)
    assert r.ok, env.err(r)[-2000:]
    assert r.gpu_s == r.duration_s  # one GPU for the whole run
    if shutil.which("nvidia-smi") and any(e.startswith("cgroup") for e in r.isolation.limits_enforced):
        assert r.gpu_memory_mb is not None and r.gpu_memory_mb >= 1024
