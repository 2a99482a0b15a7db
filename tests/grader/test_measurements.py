"""Measurements kept across grades (grader/measurements.py): computed once, recomputed whenever
anything they depend on changes, and never trusted when unreadable."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from grader import measurements
from grader.checks import adapters, sibling_module
from grader.environment import environment
from grader.evaluation import NLLResult
from grader.tasks import get_task

sft_dpo = sibling_module(str(get_task("sft-dpo").dir / "checks.py"), "measure")

CODEC = TypeAdapter(list[tuple[float, int]])
VALUE = [(1.25, 3), (0.1 + 0.2, 7)]


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    monkeypatch.setenv("TUNEGRADE_CACHE", str(tmp_path))
    return []


def measure(calls: list[int], parts: list) -> list[tuple[float, int]]:  # type: ignore[type-arg]
    def compute() -> list[tuple[float, int]]:
        calls.append(1)
        return VALUE

    return measurements.stored(parts, compute, CODEC)


def test_computed_once_and_read_back_exactly(counted: list[int]) -> None:
    first, second = measure(counted, ["nll", "ref-a", "test"]), measure(counted, ["nll", "ref-a", "test"])
    assert first == second == VALUE and len(counted) == 1
    assert NLLResult.from_examples(second) == NLLResult.from_examples(VALUE)


def test_other_parts_library_versions_or_code_are_other_measurements(counted: list[int],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    measure(counted, ["nll", "ref-a", "test"])
    measure(counted, ["nll", "ref-a", "val"])
    monkeypatch.setattr(measurements, "environment", lambda: environment() | {"torch": "0.0.0-other"})
    measure(counted, ["nll", "ref-a", "test"])
    monkeypatch.setattr(measurements, "environment", environment)
    monkeypatch.setattr(measurements, "_code_digest", lambda: "other evaluation code")
    measure(counted, ["nll", "ref-a", "test"])
    assert len(counted) == 4


@pytest.mark.parametrize("garbage", [b"", b"{not json", b'[[1.0, "x"]]', b"[[1.0, 2, 3]]"])
def test_an_unreadable_entry_is_measured_again(counted: list[int], tmp_path: Path, garbage: bytes) -> None:
    measure(counted, ["nll"])
    (entry,) = (tmp_path / measurements.STORE_DIR).iterdir()
    entry.write_bytes(garbage)
    assert measure(counted, ["nll"]) == VALUE and len(counted) == 2
    assert CODEC.validate_json(entry.read_bytes()) == VALUE


# -- the grader's measurements of the base model and of reference runs, through the stored path -------

TINY = Path(__file__).resolve().parents[2] / "tasks" / "_shared" / "models" / "tiny"
LORA_SFT_VAL = Path(__file__).resolve().parents[2] / "tasks" / "lora-sft" / "public" / "data" / "val.jsonl"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A copy of tiny, a small chat set, a LoRA adapter for it (also used as an SFT and a DPO stage), an
    empty store, and counters of how often each measurement was really computed."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import grader.evaluation
    from grader.telemetry.site import tunegrade_probe

    monkeypatch.setenv("TUNEGRADE_CACHE", str(tmp_path / "cache"))
    model, data, run = tmp_path / "model", tmp_path / "data", tmp_path / "run"
    shutil.copytree(TINY, model)
    data.mkdir()
    (data / "val.jsonl").write_text("".join(LORA_SFT_VAL.read_text().splitlines(keepends=True)[:6]))
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model, local_files_only=True),
                                LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    for stage in ("sft", "dpo"):
        peft_model.save_pretrained(run / stage / "adapter", safe_serialization=True)
    calls: Counter[str] = Counter()

    def counting(name: str, module: Any) -> None:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **k: calls.update([name]) or real(*a, **k))

    for name in ("response_nll", "mean_token_kl", "pair_logps"):
        counting(name, grader.evaluation)
    counting("token_logprobs", tunegrade_probe)
    return {"model": model, "data": data, "run": run, "calls": calls}


def context(store: dict[str, Any]) -> Any:
    """A fresh grade's context (its memo is per grade) on the fixture's model and data."""
    from grader.checks import CheckContext

    return CheckContext(task_dir=TINY, inputs={"model": store["model"], "data": store["data"]}, params={}, seed=0,
                        manifest={"heldout": "val.jsonl"}, data_dir=store["data"])


def base_nll(store: dict[str, Any]) -> Any:
    return adapters.AdapterMeasures("lora-sft", lambda out: out).nll(context(store), None, "val")


def reference_nll(store: dict[str, Any]) -> Any:
    m = adapters.AdapterMeasures("lora-sft", lambda out: out)
    return m.nll(context(store), store["run"] / "sft" / "adapter", "val", trusted=True)


def reference_drift(store: dict[str, Any]) -> Any:
    return sft_dpo.drift(context(store), store["run"], trusted=True)


def reference_test_nll(store: dict[str, Any]) -> Any:
    return sft_dpo.test_nll(context(store), store["run"], "final", trusted=True)


def reference_logps(store: dict[str, Any]) -> Any:
    """Held-out pair log-probabilities: the chats' first turns as prompts, their replies as chosen and reversed."""
    (store["data"] / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": r["messages"][:-1], "chosen": r["messages"][-1:],
                    "rejected": [{"role": "assistant", "content": r["messages"][-1]["content"][::-1]}]}) + "\n"
        for r in map(json.loads, (store["data"] / "val.jsonl").read_text().splitlines())))
    ctx = context(store)
    ctx.manifest = {"pref_heldout": "pairs.jsonl"}
    return sft_dpo.logps(ctx, store["run"], "final", "heldout", trusted=True)


def base_probe(store: dict[str, Any]) -> Any:
    from grader.telemetry.site import tunegrade_probe

    ctx = context(store)
    return sft_dpo.probe_logprobs(ctx, tunegrade_probe.probe_ids(adapters.tokenizer(ctx)), "base")


MEASURES = {"base-nll": base_nll, "reference-nll": reference_nll, "sft-dpo-test-nll": reference_test_nll,
            "sft-dpo-drift": reference_drift, "sft-dpo-logps": reference_logps, "sft-dpo-base-probe": base_probe}


def computed(store: dict[str, Any]) -> int:
    return sum(store["calls"].values())


@pytest.mark.parametrize("measure", MEASURES)
def test_a_stored_measurement_reads_back_what_it_computed(store: dict[str, Any], measure: str) -> None:
    cold = MEASURES[measure](store)
    assert computed(store) >= 1
    before = computed(store)
    assert MEASURES[measure](store) == cold and computed(store) == before


def change_model(store: dict[str, Any], _: pytest.MonkeyPatch) -> None:
    weights = store["model"] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the last byte of the last tensor: still a loadable model
    weights.write_bytes(bytes(data))


def change_adapter(store: dict[str, Any], _: pytest.MonkeyPatch) -> None:
    (store["run"] / "sft" / "adapter" / "README.md").write_text("retrained\n")


def change_data(store: dict[str, Any], _: pytest.MonkeyPatch) -> None:
    val = store["data"] / "val.jsonl"
    val.write_text("".join(val.read_text().splitlines(keepends=True)[1:]))


def change_threads(store: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1000)


def change_gpu(store: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The key as a GPU host makes it (the measurement itself still runs on the CPU)."""
    import torch

    import grader.evaluation

    monkeypatch.setattr(grader.evaluation, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")


def change_dtype(store: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapters, "DTYPE", "float64")
    monkeypatch.setattr(sft_dpo, "DTYPE", "float64")


def change_task_code(store: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measurements, "_source_digest", lambda path: f"edited {path}")


CHANGES = {"model": change_model, "adapter": change_adapter, "data": change_data, "threads": change_threads,
           "gpu": change_gpu, "dtype": change_dtype, "task-code": change_task_code}
UNKEYED = {("base-nll", "adapter"), ("sft-dpo-base-probe", "adapter"), ("sft-dpo-base-probe", "data")}
"""Parts a measurement does not depend on: the base model's have no adapter, and the probe is the grader's
own fixed conversation, not the cohort's data."""


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("measure", MEASURES)
def test_changing_any_part_of_the_key_measures_again(store: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                      measure: str, change: str) -> None:
    MEASURES[measure](store)
    before = computed(store)
    CHANGES[change](store, monkeypatch)
    MEASURES[measure](store)
    assert computed(store) == before if (measure, change) in UNKEYED else computed(store) > before


def test_gpu_models_are_other_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import grader.evaluation

    monkeypatch.setattr(grader.evaluation, "resolve_device", lambda device: "cuda")
    keys = set()
    for name in ("NVIDIA H200", "NVIDIA A100-SXM4-80GB"):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        keys.add(measurements.device_key("auto"))
    assert keys == {"cuda:NVIDIA H200", "cuda:NVIDIA A100-SXM4-80GB"}
