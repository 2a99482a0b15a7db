"""The docker backend without an engine: crafted tars into the extractor, host folders into
tars, the --gpus grammar, the sweeper's staleness rule, and an engine that does not answer."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from sandbox import SandboxUnavailable
from sandbox.docker import DockerSandbox, _check_gpus, device_request
from sandbox.docker_archive import extract_artifacts, pack_dir
from sandbox.docker_sweep import LABEL_CREATED, LABEL_HOST, LABEL_PID, LABEL_PID_START, run_labels, stale_reason
from sandbox.registry import get_backend


def _tar(*members: tuple[str, str, bytes | str]) -> io.BytesIO:
    """A tar like the engine's get_archive of /sandbox/out: ("file"|"dir"|"sym"|"hard"|"fifo"|"chr", name, data)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 10001
            if kind == "file":
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]
            if kind in ("sym", "hard"):
                info.linkname = data
            tar.addfile(info)
    buf.seek(0)
    return buf


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): ("dir" if p.is_dir() else p.read_text())
            for p in sorted(root.rglob("*"))}


def test_plain_files_and_folders_are_extracted_below_the_top_folder(tmp_path):
    notes = extract_artifacts(_tar(("dir", "out", ""), ("file", "out/a.txt", b"A"), ("dir", "out/sub", ""),
                                   ("file", "out/sub/b.txt", b"B"), ("file", "out/deep/c.txt", b"C")),
                              tmp_path, max_bytes=1 << 20)
    assert notes == []
    assert _tree(tmp_path) == {"a.txt": "A", "deep": "dir", "deep/c.txt": "C", "sub": "dir", "sub/b.txt": "B"}


@pytest.mark.parametrize(("member", "why"), [
    (("sym", "out/link", "/etc/shadow"), "symlink -> /etc/shadow"),
    (("hard", "out/hard", "out/a.txt"), "hard link -> out/a.txt"),
    (("fifo", "out/pipe", ""), "special file"),
    (("chr", "out/dev", ""), "special file"),
    (("file", "/etc/cron.d/evil", b"x"), "absolute or malformed path"),
    (("file", "out/../../escape.txt", b"x"), "path with '..'"),
    (("file", "elsewhere/x.txt", b"x"), "outside the archive's folder 'out'"),
])
def test_links_specials_and_escapes_are_refused_and_noted(tmp_path, member, why):
    dest = tmp_path / "dest"
    dest.mkdir()
    notes = extract_artifacts(_tar(("dir", "out", ""), ("file", "out/a.txt", b"A"), member), dest, max_bytes=1 << 20)
    assert len(notes) == 1 and notes[0].startswith("refused artifact") and notes[0].endswith(why), notes
    assert _tree(dest) == {"a.txt": "A"}
    assert sorted(os.listdir(tmp_path)) == ["dest"]


def test_a_refused_link_is_never_written_through(tmp_path):
    """A symlinked folder followed by a file below it: the file lands in a real folder, never the target."""
    target = tmp_path / "target"
    target.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    notes = extract_artifacts(_tar(("dir", "out", ""), ("sym", "out/d", str(target)), ("file", "out/d/x.txt", b"X")),
                              dest, max_bytes=1 << 20)
    assert notes == [f"refused artifact d: symlink -> {target}"]
    assert list(target.iterdir()) == []
    assert not (dest / "d").is_symlink() and (dest / "d" / "x.txt").read_text() == "X"


def test_oversize_and_too_many_files_discard_everything(tmp_path):
    big = _tar(("dir", "out", ""), ("file", "out/a.bin", b"a" * 600), ("file", "out/b.bin", b"b" * 600))
    assert extract_artifacts(big, tmp_path, max_bytes=1000) == ["artifacts in out/ discarded: over 0 MiB"]
    assert list(tmp_path.iterdir()) == []
    many = _tar(("dir", "out", ""), *(("file", f"out/{i}.txt", b"x") for i in range(5)))
    assert extract_artifacts(many, tmp_path, max_bytes=1 << 20, max_files=3) == [
        "artifacts in out/ discarded: more than 3 files"]
    assert list(tmp_path.iterdir()) == []


def test_modes_keep_only_the_executable_bit(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, mode in (("out/run.sh", 0o4755), ("out/data.txt", 0o666)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = 1, mode
            tar.addfile(info, io.BytesIO(b"x"))
    buf.seek(0)
    assert extract_artifacts(buf, tmp_path, max_bytes=1 << 20) == []
    assert (tmp_path / "run.sh").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "data.txt").stat().st_mode & 0o7777 == 0o644


def test_pack_dir_owns_everything_by_the_sandbox_user_and_keeps_links_as_links(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.py").write_text("print(1)")
    (tmp_path / "run.sh").write_text("true")
    (tmp_path / "run.sh").chmod(0o755)
    (tmp_path / "link").symlink_to("/etc/passwd")
    os.mkfifo(tmp_path / "fifo")
    with pack_dir(tmp_path, 10001, 10001) as spool, tarfile.open(fileobj=spool) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"sub", "sub/a.py", "run.sh", "link"}
    assert {(m.uid, m.gid) for m in members.values()} == {(10001, 10001)}
    assert members["link"].issym() and members["link"].size == 0
    assert members["run.sh"].mode == 0o755


@pytest.mark.parametrize(("gpus", "count", "expected"), [
    (None, 0, []),
    ("all", 0, []),
    (None, 2, [{"Count": 2, "DeviceIDs": []}]),
    ("all", 1, [{"Count": -1, "DeviceIDs": []}]),
    ("3", 1, [{"Count": 3, "DeviceIDs": []}]),
    ("device=0,2", 1, [{"Count": 0, "DeviceIDs": ["0", "2"]}]),
    ("GPU-1a2b", 1, [{"Count": 0, "DeviceIDs": ["GPU-1a2b"]}]),
])
def test_gpus_become_device_requests_only_for_runs_that_ask(gpus, count, expected):
    got = [{"Count": r["Count"], "DeviceIDs": r["DeviceIDs"]} for r in device_request(gpus, count)]
    assert got == expected
    assert all(r["Capabilities"] == [["gpu"]] for r in device_request(gpus, count))


@pytest.mark.parametrize("bad", ["", "x;y", "device=", "0,,1", "../dev"])
def test_bad_gpus_are_refused(bad):
    with pytest.raises(ValueError, match="expected all, a count, or device="):
        _check_gpus(bad)


def test_options_a_backend_does_not_take_are_refused():
    with pytest.raises(ValueError, match="sandbox backend 'process' takes no option 'gpus'"):
        get_backend("process", gpus="all")


def test_stale_when_the_grader_is_gone_or_old():
    now = time.time()
    mine = run_labels("r1")
    assert stale_reason(mine, 3600, now) is None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    gone = mine | {LABEL_PID: dead.stdout.strip()}
    assert stale_reason(gone, 3600, now) == f"grader pid {dead.stdout.strip()} on this host is gone"
    reused = mine | {LABEL_PID_START: "1"}  # same pid, another start time: a reused pid
    assert stale_reason(reused, 3600, now) == f"grader pid {os.getpid()} on this host is gone"
    assert stale_reason(mine | {LABEL_CREATED: str(int(now) - 7200)}, 3600, now) == "created 2.0 h ago"
    elsewhere = mine | {LABEL_HOST: "another-host", LABEL_PID: "1"}
    assert stale_reason(elsewhere, 3600, now) is None
    assert stale_reason({LABEL_HOST: "another-host"}, 3600, now) == "no creation time label"


def test_an_unreachable_engine_is_unavailable_not_a_result(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/tunegrade-test/docker.sock")
    with pytest.raises(SandboxUnavailable, match="no Docker engine answers"):
        DockerSandbox(image="any/image:1")


def test_cli_refuses_backend_options_a_backend_does_not_take(tmp_path, capsys):
    from grader.cli import main

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
    args = ["--tasks-dir", str(fixtures), "grade", str(fixtures / "echo" / "solutions" / "good"), "--task", "echo",
            "--out", str(tmp_path / "o")]
    assert main([*args, "--backend", "process", "--gpus", "all"]) == 2
    assert capsys.readouterr().err.strip() == "tunegrade: error: sandbox backend 'process' takes no option 'gpus'"
    assert main([*args, "--backend", "docker", "--gpus", "x;y"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tunegrade: error: --gpus 'x;y': expected all, a count, or device=ID[,ID...]")
