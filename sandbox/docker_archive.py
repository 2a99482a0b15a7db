"""Tar streams in and out of a container: the only way files cross the container's boundary.

Inbound, a host folder becomes a tar owned by the sandbox user. Outbound, the engine's tar of a
writable mount is untrusted (the candidate wrote it): it is extracted member by member, never
following anything; links, special files, absolute paths and ``..`` are refused, and the file
count and total size are capped on the bytes actually written.
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

SPOOL_BYTES = 8 << 20
"""Inbound tars up to this size stay in memory; larger ones spill to a temporary file."""
MAX_ARTIFACT_FILES = 100_000
"""Files (and folders) copied out of one writable mount at most."""


def pack_dir(source: Path, uid: int, gid: int) -> IO[bytes]:
    """A tar (rewound, ready to upload) of ``source``'s contents, every entry owned by ``uid:gid``.

    Symlinks are stored as links, never followed; anything but files, folders and links is left out.
    """
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)

    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
            return None
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        info.mode &= 0o777
        return info

    with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(os.listdir(source)):
            tar.add(source / child, arcname=child, recursive=True, filter=owned)
    spool.seek(0)
    return spool


class ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (the engine's streamed archive)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _relative(name: str, root: str) -> str | None:
    """The member's path below the archive's top folder; None for the top folder itself.

    Raises ValueError for names that could point anywhere else."""
    if "\0" in name or name.startswith("/") or "\\" in name:
        raise ValueError("absolute or malformed path")
    parts = name.split("/")
    if any(p == ".." for p in parts):
        raise ValueError("path with '..'")
    parts = [p for p in parts if p not in ("", ".")]
    if not parts or parts[0] != root:
        raise ValueError(f"outside the archive's folder {root!r}")
    return posixpath.join(*parts[1:]) if len(parts) > 1 else None


def _kind(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` is refused (None: a plain file or folder)."""
    if member.issym():
        return f"symlink -> {member.linkname}"
    if member.islnk():
        return f"hard link -> {member.linkname}"
    if not (member.isfile() or member.isdir()):
        return "special file"
    return None


def clear_dir(path: Path) -> None:
    """Empty ``path`` without following links (the host copy is replaced by what the run left)."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def extract_artifacts(fileobj: IO[bytes], dest: Path, *, max_bytes: int, max_files: int = MAX_ARTIFACT_FILES) -> list[str]:
    """Extract the tar of one container folder into the (empty) host folder ``dest``; return notes.

    The archive's top folder is the container folder itself. Refused members are skipped and
    noted; past ``max_bytes`` or ``max_files`` everything from this archive is discarded.
    """
    notes: list[str] = []
    root: str | None = None
    written = files = 0
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for member in tar:
            if root is None:
                root = member.name.strip("/").split("/")[0]
            try:
                rel = _relative(member.name, root)
            except ValueError as exc:
                notes.append(f"refused artifact {member.name!r}: {exc}")
                continue
            if rel is None:
                continue
            refused = _kind(member)
            if refused:
                notes.append(f"refused artifact {rel}: {refused}")
                continue
            files += 1
            written += max(member.size, 0)
            if files > max_files or written > max_bytes:
                clear_dir(dest)
                what = f"more than {max_files} files" if files > max_files else f"over {max_bytes >> 20} MiB"
                notes.append(f"artifacts in {root}/ discarded: {what}")
                return notes
            notes += _write_member(tar, member, dest, rel)
    return notes


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, rel: str) -> list[str]:
    """Create one folder or file under ``dest``; every parent must be a real folder we made."""
    target = dest / rel
    parent = dest
    for part in Path(rel).parts[:-1]:
        parent = parent / part
        try:
            st = parent.lstat()
        except FileNotFoundError:
            parent.mkdir(mode=0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            return [f"refused artifact {rel}: a parent is not a folder"]
    if member.isdir():
        try:
            target.mkdir(mode=0o755)
        except FileExistsError:
            if not stat.S_ISDIR(target.lstat().st_mode):
                return [f"refused artifact {rel}: duplicate name"]
        return []
    mode = 0o755 if member.mode & 0o100 else 0o644
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        return [f"refused artifact {rel}: duplicate name"]
    source = tar.extractfile(member)
    with os.fdopen(fd, "wb") as out:
        if source is not None:
            shutil.copyfileobj(source, out, 1 << 20)
    return []
