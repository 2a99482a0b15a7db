"""The fleet's storage (grader/storage.py): trees travel whole and as they were, nothing lands outside
the destination, and a location that cannot be written is refused before a round starts."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from grader.errors import BadInput, GraderFault
from grader.storage import Storage, storage_url


def test_a_tree_travels_as_it_was(tmp_path: Path) -> None:
    src = tmp_path / "sub"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "main.py").write_text("print('hi')\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "escape").symlink_to("/etc/passwd")  # kept as a link: intake judges it on the node as here
    store = Storage((tmp_path / "store").as_uri())
    store.check()
    store.put_tree("submissions/ada/t1.tar", src)
    top = store.get_tree("submissions/ada/t1.tar", tmp_path / "node")
    assert top == tmp_path / "node" / "sub"
    assert (top / "pkg" / "main.py").read_text() == "print('hi')\n"
    assert os.access(top / "run.sh", os.X_OK)
    assert os.readlink(top / "escape") == "/etc/passwd"
    assert store.names("submissions/ada") == {"t1.tar"} and store.names("nothing/here") == set()


def test_a_plain_path_is_a_storage_too(tmp_path: Path) -> None:
    store = Storage(str(tmp_path / "shared"))
    store.put_bytes("a/b.json", b"{}")
    assert store.get_bytes("a/b.json") == b"{}" and (tmp_path / "shared" / "a" / "b.json").is_file()
    assert storage_url(None, tmp_path / "out") == (tmp_path / "out" / ".fleet-storage").as_uri()


def test_nothing_lands_outside_the_destination(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("top/../../outside.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    store = Storage(str(tmp_path / "store"))
    store.put_bytes("evil.tar", buf.getvalue())
    with pytest.raises(tarfile.FilterError):
        store.get_tree("evil.tar", tmp_path / "node" / "deep")
    assert not (tmp_path / "node" / "outside.txt").exists()
    with pytest.raises(GraderFault, match="has no missing.tar"):
        store.get_tree("missing.tar", tmp_path / "node")


def test_an_unwritable_location_is_refused(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file, not a folder")
    with pytest.raises(BadInput, match="cannot be written and read back"):
        Storage(str(blocked / "store")).check()
    with pytest.raises(BadInput, match="not usable here"):
        Storage("nosuchprotocol://bucket/round")
