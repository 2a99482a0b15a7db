"""vet_artifacts: what a run leaves in its output folder before any check reads it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from grader.execute import vet_artifacts


def test_setid_bits_are_cleared_on_the_runs_own_files_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    own = out / "tool"
    own.write_bytes(b"#!/bin/sh\n")
    own.chmod(0o6755)
    host = tmp_path / "host-tool"  # a host setuid file the run hard-linked into its outputs
    host.write_bytes(b"host\n")
    host.chmod(0o4755)
    os.link(host, out / "linked")
    notes = vet_artifacts(out)
    assert stat.S_IMODE(own.stat().st_mode) == 0o755
    assert "cleared the setuid/setgid bits of tool" in notes
    assert not (out / "linked").exists() and "removed hard-linked file linked" in notes
    assert stat.S_IMODE(host.stat().st_mode) == 0o4755  # the host's file is not touched
