"""Base model and adapter loading (grader/evaluation/loading.py): validate first, never unpickle."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from grader.checks.base import CandidateFault, InfraFault
from grader.evaluation import AdapterError, ModelError, adapter_tensors, load_adapter, load_model, validate_adapter_dir

IDS = [[0, 88, 86, 273, 202, 410, 401, 1, 202, 0, 311, 86, 845, 920, 202, 408, 4, 224, 644]]


def logits(model):  # type: ignore[no-untyped-def]
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor(IDS)).logits


@pytest.fixture
def adapter_copy(adapter_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the good adapter for a test to break."""
    return Path(shutil.copytree(adapter_dir, tmp_path / "adapter"))


def edit_config(path: Path, **changes: object) -> None:
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(config))


def test_load_model_is_float32_eval_and_local(loaded) -> None:  # type: ignore[no-untyped-def]
    import torch

    model, tok = loaded
    assert not model.training
    assert model.dtype == torch.float32
    assert next(model.parameters()).device.type == "cpu"
    assert tok.eos_token == "<|im_end|>"


def test_load_model_refuses_a_folder_without_safetensors(model_dir: Path, tmp_path: Path) -> None:
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ModelError) as exc:
        load_model(tmp_path, device="cpu")
    assert str(exc.value) == f"{tmp_path}: no *.safetensors weights (pickle-format checkpoints are never loaded)"
    assert isinstance(exc.value, InfraFault)  # the grader's asset, never the candidate's fault


def test_adapter_loads_and_merged_equals_unmerged(model_dir: Path, adapter_dir: Path, loaded) -> None:  # type: ignore[no-untyped-def]
    import torch

    base_logits = logits(loaded[0])
    unmerged = load_adapter(load_model(model_dir, device="cpu")[0], adapter_dir, merge=False)
    merged = load_adapter(load_model(model_dir, device="cpu")[0], adapter_dir, merge=True)
    assert type(unmerged).__name__ == "PeftModelForCausalLM"
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not merged.training and not unmerged.training
    assert torch.allclose(logits(merged), logits(unmerged), atol=1e-5)
    assert (logits(merged) - base_logits).abs().max() > 1e-2  # the adapter does something


def test_4bit_load_is_nf4_double_quantised_and_close_to_float32(model_dir: Path, adapter_dir: Path, loaded) -> None:  # type: ignore[no-untyped-def]
    """What a QLoRA trial trains on: bitsandbytes NF4 with double quantisation, float32 compute on the CPU,
    the same on every load; an adapter goes on top unmerged."""
    import torch

    from grader.evaluation import load_model_4bit

    model, tok = load_model_4bit(model_dir, device="cpu")
    q_proj = model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.compute_dtype == torch.float32
    assert q_proj.weight.quant_state.quant_type == "nf4" and q_proj.weight.quant_state.nested
    assert not model.training and tok.eos_token == "<|im_end|>"
    again, _ = load_model_4bit(model_dir, device="cpu")
    assert torch.equal(logits(model), logits(again))
    assert (logits(model) - logits(loaded[0])).abs().max() < 0.5  # 4-bit rounding, not another model
    with_adapter = load_adapter(model, adapter_dir, merge=False)
    assert type(with_adapter).__name__ == "PeftModelForCausalLM"
    assert (logits(with_adapter) - logits(again)).abs().max() > 1e-2


def test_4bit_load_refuses_what_load_model_refuses(tmp_path: Path) -> None:
    from grader.evaluation import load_model_4bit

    with pytest.raises(ModelError, match="no such model directory"):
        load_model_4bit(tmp_path / "missing", device="cpu")


def test_adapter_tensors_are_lora_only_and_b_is_nonzero(adapter_dir: Path) -> None:
    tensors = adapter_tensors(adapter_dir)
    assert len(tensors) == 2 * 4 * 2  # A and B, 4 modules, 2 layers
    assert all(".lora_A." in n or ".lora_B." in n for n in tensors)
    assert all(t.abs().sum() > 0 for n, t in tensors.items() if ".lora_B." in n)
    assert {tuple(t.shape) for n, t in tensors.items() if "q_proj.lora_A" in n} == {(4, 64)}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"peft_type": "IA3"}, "adapter_config.json: peft_type: Input should be 'LORA'"),
        ({"task_type": "SEQ_CLS"}, "adapter_config.json: task_type: Input should be 'CAUSAL_LM'"),
        ({"r": 0}, "adapter_config.json: r: Input should be greater than 0"),
        ({"r": "4"}, "adapter_config.json: r: Input should be a valid integer"),
        ({"target_modules": None},
         ("adapter_config.json: target_modules.list[str]: Input should be a valid list; "
          "target_modules.str: Input should be a valid string")),
        ({"target_modules": []}, "adapter_config.json: target_modules: Value error, must name at least one module"),
        ({"init_lora_weights": "pissa"},
         ("adapter_config.json: init_lora_weights: Value error, 'pissa' rewrites the base weights when loaded; "
          "save a converted standard LoRA adapter (init_lora_weights true)")),
        ({"megatron_config": {"x": 1}},
         ("adapter_config.json: megatron_config: Value error, must be null; "
          "Megatron tensor-parallel adapters are not supported")),
    ],
)
def test_invalid_config_is_refused_with_its_field(adapter_copy: Path, loaded, changes: dict, message: str) -> None:  # type: ignore[no-untyped-def]
    edit_config(adapter_copy, **changes)
    with pytest.raises(AdapterError) as exc:
        load_adapter(loaded[0], adapter_copy)  # refused before PEFT touches the model
    assert str(exc.value) == message
    assert isinstance(exc.value, CandidateFault)


def test_missing_peft_type_is_named(adapter_copy: Path) -> None:
    config = json.loads((adapter_copy / "adapter_config.json").read_text())
    del config["peft_type"]
    (adapter_copy / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match=r"^adapter_config\.json: peft_type: Field required$"):
        validate_adapter_dir(adapter_copy)


def test_unknown_config_keys_are_allowed(adapter_copy: Path) -> None:
    edit_config(adapter_copy, some_future_peft_option=True)
    assert validate_adapter_dir(adapter_copy).r == 4


def test_unparseable_json(adapter_copy: Path) -> None:
    (adapter_copy / "adapter_config.json").write_text('{"peft_type": "LORA",')
    with pytest.raises(AdapterError) as exc:
        validate_adapter_dir(adapter_copy)
    assert str(exc.value) == "adapter_config.json: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 22 (char 21))"


def test_json_that_is_not_an_object(adapter_copy: Path) -> None:
    (adapter_copy / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(AdapterError, match=r"^adapter_config\.json: expected a JSON object, got list$"):
        validate_adapter_dir(adapter_copy)


def test_missing_config(adapter_copy: Path) -> None:
    (adapter_copy / "adapter_config.json").unlink()
    with pytest.raises(AdapterError) as exc:
        validate_adapter_dir(adapter_copy)
    assert str(exc.value) == "adapter_config.json: missing; save the adapter with save_pretrained()"


def test_missing_adapter_directory(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=r"^nowhere: the adapter directory was not written$"):
        validate_adapter_dir(tmp_path / "nowhere")


def test_missing_safetensors(adapter_copy: Path) -> None:
    (adapter_copy / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError) as exc:
        validate_adapter_dir(adapter_copy)
    assert str(exc.value) == (
        "adapter_model.safetensors: missing; save_pretrained(..., safe_serialization=True) writes it"
    )


class _Trap:
    """Unpickling this creates the marker file: proof that something deserialised the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("keep_safetensors", [False, True])
def test_pickle_weights_are_refused_without_being_opened(
    adapter_copy: Path, loaded, tmp_path: Path, keep_safetensors: bool  # type: ignore[no-untyped-def]
) -> None:
    if not keep_safetensors:
        (adapter_copy / "adapter_model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (adapter_copy / "adapter_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    # The trap works: a plain unpickle springs it.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Trap(probe)))
    assert probe.exists()

    with pytest.raises(AdapterError) as exc:
        load_adapter(loaded[0], adapter_copy)
    assert str(exc.value) == (
        "adapter_model.bin: pickle-format weights are refused (loading them can run code); "
        "save the adapter as adapter_model.safetensors (save_pretrained(..., safe_serialization=True))"
    )
    assert not marker.exists()


def test_symlinked_weights_are_refused(adapter_copy: Path) -> None:
    target = adapter_copy.parent / "elsewhere.safetensors"
    (adapter_copy / "adapter_model.safetensors").rename(target)
    (adapter_copy / "adapter_model.safetensors").symlink_to(target)
    with pytest.raises(AdapterError, match=r"^adapter_model\.safetensors: is a symbolic link; write a regular file$"):
        validate_adapter_dir(adapter_copy)


def test_corrupt_safetensors(adapter_copy: Path) -> None:
    (adapter_copy / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(AdapterError, match=r"^adapter_model\.safetensors: not a valid safetensors file \("):
        adapter_tensors(adapter_copy)


@pytest.mark.filterwarnings("ignore:Found missing adapter keys:UserWarning")
def test_tensors_missing_from_the_file_are_refused(adapter_copy: Path, model_dir: Path) -> None:
    from safetensors.torch import save_file

    tensors = adapter_tensors(adapter_copy)
    dropped = min(n for n in tensors if ".lora_B." in n)
    del tensors[dropped]
    save_file(tensors, adapter_copy / "adapter_model.safetensors")
    with pytest.raises(AdapterError) as exc:
        load_adapter(load_model(model_dir, device="cpu")[0], adapter_copy)
    assert str(exc.value) == (
        f"adapter_model.safetensors: 1 tensor(s) the config implies are missing, e.g. {dropped}"
    )


def test_tensors_for_modules_the_config_does_not_target_are_refused(adapter_copy: Path, model_dir: Path) -> None:
    edit_config(adapter_copy, target_modules=["q_proj", "k_proj", "v_proj"])
    with pytest.raises(AdapterError) as exc:
        load_adapter(load_model(model_dir, device="cpu")[0], adapter_copy)
    assert str(exc.value) == (
        "adapter_model.safetensors: 4 tensor(s) match no adapted module of the base model, "
        "e.g. base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"
    )


def test_targets_absent_from_the_base_model(adapter_copy: Path, model_dir: Path) -> None:
    edit_config(adapter_copy, target_modules=["c_attn"])
    with pytest.raises(AdapterError, match=r"^the adapter does not fit the base model: NoMatchingPeftModuleError: Target modules {.c_attn.} not found"):
        load_adapter(load_model(model_dir, device="cpu")[0], adapter_copy)


def test_rank_beyond_what_is_stored(adapter_copy: Path) -> None:
    """PEFT would allocate every LoRA matrix at the claimed rank before reading the file."""
    edit_config(adapter_copy, r=10**6)
    with pytest.raises(AdapterError, match=r"^adapter_config\.json: rank 1000000 exceeds every rank stored in "
                                           r"adapter_model\.safetensors \(largest \d+\)$"):
        validate_adapter_dir(adapter_copy)
    edit_config(adapter_copy, r=1, rank_pattern={"q_proj": 10**6})
    with pytest.raises(AdapterError, match="rank 1000000 exceeds"):
        validate_adapter_dir(adapter_copy)


def test_huge_integer_or_deep_nesting_in_config(adapter_copy: Path) -> None:
    """Valid JSON that json/int() cannot handle is the candidate's fault, never a crashed check."""
    (adapter_copy / "adapter_config.json").write_text('{"r": ' + "9" * 5000 + "}")
    with pytest.raises(AdapterError, match=r"^adapter_config\.json: an integer of 5000 digits"):
        validate_adapter_dir(adapter_copy)
    (adapter_copy / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AdapterError, match=r"^adapter_config\.json: JSON nested too deeply$"):
        validate_adapter_dir(adapter_copy)


def test_wrong_shapes(adapter_copy: Path, model_dir: Path) -> None:
    edit_config(adapter_copy, r=2)
    with pytest.raises(AdapterError, match=r"^the adapter does not fit the base model: RuntimeError: Error\(s\) in loading state_dict for PeftModelForCausalLM: size mismatch for "):
        load_adapter(load_model(model_dir, device="cpu")[0], adapter_copy)
