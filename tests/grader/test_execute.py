"""execute_runs: the argv each run variant gets; vet_artifacts: what a run leaves in its output folder before any
check reads it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from grader.execute import execute_runs, vet_artifacts
from grader.tasks import TaskPack
from grader.taskspec import TaskSpec
from sandbox import get_backend


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


def test_a_run_with_its_own_entry_runs_it_and_the_others_the_tasks(tmp_path: Path) -> None:
    spec = TaskSpec.model_validate({
        "id": "t", "version": "1", "title": "t", "summary": "s", "level": "junior", "roles": ["llm-engineer"],
        "entry": "python main.py task {out} {seed}", "data": {"generator": "g.py", "default_hidden_seed": "s"},
        "runs": [{"name": "main"}, {"name": "ddp", "entry": "python main.py own {out} {seed}", "seed_offset": 1}],
        "checks": [{"id": "runs", "title": "t"}], "limits": {"wall_time_s": 30},
    })
    submission = tmp_path / "sub"
    submission.mkdir()
    (submission / "main.py").write_text("import sys, pathlib\npathlib.Path(sys.argv[2], 'argv').write_text(' '.join(sys.argv[1:]))\n")
    runs = execute_runs(TaskPack(spec, tmp_path), submission, {}, get_backend("process"), 7, tmp_path / "runs",
                        tmp_path / "scratch")
    for name, source, seed in (("main", "task", 7), ("ddp", "own", 8)):
        out = runs[name].out_dir
        assert runs[name].argv == ["python", "main.py", source, str(out), str(seed)]
        assert (out / "argv").read_text() == f"{source} {out} {seed}"
