"""Files written, and ranks, under a real ``torchrun --nproc_per_node 2`` (CPU; no process group needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from grader.telemetry import read_telemetry
from grader.telemetry.read import FileWrittenEvent, parse_events

# Each rank writes its own files through every route, and all of them append to one shared file.
SCRIPT = """
import io, os, sys
from pathlib import Path
import torch
from safetensors.torch import save_file

rank = int(os.environ["RANK"])
out = Path(sys.argv[1])
with open(out / "shared.txt", "a") as fh:
    fh.write(f"{rank}\\n")
open(out / "shared.txt", "a").close()  # opened again: not a new event
Path(out / f"rank{rank}.json").write_text("{}")  # pathlib
with io.open(out / f"rank{rank}.log", "x") as fh:
    fh.write("x")
with open(out / "input.txt", "r+") as fh:  # read and write
    fh.read()
(out / "data.txt").read_text()  # read only
torch.save({"w": torch.zeros(2)}, str(out / f"rank{rank}.pt"))  # torch's native zip writer
torch.save({"w": torch.zeros(2)}, io.BytesIO())  # no file
if rank == 0:
    save_file({"w": torch.zeros(2)}, out / "model.safetensors")  # native, as save_pretrained writes weights
    with open(out / "handle.pt", "wb") as fh:
        torch.save(torch.ones(1), fh)  # a file object: noted when it was opened
    child = os.fork()
    if child == 0:  # a forked child writing the shared file is a writer of its own
        open(out / "shared.txt", "a").close()
        os._exit(0)
    os.waitpid(child, 0)
"""


@pytest.mark.slow
def test_files_written_by_each_route_and_rank_under_torchrun(tmp_path, env_for):
    (tmp_path / "writes.py").write_text(SCRIPT)
    (tmp_path / "input.txt").write_text("in")
    (tmp_path / "data.txt").write_text("data")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "writes.py"), str(tmp_path)],
        check=False,
        cwd=tmp_path,
        env=env_for(tmp_path, tmp_path / "telemetry.jsonl"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    tel = read_telemetry(tmp_path / "telemetry.jsonl")
    assert tel.malformed_lines == 0 and tel.hook_errors == []

    [launcher] = [p for p in tel.processes if p.argv[1:3] == ["-m", "torch.distributed.run"]]
    workers = [p for p in tel.processes if p.rank is not None]
    [forked] = [p for p in tel.processes if p is not launcher and p not in workers]
    assert tel.processes[0] is launcher
    assert (launcher.rank, launcher.local_rank, launcher.world_size) == (None, None, None)
    assert sorted((w.rank, w.local_rank, w.world_size) for w in workers) == [(0, 0, 2), (1, 1, 2)]
    assert all(w.ppid == launcher.pid and w.exited for w in workers)
    assert tel.exited and tel.all_exited and tel.wall_s == launcher.wall_s  # the launcher is the main process
    assert forked.ppid is None and not forked.exited  # no start event, left by os._exit

    by_rank = {w.rank: w.pid for w in workers}
    written = {Path(path).name: pids for path, pids in tel.files_written.items()}
    assert written == {
        "shared.txt": sorted([*by_rank.values(), forked.pid]),
        "input.txt": sorted(by_rank.values()),
        **{f"rank{r}.{ext}": [pid] for r, pid in by_rank.items() for ext in ("json", "log", "pt")},
        "model.safetensors": [by_rank[0]],
        "handle.pt": [by_rank[0]],
    }
    assert all(path == str(tmp_path / Path(path).name) for path in tel.files_written)
    assert str(tmp_path / "data.txt") in tel.files_read and str(tmp_path / "input.txt") in tel.files_read

    events, _ = parse_events((tmp_path / "telemetry.jsonl").read_bytes())
    via = {Path(e.path).name: e.via for e in events if isinstance(e, FileWrittenEvent)}
    assert via["model.safetensors"] == "safetensors.torch.save_file"
    assert via["rank0.pt"] == via["rank1.pt"] == "torch.save"
    assert via["handle.pt"] == via["rank0.json"] == via["shared.txt"] == "open"
