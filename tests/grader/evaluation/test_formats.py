"""File kinds by content (grader/evaluation/formats.py): honest files are never called pickles, pickles always are."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from grader.evaluation.formats import file_kind


def safetensors_starting_with_0x80(path: Path) -> Path:
    """A valid safetensors file whose header length (its first 8 bytes, little-endian) starts with 0x80,
    as about one honest adapter configuration in 32 does (an r=104 adapter, for one)."""
    import torch
    from safetensors.torch import save_file

    for pad in range(512):
        save_file({"lora_A.weight": torch.zeros(4, 8)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            return path
    raise AssertionError("no padding gave a first byte of 0x80")


def test_safetensors_is_safetensors_whatever_its_first_byte(tmp_path: Path) -> None:
    path = safetensors_starting_with_0x80(tmp_path / "adapter_model.safetensors")
    assert file_kind(path) == "safetensors"
    path.rename(tmp_path / "weights.data")  # the name does not decide it either
    assert file_kind(tmp_path / "weights.data") == "safetensors"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_are_pickles_by_content(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "innocent.json"
    path.write_bytes(pickle.dumps({"weights": list(range(5000)), "name": "x"}, protocol=protocol))
    assert file_kind(path) == "pickle"


def test_truncated_pickle_and_torch_zip(tmp_path: Path) -> None:
    import torch

    (tmp_path / "cut").write_bytes(pickle.dumps(list(range(100_000)), protocol=4)[:70_000])
    assert file_kind(tmp_path / "cut") == "pickle"
    torch.save({"x": torch.zeros(3)}, tmp_path / "state")
    assert file_kind(tmp_path / "state") == "pickle"
    (tmp_path / "training_args.bin").write_bytes(b"anything")
    assert file_kind(tmp_path / "training_args.bin") == "pickle"


def test_files_honest_tools_write_beside_an_adapter_are_data(tmp_path: Path) -> None:
    """What `trl sft` and save_pretrained write next to the adapter: tokenizer, template, model card."""
    files = {
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE"}}),
        "tokenizer_config.json": json.dumps({"chat_template": "{{ x }}"}),
        "special_tokens_map.json": "{}",
        "chat_template.jinja": "{%- for message in messages %}{{ message['content'] }}.{% endfor %}",
        "README.md": "---\nlibrary_name: peft\n---\n# Model Card\n(c) 2026. Trained with TRL.\n",
        "merges.txt": "#version: 0.2\nĠ t\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        assert file_kind(tmp_path / name) == "data", name


def test_executables(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "blob").write_bytes(b"\x7fELF\x02\x01\x01")
    (tmp_path / "notes.txt").write_text("plain")
    (tmp_path / "notes.txt").chmod(0o755)
    assert {file_kind(tmp_path / n) for n in ("run.sh", "blob", "notes.txt")} == {"executable"}
