"""grader.tracking on real event files: written by torch's SummaryWriter and by a real Trainer."""

from __future__ import annotations

import io
import os
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter

from grader import tracking
from grader.checks import CandidateFault
from grader.tracking import TrackedRun, read_tensorboard_runs


def write_run(folder: Path, scalars: dict[str, list[tuple[int, float]]], **kwargs) -> Path:
    """A run folder written by SummaryWriter; returns its one event file."""
    writer = SummaryWriter(log_dir=str(folder), **kwargs)
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.add_text("args", '{"learning_rate": 0.0002}')
    writer.close()
    (file,) = folder.glob("events.out.tfevents.*")
    return file


def f32(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    return [(step, float(np.float32(value))) for step, value in points]


def record_file(path: Path, *records: bytes) -> Path:
    """An event file of raw records, framed (length, CRCs) as tensorboard frames them."""
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    for record in records:
        writer.write(record)
    path.write_bytes(buffer.getvalue())
    return path


def event(step: int = 0, **fields) -> bytes:
    return event_pb2.Event(step=step, **fields).SerializeToString()


LOSS = [(1, 2.5), (2, 2.25), (3, 1.9), (4, 1.7)]
EVAL = [(2, 2.4), (4, 2.0)]


def test_runs_in_sub_folders_are_read_back_sorted_by_name(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs / "sweep" / "lr-2e-4", {"train/loss": LOSS, "eval/loss": EVAL})
    write_run(runs / "lr-1e-4", {"train/loss": LOSS[:2]})
    write_run(runs, {"loss": [(0, 3.0)]})
    (runs / "lr-1e-4" / "notes.txt").write_text("not an event file; ignored")
    (runs / "empty").mkdir()

    got = read_tensorboard_runs(runs)

    assert [run.name for run in got] == [".", "lr-1e-4", "sweep/lr-2e-4"]
    deep = got[2]
    assert deep.scalars == {"train/loss": f32(LOSS), "eval/loss": f32(EVAL)}  # text is not a scalar
    assert deep.train_loss == f32(LOSS) and deep.eval_loss == f32(EVAL)
    assert got[0].train_loss == [(0, 3.0)] and got[0].eval_loss == []
    assert len(deep.files) == 1 and deep.truncated == []


def test_tensor_scalars_and_aliases(tmp_path: Path) -> None:
    """add_scalar(new_style=True) writes a tensor-based scalar (float, or double), not simple_value."""
    writer = SummaryWriter(log_dir=str(tmp_path / "runs"))
    writer.add_scalar("eval_loss", 0.1, 5, new_style=True)
    writer.add_scalar("eval_loss", 0.2, 6, new_style=True, double_precision=True)
    writer.add_scalar("loss", 7.0, 1)
    writer.add_scalar("train/loss", 8.0, 1)
    writer.add_histogram("weights", np.arange(10.0), 1)
    writer.close()

    (run,) = read_tensorboard_runs(tmp_path / "runs")

    assert run.scalars["eval_loss"] == [(5, float(np.float32(0.1))), (6, 0.2)]
    assert run.eval_loss == run.scalars["eval_loss"]
    assert run.train_loss == [(1, 8.0)]  # train/loss is preferred over loss
    assert run.series("missing", "loss") == [(1, 7.0)]
    assert "weights" not in run.scalars


def test_files_in_one_folder_are_merged_in_name_order(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    second = write_run(tmp_path / "a", {"train/loss": LOSS[2:]})
    first = write_run(tmp_path / "b", {"train/loss": LOSS[:2], "eval/loss": EVAL[:1]})
    (runs / "trial").mkdir(parents=True)
    shutil.move(second, runs / "trial" / "events.out.tfevents.1700000002.host.1.0")
    shutil.move(first, runs / "trial" / "events.out.tfevents.1700000001.host.1.0")

    (run,) = read_tensorboard_runs(runs)

    assert run.files == ["events.out.tfevents.1700000001.host.1.0", "events.out.tfevents.1700000002.host.1.0"]
    assert run.train_loss == f32(LOSS) and run.eval_loss == f32(EVAL[:1])


def test_a_missing_root_has_no_runs_and_a_file_root_is_refused(tmp_path: Path) -> None:
    assert read_tensorboard_runs(tmp_path / "runs") == []
    (tmp_path / "runs").write_text("x")
    with pytest.raises(CandidateFault, match="not a folder"):
        read_tensorboard_runs(tmp_path / "runs")


def test_folders_deeper_than_the_cap_are_not_walked(tmp_path: Path) -> None:
    write_run(tmp_path / "runs" / "a" / "b" / "c" / "d", {"loss": [(1, 1.0)]})
    write_run(tmp_path / "runs" / "a" / "b" / "c" / "d" / "e", {"loss": [(1, 1.0)]})
    assert [run.name for run in read_tensorboard_runs(tmp_path / "runs")] == ["a/b/c/d"]


def test_a_truncated_last_record_keeps_the_records_before_it(tmp_path: Path) -> None:
    file = write_run(tmp_path / "runs" / "t", {"train/loss": LOSS})
    data = file.read_bytes()
    starts = record_starts(data)  # file_version, the 4 losses, the "args" text
    assert len(starts) == 6

    file.write_bytes(data[:-5])  # into the text record's data
    (run,) = read_tensorboard_runs(tmp_path / "runs")
    assert run.train_loss == f32(LOSS) and run.truncated == [file.name]

    file.write_bytes(data[: starts[-2] + 3])  # into the last loss record's header
    (run,) = read_tensorboard_runs(tmp_path / "runs")
    assert run.train_loss == f32(LOSS[:-1]) and run.truncated == [file.name]


def record_starts(data: bytes) -> list[int]:
    """Where each record of a whole event file starts (a record: 8-byte length, 4-byte CRC,
    the data, 4-byte CRC)."""
    starts, offset = [], 0
    while offset < len(data):
        starts.append(offset)
        offset += 16 + struct.unpack_from("<Q", data, offset)[0]
    return starts


def test_corrupt_files_are_the_candidates_fault(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    file = write_run(runs / "t", {"train/loss": LOSS})
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(CandidateFault, match=r"runs/t/events\.out\.tfevents\..*checksum"):
        read_tensorboard_runs(runs)

    file.write_text("step,loss\n1,2.5\n2,2.25\n")  # a CSV named like an event file
    with pytest.raises(CandidateFault, match="checksum"):
        read_tensorboard_runs(runs)

    file.write_bytes(b"loss")  # too short for one record
    with pytest.raises(CandidateFault, match="not an event file"):
        read_tensorboard_runs(runs)

    record_file(file, event(file_version="brain.Event:2"), b"\xff\xff\xff not a protobuf")
    with pytest.raises(CandidateFault, match="record 2 is not a readable event"):
        read_tensorboard_runs(runs)


def test_hostile_records_are_refused_without_allocating_what_they_declare(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (runs / "t").mkdir(parents=True)
    file = runs / "t" / "events.out.tfevents.1"
    # A header declaring 2**64 - 1 bytes (with a valid header CRC): tensorboard's reader on a real
    # file would ask for that many bytes at once (OverflowError / MemoryError).
    header = struct.pack("<Q", 2**64 - 1)
    huge = header + struct.pack("<I", masked_crc32c(header)) + b"x" * 100
    file.write_bytes(huge)
    with pytest.raises(CandidateFault, match="not one whole record"):
        read_tensorboard_runs(runs)
    good = event(1, summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="loss", simple_value=1.5)]))
    record_file(file, good)
    file.write_bytes(file.read_bytes() + huge)  # after a whole record it is a truncated tail
    (run,) = read_tensorboard_runs(runs)
    assert run.train_loss == [(1, 1.5)] and run.truncated == [file.name]

    # A scalar whose tensor declares a billion elements: make_ndarray would fill them all.
    value = summary_pb2.Summary.Value(tag="loss", simple_value=0.0)
    value.ClearField("simple_value")
    value.metadata.plugin_data.plugin_name = "scalars"
    value.tensor.dtype = 1  # DT_FLOAT
    value.tensor.tensor_shape.dim.add(size=10**9)
    value.tensor.float_val.append(1.0)
    record_file(file, event(1, summary=summary_pb2.Summary(value=[value])))
    with pytest.raises(CandidateFault, match="more than one value"):
        read_tensorboard_runs(runs)

    value.tensor.tensor_shape.ClearField("dim")
    value.tensor.dtype = 7  # DT_STRING
    value.tensor.ClearField("float_val")
    value.tensor.string_val.append(b"2.5")
    record_file(file, event(1, summary=summary_pb2.Summary(value=[value])))
    with pytest.raises(CandidateFault, match="not one real number"):
        read_tensorboard_runs(runs)


def test_random_damage_only_ever_raises_candidate_fault(tmp_path: Path) -> None:
    file = write_run(tmp_path / "runs" / "t", {"train/loss": LOSS, "eval/loss": EVAL})
    writer = SummaryWriter(log_dir=str(tmp_path / "runs" / "t"))
    writer.add_scalar("eval/loss", 0.5, 9, new_style=True)
    writer.close()
    data = file.read_bytes()
    rng = random.Random(0)
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        file.write_bytes(bytes(damaged[: rng.randint(0, len(damaged))] if rng.random() < 0.3 else damaged))
        try:
            read_tensorboard_runs(tmp_path / "runs")
        except CandidateFault as e:
            assert "\n" not in str(e)


def test_symlinks_are_refused_never_followed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    real = write_run(tmp_path / "elsewhere", {"train/loss": LOSS})
    (runs / "t").mkdir(parents=True)
    (runs / "t" / real.name).symlink_to(real)
    with pytest.raises(CandidateFault, match=r"runs/t/events\.out\.tfevents\..* is a symlink"):
        read_tensorboard_runs(runs)

    (runs / "t" / real.name).unlink()
    (runs / "t" / "events.out.tfevents.0.host").symlink_to("/dev/zero")
    with pytest.raises(CandidateFault, match="symlink"):
        read_tensorboard_runs(runs)

    shutil.rmtree(runs)
    runs.mkdir()
    (runs / "trial").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(CandidateFault, match=r"runs/trial is a symlink"):
        read_tensorboard_runs(runs)

    shutil.rmtree(runs)
    runs.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(CandidateFault, match="symlink"):
        read_tensorboard_runs(runs)


def test_a_fifo_named_like_an_event_file_is_refused_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    os.mkfifo(tmp_path / "runs" / "events.out.tfevents.0.host")
    with pytest.raises(CandidateFault, match="not a regular file"):
        read_tensorboard_runs(tmp_path / "runs")


def test_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    file = write_run(runs / "big", {"train/loss": [(step, 1.0 / step) for step in range(1, 201)]})
    write_run(runs / "small", {"train/loss": LOSS})
    size = file.stat().st_size

    monkeypatch.setattr(tracking, "MAX_BYTES", size - 1)
    with pytest.raises(CandidateFault, match=r"runs/big/events.*larger than"):
        read_tensorboard_runs(runs)
    monkeypatch.setattr(tracking, "MAX_BYTES", size + 100)  # both files together are over it
    with pytest.raises(CandidateFault, match="larger than"):
        read_tensorboard_runs(runs)
    monkeypatch.setattr(tracking, "MAX_BYTES", 1 << 20)

    monkeypatch.setattr(tracking, "MAX_SCALAR_POINTS", 203)
    with pytest.raises(CandidateFault, match=r"runs/small/events.*more than 203 scalar points"):
        read_tensorboard_runs(runs)
    monkeypatch.setattr(tracking, "MAX_SCALAR_POINTS", 204)
    assert len(read_tensorboard_runs(runs)) == 2

    monkeypatch.setattr(tracking, "MAX_EVENT_FILES", 1)
    with pytest.raises(CandidateFault, match="more than 1 event files"):
        read_tensorboard_runs(runs)
    monkeypatch.setattr(tracking, "MAX_EVENT_FILES", 2)

    monkeypatch.setattr(tracking, "MAX_RECORDS", 100)
    with pytest.raises(CandidateFault, match="more than 100 event records"):
        read_tensorboard_runs(runs)
    monkeypatch.setattr(tracking, "MAX_RECORDS", 1000)

    monkeypatch.setattr(tracking, "MAX_ENTRIES", 3)
    with pytest.raises(CandidateFault, match="more than 3 entries"):
        read_tensorboard_runs(runs)


def test_trainer_loss_curves_read_back_equal_its_log_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real Trainer with report_to="tensorboard": transformers 5 takes the folder from
    TENSORBOARD_LOGGING_DIR (TrainingArguments has no logging_dir any more; the default is
    <output_dir>/runs/<date>_<host>) and writes the logs under train/... and eval/... tags."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    generator = torch.Generator().manual_seed(0)
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 128, (16, 16), generator=generator)]
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "out" / "runs" / "lr-1e-3"))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        report_to="tensorboard",
        max_steps=4,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows[:12], eval_dataset=rows[12:])
    trainer.train()

    (run,) = read_tensorboard_runs(tmp_path / "out" / "runs")

    logged = trainer.state.log_history
    train = [(entry["step"], entry["loss"]) for entry in logged if "loss" in entry]
    evals = [(entry["step"], entry["eval_loss"]) for entry in logged if "eval_loss" in entry]
    assert [step for step, _ in train] == [1, 2, 3, 4] and [step for step, _ in evals] == [2, 4]
    assert run.name == "lr-1e-3"
    assert run.train_loss == f32(train) and run.scalars["train/loss"] == run.train_loss
    assert run.eval_loss == f32(evals) and run.scalars["eval/loss"] == run.eval_loss
    assert {"train/learning_rate", "train/grad_norm", "train/epoch", "train/train_loss"} <= set(run.scalars)
    assert isinstance(run, TrackedRun) and run.truncated == []
