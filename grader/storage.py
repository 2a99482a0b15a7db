"""The fleet's storage: a location the coordinator and every worker node reach, through fsspec.

A shared path (``/mnt/grading`` or ``file:///mnt/grading``) or object storage (``s3://bucket/round``,
``gs://...``, with the matching fsspec package installed). Folders travel as one tar object each,
written under a temporary name and moved into place, so a reader sees a whole tree or none; a tree
is extracted with tarfile's ``tar`` filter (nothing outside the destination, no device files), which
keeps symlinks as they were so a worker sees a submission exactly as the coordinator did.
"""

from __future__ import annotations

import tarfile
import tempfile
import uuid
from pathlib import Path

from grader.errors import BadInput, GraderFault


class Storage:
    """One storage URL; keys are ``/``-separated paths below it."""

    def __init__(self, url: str) -> None:
        try:
            import fsspec
        except ImportError:
            raise BadInput("the fleet's storage needs fsspec: pip install 'tunegrade[ray]'") from None
        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise BadInput(f"storage {url!r} is not usable here: {exc}") from None
        self.root = self.root.rstrip("/")

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def check(self) -> None:
        """Fail closed before a round starts: the location must take a write and give it back."""
        key = f".probe/{uuid.uuid4().hex}"
        try:
            self.put_bytes(key, b"ok")
            ok = self.get_bytes(key) == b"ok"
            self.fs.rm(self._path(key))
        except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types
            raise BadInput(f"storage {self.url} cannot be written and read back: {exc}") from None
        if not ok:
            raise BadInput(f"storage {self.url} gave back something else than was written")

    def put_bytes(self, key: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            self.put_file(key, Path(f.name))

    def put_file(self, key: str, local: Path) -> None:
        path = self._path(key)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        self.fs.put_file(str(local), tmp)
        self.fs.mv(tmp, path)

    def get_bytes(self, key: str) -> bytes:
        with self.fs.open(self._path(key), "rb") as f:
            return f.read()

    def names(self, prefix: str) -> set[str]:
        """The names directly below ``prefix`` (finished objects only, not ones being written)."""
        self.fs.invalidate_cache(self._path(prefix))  # other nodes write here: never trust a cached listing
        try:
            found = self.fs.ls(self._path(prefix), detail=False)
        except FileNotFoundError:
            return set()
        return {str(p).rstrip("/").rsplit("/", 1)[-1] for p in found if ".tmp-" not in str(p)}

    def put_tree(self, key: str, folder: Path) -> None:
        """``folder`` (a file: that file) as one tar object, spooled through a local file."""
        with tempfile.NamedTemporaryFile(suffix=".tar") as f:
            with tarfile.open(fileobj=f, mode="w") as tar:
                tar.add(folder, arcname=folder.name, recursive=True)
            f.flush()
            self.put_file(key, Path(f.name))

    def get_tree(self, key: str, into: Path) -> Path:
        """Extract the object ``key`` into the folder ``into``; returns the tree's top entry."""
        into.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(suffix=".tar") as f:
            try:
                self.fs.get_file(self._path(key), f.name)
            except FileNotFoundError:
                raise GraderFault(f"storage {self.url} has no {key}") from None
            with tarfile.open(f.name, mode="r") as tar:
                tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
                if len(tops) != 1:
                    raise GraderFault(f"storage object {key} is not one tree")
                tar.extractall(into, filter="tar")
        return into / tops.pop()


def storage_url(value: str | None, out: Path) -> str:
    """The round's storage: as given, else a folder beside the batch's results (one machine, or a
    batch folder on a shared file system)."""
    if value:
        return value
    return (out.resolve() / ".fleet-storage").as_uri()
