"""Intake turns hostile submissions away with one clear BadInput and writes nothing outside dest."""

from __future__ import annotations

import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from grader import intake as intake_mod
from grader.errors import BadInput
from grader.intake import intake, tree_sha256


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture
def sandbox_dir(tmp_path: Path) -> Path:
    """dest lives in a folder of its own, so anything written beside it is detectable."""
    (tmp_path / "area").mkdir()
    return tmp_path / "area"


def test_directory_copy_skips_git_and_caches(tmp_path: Path, sandbox_dir: Path) -> None:
    src = tmp_path / "sub"
    (src / "__pycache__").mkdir(parents=True)
    (src / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (src / "prepare.py").write_text("print(1)\n")
    sub = intake(src, sandbox_dir / "dest")
    assert _files_under(sub.root) == {"prepare.py"}
    assert sub.source == "directory:sub" and sub.name == "sub"


def test_hash_is_canonical_across_forms(tmp_path: Path, sandbox_dir: Path) -> None:
    src = tmp_path / "sub"
    (src / "pkg").mkdir(parents=True)
    (src / "prepare.py").write_text("print(1)\n")
    (src / "pkg" / "util.py").write_text("X = 2\n")
    archive = tmp_path / "sub.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="sub")
    zpath = tmp_path / "sub.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(src / "prepare.py", "prepare.py")
        zf.write(src / "pkg" / "util.py", "pkg/util.py")
    hashes = {
        intake(src, sandbox_dir / "a").sha256,
        intake(archive, sandbox_dir / "b").sha256,
        intake(zpath, sandbox_dir / "c").sha256,
    }
    assert len(hashes) == 1
    (src / "prepare.py").write_text("print(2)\n")
    assert tree_sha256(src) not in hashes


def test_git_repository_head_and_ref(tmp_path: Path, sandbox_dir: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "prepare.py").write_text("v1\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    subprocess.run([*git, "tag", "v1"], check=True)
    (repo / "prepare.py").write_text("v2\n")
    subprocess.run([*git, "commit", "-qam", "v2"], check=True)
    (repo / "prepare.py").write_text("uncommitted\n")
    head = intake(repo, sandbox_dir / "head")
    assert (head.root / "prepare.py").read_text() == "v2\n"
    assert head.source == "git:HEAD:repo"
    tagged = intake(repo, sandbox_dir / "tag", ref="v1")
    assert (tagged.root / "prepare.py").read_text() == "v1\n"
    with pytest.raises(BadInput, match="cannot read git ref 'nope'"):
        intake(repo, sandbox_dir / "bad", ref="nope")


@pytest.mark.parametrize(
    ("name", "members", "message"),
    [
        ("traversal", [_file("../evil.py", b"x")], "path escapes the submission: '../evil.py'"),
        ("nested-traversal", [_file("a/../../evil.py", b"x")], "path escapes the submission"),
        ("absolute", [_file("/tmp/evil.py", b"x")], "absolute or non-portable path '/tmp/evil.py'"),
    ],
)
def test_tar_paths_confined(tmp_path: Path, sandbox_dir: Path, name: str, members: list, message: str) -> None:
    archive = _tar(tmp_path / f"{name}.tar.gz", members)
    with pytest.raises(BadInput, match=message):
        intake(archive, sandbox_dir / "dest")
    assert _files_under(sandbox_dir) <= {"dest"}
    assert not (tmp_path / "evil.py").exists()


def test_tar_symlink_and_hardlink_rejected(tmp_path: Path, sandbox_dir: Path) -> None:
    link = tarfile.TarInfo("passwd")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(BadInput, match=r"links are not accepted \(passwd -> /etc/passwd\)"):
        intake(_tar(tmp_path / "sym.tar.gz", [(link, None)]), sandbox_dir / "a")
    hard = tarfile.TarInfo("shadow")
    hard.type = tarfile.LNKTYPE
    hard.linkname = "/etc/shadow"
    with pytest.raises(BadInput, match="links are not accepted"):
        intake(_tar(tmp_path / "hard.tar.gz", [_file("ok.py", b"1"), (hard, None)]), sandbox_dir / "b")


def test_tar_device_rejected(tmp_path: Path, sandbox_dir: Path) -> None:
    dev = tarfile.TarInfo("null")
    dev.type = tarfile.CHRTYPE
    with pytest.raises(BadInput, match="null is not a regular file"):
        intake(_tar(tmp_path / "dev.tar.gz", [(dev, None)]), sandbox_dir / "a")


def test_archive_bomb_stops_at_cap(tmp_path: Path, sandbox_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_mod, "MAX_SUBMISSION_FILE_BYTES", 1 << 20)
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert archive.stat().st_size < 200_000
    with pytest.raises(BadInput, match="zeros.bin is larger than 1 MiB"):
        intake(archive, sandbox_dir / "a")
    written = sum(p.stat().st_size for p in sandbox_dir.rglob("*") if p.is_file())
    assert written <= (1 << 20) + (1 << 20)


def test_zip_bomb_total_cap(tmp_path: Path, sandbox_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_mod, "MAX_SUBMISSION_BYTES", 2 << 20)
    zpath = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(8):
            zf.writestr(f"part{i}.bin", bytes(1 << 20))
    with pytest.raises(BadInput, match="more than 2 MiB in all"):
        intake(zpath, sandbox_dir / "a")


def test_too_many_files(tmp_path: Path, sandbox_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_mod, "MAX_SUBMISSION_FILES", 5)
    archive = _tar(tmp_path / "many.tar.gz", [_file(f"f{i}.py", b"x") for i in range(6)])
    with pytest.raises(BadInput, match="more than 5 files"):
        intake(archive, sandbox_dir / "a")


def test_zip_traversal_and_symlink(tmp_path: Path, sandbox_dir: Path) -> None:
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../../evil.py", "x")
    with pytest.raises(BadInput, match="path escapes the submission"):
        intake(zpath, sandbox_dir / "a")
    zlink = tmp_path / "link.zip"
    with zipfile.ZipFile(zlink, "w") as zf:
        info = zipfile.ZipInfo("passwd")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(BadInput, match=r"links are not accepted \(passwd\)"):
        intake(zlink, sandbox_dir / "b")


def test_unreadable_archive(tmp_path: Path, sandbox_dir: Path) -> None:
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(BadInput, match="broken.tar.gz: unreadable archive"):
        intake(bad, sandbox_dir / "a")
    badzip = tmp_path / "broken.zip"
    badzip.write_bytes(b"PK nope")
    with pytest.raises(BadInput, match="broken.zip: unreadable archive"):
        intake(badzip, sandbox_dir / "b")


def test_directory_symlink_rejected(tmp_path: Path, sandbox_dir: Path) -> None:
    src = tmp_path / "sub"
    src.mkdir()
    (src / "secrets").symlink_to("/etc")
    with pytest.raises(BadInput, match=r"links are not accepted \(secrets\)"):
        intake(src, sandbox_dir / "a")


def test_missing_and_unknown_kinds(tmp_path: Path, sandbox_dir: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        intake(tmp_path / "nope", sandbox_dir / "a")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(BadInput, match="not a folder, git repository or"):
        intake(tmp_path / "notes.txt", sandbox_dir / "b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="the submission is empty"):
        intake(tmp_path / "empty", sandbox_dir / "c")
