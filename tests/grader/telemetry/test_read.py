"""read_telemetry: defensive parsing of a file the candidate could have written to."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from pathlib import Path

from grader.telemetry import (
    SANDBOX_TELEMETRY,
    SANDBOX_TELEMETRY_SITE,
    SITE_DIR,
    read_telemetry,
    telemetry_env,
    write_site,
    telemetry_mounts,
)
from grader.telemetry import read as read_mod


def ev(event: str, pid: int = 10, **fields) -> str:
    return json.dumps({"v": 1, "event": event, "pid": pid, "t": 1.0, **fields})


START = ev("start", ppid=1, argv=["python", "train.py"], cwd="/sandbox/work", python="/usr/bin/python")
EXIT = ev(
    "exit",
    wall_s=3.5,
    peak_rss_mb=900.0,
    children_peak_rss_mb=1200.0,
    cuda_peak_mb=None,
    cuda_reserved_peak_mb=None,
    uncaught=None,
    dropped=0,
)
TRAIN_START = {
    "trainer_id": 7,
    "cls": "Trainer",
    "bases": ["Trainer"],
    "model_cls": "PeftModelForCausalLM",
    "name_or_path": "base",
    "peft_configs": None,
}


def test_garbage_lines_are_ignored_and_counted(tmp_path):
    garbage = [
        "not json at all",
        "[1, 2, 3]",
        '{"v": 1, "event": "log", "pid": 10}',  # fields missing
        ev("log", trainer_id=7, step="three", epoch=None, logs={"loss": 1.0}),  # wrong type
        ev("log", trainer_id=7, step=3, epoch=None, logs={"loss": 1.0}, extra=1),  # unknown key
        ev("teleport"),  # unknown event
        json.dumps({"v": 2, "event": "start", "pid": 1, "t": 1.0}),  # newer format
        "[" * 100000,  # deep nesting
        '{"v": 1, "event": "exit", "pid": 10, "t": 1.0, "wall_s": 1e999999',  # cut line
    ]
    good = [
        START,
        ev("log", trainer_id=7, step=1, epoch=0.5, logs={"loss": 2.5, "grad_norm": 1.0}),
        ev("log", trainer_id=7, step=2, epoch=1.0, logs={"eval_loss": float("nan")}),
        EXIT,
    ]
    path = tmp_path / "t.jsonl"
    path.write_bytes(("\n".join(good[:2] + garbage + good[2:]) + "\n\n").encode() + b"\xff\xfe\n")
    tel = read_telemetry(path)
    assert tel.malformed_lines == len(garbage) + 1
    assert tel.losses == [(1, 2.5)]
    assert tel.eval_losses[0][0] == 2 and tel.eval_losses[0][1] != tel.eval_losses[0][1]  # NaN kept
    assert tel.wall_s == 3.5 and tel.exited and tel.peak_rss_mb == 1200.0


def test_missing_file_symlink_and_fifo_are_not_present(tmp_path):
    assert not read_telemetry(tmp_path / "absent.jsonl").present
    secret = tmp_path / "secret"
    secret.write_text(START + "\n")
    (tmp_path / "link.jsonl").symlink_to(secret)
    assert not read_telemetry(tmp_path / "link.jsonl").present
    os.mkfifo(tmp_path / "fifo.jsonl")
    result = []
    reader = threading.Thread(target=lambda: result.append(read_telemetry(tmp_path / "fifo.jsonl")), daemon=True)
    reader.start()
    reader.join(5)
    assert result and not result[0].present  # returned at once: no writer needed


def test_oversized_file_is_cut_at_a_line(tmp_path, monkeypatch):
    monkeypatch.setattr(read_mod, "MAX_TELEMETRY_BYTES", 1000)
    line = ev("file_read", path="/sandbox/in/x" + "y" * 50, mode="r")
    (tmp_path / "t.jsonl").write_text("\n".join([line] * 100) + "\n")
    tel = read_telemetry(tmp_path / "t.jsonl")
    assert tel.truncated and tel.malformed_lines == 0 and len(tel.files_read) == 1


def test_run_training_most_parameters_is_reported():
    lines = [
        START,
        ev(
            "trainer_init",
            **{k: v for k, v in TRAIN_START.items() if k != "bases"},
            bases=[],
            args_cls="TrainingArguments",
            args={"learning_rate": 1e-4},
            train_rows=10,
            eval_rows=None,
        ),
        ev("train_start", **TRAIN_START, trainable_params=10, total_params=1000),
        ev(
            "train_end",
            trainer_id=7,
            wall_s=1.0,
            global_step=5,
            trainable_params=10,
            total_params=1000,
            optimizer_params=10,
            error=None,
        ),
        ev(
            "trainer_init",
            **{**TRAIN_START, "trainer_id": 8, "cls": "MyTrainer"},
            args_cls="TrainingArguments",
            args={"learning_rate": 1e-5},
            train_rows=10,
            eval_rows=None,
        ),
        ev(
            "train_start",
            **{**TRAIN_START, "trainer_id": 8, "cls": "MyTrainer"},
            trainable_params=1000,
            total_params=1000,
        ),
    ]
    events, malformed = read_mod.parse_events("\n".join(lines).encode())
    tel = read_mod.summarise(events, malformed=malformed)
    assert malformed == 0
    assert (tel.trainable_params, tel.total_params) == (1000, 1000)
    assert tel.trainer.cls == "MyTrainer" and tel.trainer.args["learning_rate"] == 1e-5
    first, second = tel.train_runs
    assert first.ended and first.optimizer_params == 10 and not second.ended
    assert not tel.exited and tel.wall_s is None  # no exit event: the process died abnormally


def test_torchrun_ranks_and_files_written():
    """The launcher is the main process; a rank without its exit event shows in all_exited."""
    worker = {"argv": ["python", "-u", "dpo.py"], "cwd": "/sandbox/work", "python": "/usr/bin/python"}
    lines = [
        START,
        ev("start", pid=11, ppid=10, rank=0, local_rank=0, world_size=2, **worker),
        ev("start", pid=12, ppid=10, rank=1, local_rank=1, world_size=2, **worker),
        ev("file_written", pid=12, path="/sandbox/out/b.txt", via="open"),
        ev("file_written", pid=11, path="/sandbox/out/b.txt", via="open"),
        ev("file_written", pid=11, path="/sandbox/out/a.safetensors", via="safetensors.torch.save_file"),
        ev("exit", pid=11, **{k: v for k, v in json.loads(EXIT).items() if k not in ("v", "event", "pid", "t")}),
        EXIT,
    ]
    tel = read_mod.summarise(read_mod.parse_events("\n".join(lines).encode())[0])
    assert tel.files_written == {"/sandbox/out/a.safetensors": [11], "/sandbox/out/b.txt": [11, 12]}
    launcher, rank0, rank1 = tel.processes
    assert (launcher.rank, rank0.rank, rank1.rank) == (None, 0, 1)
    assert (rank1.local_rank, rank1.world_size, rank1.ppid) == (1, 2, 10)
    assert tel.exited and tel.wall_s == 3.5 and not tel.all_exited  # rank 1 never wrote its exit event
    old = read_mod.summarise(read_mod.parse_events(f"{START}\n{EXIT}".encode())[0])  # older files: no ranks
    assert old.processes[0].rank is None and old.all_exited and old.files_written == {}


def test_probe_must_be_consistent():
    probe = {"ids": [5, 6, 7], "policy": [-1.0, -2.0], "reference": [-1.5, -2.5], "reference_via": "ref_model"}
    bad = [
        {**probe, "policy": [-1.0]},  # one log-probability per token after the first
        {**probe, "reference": [-1.0, -2.0, -3.0]},
        {**probe, "reference_via": None},  # a reference must say where it came from
        {**probe, "reference": None},
        {**probe, "reference_via": "base_model"},  # unknown way
    ]
    good = [probe, {**probe, "reference": None, "reference_via": None}]
    lines = [ev("train_start", **TRAIN_START, trainable_params=10, total_params=1000, probe=p) for p in good + bad]
    lines.append(ev("train_start", **TRAIN_START, trainable_params=10, total_params=1000))  # older files
    events, malformed = read_mod.parse_events("\n".join(lines).encode())
    assert malformed == len(bad)
    tel = read_mod.summarise(events)
    assert [r.probe.reference_via if r.probe else None for r in tel.train_runs] == ["ref_model", None, None]
    assert tel.train_runs[0].probe.policy == [-1.0, -2.0] and tel.train_runs[1].probe.reference is None


def test_env_mounts_and_site(tmp_path: Path):
    """The environment names no telemetry file: a config file in the run's own site folder does."""
    assert telemetry_env("/sandbox/telemetry-site") == {"PYTHONPATH": "/sandbox/telemetry-site"}
    assert telemetry_env("/s", pythonpath="/x")["PYTHONPATH"] == "/s:/x"
    site, out = telemetry_mounts(Path("/host/runs/a"))
    assert (site.source, site.target, site.writable) == (Path("/host/runs/a/telemetry-site"), SANDBOX_TELEMETRY_SITE, False)
    assert (out.source, out.target, out.writable) == (Path("/host/runs/a/telemetry"), SANDBOX_TELEMETRY, True)
    write_site(tmp_path / "site", "/sandbox/telemetry/telemetry.jsonl")
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == sorted([*read_mod.SITE_FILES, read_mod.CONFIG_FILE])
    assert (tmp_path / "site" / read_mod.CONFIG_FILE).read_text() == "/sandbox/telemetry/telemetry.jsonl\n"
    assert sorted(p.name for p in SITE_DIR.iterdir() if p.suffix == ".py") == sorted(read_mod.SITE_FILES)
    assert not (SITE_DIR / read_mod.CONFIG_FILE).exists()  # the package's own copy is inert


def test_writer_and_reader_agree_on_names():
    spec = importlib.util.spec_from_file_location("tg_site_probe", SITE_DIR / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # inactive: no config file beside it
    assert module.CONFIG_FILE == read_mod.CONFIG_FILE
    assert module.FINGERPRINT_FILE in read_mod.SITE_FILES
    assert module.PROBE_FILE in read_mod.SITE_FILES
    assert module.FORMAT_VERSION == read_mod.FORMAT_VERSION
