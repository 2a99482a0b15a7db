"""Intake: turn what a candidate submitted (folder, archive, git repo) into a clean working tree.

Everything submitted is hostile until proven otherwise: archives are extracted member by
member with paths confined, links and special files rejected, and sizes capped on the bytes
actually written, so a bomb cannot fill the disk. Any rejection is a BadInput (exit 2).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from grader.constants import (
    MAX_ARCHIVE_BYTES,
    MAX_SUBMISSION_BYTES,
    MAX_SUBMISSION_FILE_BYTES,
    MAX_SUBMISSION_FILES,
    OUTPUT_MARKER,
)
from grader.errors import BadInput

SKIPPED_DIRS = {".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


@dataclass(frozen=True)
class Submission:
    root: Path
    sha256: str
    source: str
    name: str


class _Budget:
    """Counts files and bytes as they are written; raises past any cap."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.files = 0
        self.bytes = 0

    def add_file(self, rel: str) -> None:
        self.files += 1
        if self.files > MAX_SUBMISSION_FILES:
            raise BadInput(f"{self.label}: more than {MAX_SUBMISSION_FILES} files")

    def copy(self, src: BinaryIO, dest: Path, rel: str) -> None:
        written = 0
        with dest.open("wb") as out:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                self.bytes += len(chunk)
                if written > MAX_SUBMISSION_FILE_BYTES:
                    raise BadInput(f"{self.label}: {rel} is larger than {MAX_SUBMISSION_FILE_BYTES >> 20} MiB")
                if self.bytes > MAX_SUBMISSION_BYTES:
                    raise BadInput(f"{self.label}: more than {MAX_SUBMISSION_BYTES >> 20} MiB in all (archive bomb?)")
                out.write(chunk)


def _safe_rel(name: str, label: str) -> PurePosixPath | None:
    """The member's path inside the tree, or None for the archive's root entry."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise BadInput(f"{label}: absolute or non-portable path {name!r}")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise BadInput(f"{label}: path escapes the submission: {name!r}")
    if any(ord(c) < 32 for c in name):
        raise BadInput(f"{label}: control character in path {name!r}")
    return PurePosixPath(*parts) if parts else None


def _skipped(rel: PurePosixPath) -> bool:
    return any(p in SKIPPED_DIRS for p in rel.parts)


def _extract_tar(fileobj: BinaryIO, dest: Path, label: str) -> None:
    budget = _Budget(label)
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                rel = _safe_rel(member.name, label)
                if rel is None or _skipped(rel):
                    continue
                if member.issym() or member.islnk():
                    raise BadInput(f"{label}: links are not accepted ({member.name} -> {member.linkname})")
                if member.isdir():
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise BadInput(f"{label}: {member.name} is not a regular file")
                budget.add_file(str(rel))
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                budget.copy(src, dest / rel, str(rel))
                _set_mode(dest / rel, bool(member.mode & 0o111))
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise BadInput(f"{label}: unreadable archive ({exc})") from None


def _extract_zip(path: Path, dest: Path, label: str) -> None:
    budget = _Budget(label)
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                rel = _safe_rel(info.filename, label)
                if rel is None or _skipped(rel):
                    continue
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise BadInput(f"{label}: links are not accepted ({info.filename})")
                if info.is_dir():
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                    continue
                if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                    raise BadInput(f"{label}: {info.filename} is not a regular file")
                budget.add_file(str(rel))
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src:
                    budget.copy(src, dest / rel, str(rel))
                _set_mode(dest / rel, bool(mode & 0o111))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise BadInput(f"{label}: unreadable archive ({exc})") from None


def _copy_dir(src: Path, dest: Path, label: str) -> None:
    budget = _Budget(label)
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not _is_output(here / d))
        for d in dirnames:
            if (here / d).is_symlink():
                raise BadInput(f"{label}: links are not accepted ({(here / d).relative_to(src)})")
        for f in filenames:
            path = here / f
            rel = path.relative_to(src)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise BadInput(f"{label}: links are not accepted ({rel})")
            if not stat.S_ISREG(st.st_mode):
                raise BadInput(f"{label}: {rel} is not a regular file")
            budget.add_file(str(rel))
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            with path.open("rb") as fh:
                budget.copy(fh, dest / rel, str(rel))
            _set_mode(dest / rel, bool(st.st_mode & 0o111))


def _is_output(folder: Path) -> bool:
    """A result folder of tunegrade's own (a self-check's ``graded/``): never part of the work."""
    return not folder.is_symlink() and (folder / OUTPUT_MARKER).is_file()


def _drop_outputs(root: Path) -> None:
    """Archives and git trees may carry a result folder too; remove it after extraction."""
    for marker in sorted(root.rglob(OUTPUT_MARKER), key=lambda p: len(p.parts)):
        if marker.parent != root and marker.parent.exists():
            shutil.rmtree(marker.parent)


def _set_mode(path: Path, executable: bool) -> None:
    path.chmod(0o755 if executable else 0o644)


def _git_archive(repo: Path, ref: str, dest: Path, label: str) -> None:
    proc = subprocess.run(
        ["git", "-c", f"safe.directory={repo}", "-C", str(repo), "archive", "--format=tar", ref],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise BadInput(f"{label}: cannot read git ref {ref!r}: {reason[-1] if reason else 'git failed'}")
    _extract_tar(io.BytesIO(proc.stdout), dest, label)


def _is_git_repo(path: Path) -> bool:
    return (path / ".git").exists()


def _unwrap_single_folder(root: Path) -> Path:
    """Archives often hold one top folder; the submission is what is inside it."""
    entries = list(root.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return root


def tree_sha256(root: Path) -> str:
    """Hash of a canonical archive of the tree: sorted paths, executable bit and content of each file."""
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        rel = p.relative_to(root).as_posix()
        mode = "x" if p.stat().st_mode & 0o111 else "-"
        h.update(f"{rel}\0{mode}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def intake(source: Path, dest: Path, ref: str | None = None) -> Submission:
    """Copy or extract ``source`` into the empty folder ``dest``; raises BadInput on anything suspicious."""
    label = source.name or str(source)
    if not source.exists():
        raise BadInput(f"submission {source} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        if _is_git_repo(source):
            kind = f"git:{ref or 'HEAD'}"
            _git_archive(source, ref or "HEAD", dest, label)
        elif ref:
            raise BadInput(f"--ref given but {source} is not a git repository")
        else:
            kind = "directory"
            _copy_dir(source, dest, label)
        name = source.resolve().name
    elif source.name.endswith(ARCHIVE_SUFFIXES):
        if source.stat().st_size > MAX_ARCHIVE_BYTES:
            raise BadInput(f"{label}: archive larger than {MAX_ARCHIVE_BYTES >> 20} MiB")
        if source.name.endswith(".zip"):
            kind = "zip"
            _extract_zip(source, dest, label)
        else:
            kind = "tar"
            with source.open("rb") as fh:
                _extract_tar(fh, dest, label)
        name = next(source.name[: -len(s)] for s in ARCHIVE_SUFFIXES if source.name.endswith(s))
    else:
        raise BadInput(f"{label}: not a folder, git repository or .tar.gz/.tgz/.tar/.zip archive")
    _drop_outputs(dest)
    root = _unwrap_single_folder(dest)
    if not any(root.iterdir()):
        raise BadInput(f"{label}: the submission is empty")
    return Submission(root=root, sha256=tree_sha256(root), source=f"{kind}:{source.name}", name=name)


def copy_tree(src: Path, dest: Path) -> None:
    """A fresh working copy of an already-vetted tree, one per run so runs cannot share state."""
    shutil.copytree(src, dest, symlinks=True)
