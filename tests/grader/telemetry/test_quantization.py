"""QLoRA evidence from inside the run: how each trained model's linear layers were quantised, and
forward calls through bitsandbytes 4-bit layers during training (real runs on the CPU, no mocks)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from grader.telemetry import Telemetry, read_telemetry
from grader.telemetry import read as read_mod
from grader.telemetry.read import TrainRun

# One process trains five tiny Llamas in turn (imports are most of the cost): the trainer numbers say which is which.
SCRIPT = """
import json, sys, torch
from pathlib import Path
from datasets import Dataset
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM, Trainer,
                          TrainerCallback, TrainingArguments)

out = Path(sys.argv[1])
torch.manual_seed(0)
config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=128, max_position_embeddings=64)
LlamaForCausalLM(config).save_pretrained(out / "base")
ids = torch.randint(0, 128, (12, 12)).tolist()
data = Dataset.from_dict({"input_ids": ids, "labels": ids})
lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
cases = {}


def four_bit(quant_type, double):
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double,
                           bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(out / "base", quantization_config=q)


def train(name, model, callbacks=None):
    args = TrainingArguments(output_dir=str(out / name), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", use_cpu=True, report_to=[])
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    trainer.train()
    cases[name] = len(cases) + 1  # telemetry numbers a process's trainers in the order they are built
    del trainer  # freed: a later trainer may get its id(), never its number


def qlora(quant_type, double):
    return get_peft_model(prepare_model_for_kbit_training(four_bit(quant_type, double)), LoraConfig(**lora))


def full_precision_lora():
    return get_peft_model(AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32), LoraConfig(**lora))


train("qlora", qlora("nf4", True))
train("lora", full_precision_lora())
train("fp4", qlora("fp4", False))
eight_bit = AutoModelForCausalLM.from_pretrained(out / "base", quantization_config=BitsAndBytesConfig(load_in_8bit=True))
train("int8", get_peft_model(prepare_model_for_kbit_training(eight_bit), LoraConfig(**lora)))
loaded_4bit = four_bit("nf4", True)  # loaded in 4-bit, and even run during training, but not what is trained


class Decoy(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        loaded_4bit(input_ids=torch.tensor(ids[:2]))


train("decoy", full_precision_lora(), callbacks=[Decoy()])
(out / "cases.json").write_text(json.dumps(cases))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env_for) -> dict[str, TrainRun]:
    d = tmp_path_factory.mktemp("quantization")
    (d / "train.py").write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(d / "train.py"), str(d)],
        cwd=d,
        env=env_for(d, d / "telemetry.jsonl"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    tel = read_telemetry(d / "telemetry.jsonl")
    assert tel.malformed_lines == 0 and tel.hook_errors == []
    by_id = {(r.pid, r.trainer_id): r for r in tel.train_runs}
    [pid] = {r.pid for r in tel.train_runs}
    cases = json.loads((d / "cases.json").read_text())
    assert len(tel.train_runs) == len(cases) == 5 and all(r.ended and r.global_step == 3 for r in tel.train_runs)
    return {name: by_id[pid, trainer_id] for name, trainer_id in cases.items()}


@pytest.mark.slow
def test_qlora_run_is_recorded_as_4bit_nf4_double_quant(runs):
    run = runs["qlora"]
    q = run.quantization
    assert q.linear4bit == 14  # 7 projections in each of 2 layers; lm_head stays full precision
    assert (q.quant_types, q.double_quant, q.compute_dtypes) == (["nf4"], [True], ["torch.float32"])
    assert q.quant_storage == ["torch.uint8"]
    assert q.full_precision_linear == 0 and q.full_precision_examples == [] and q.other_quantized == 0
    assert q.lora_layers == q.lora_on_4bit == q.lora_trainable_on_4bit == 4  # q_proj and v_proj, 2 layers
    assert q.lora_base_types == ["Linear4bit"]
    assert run.quant4_grad_forwards == run.quant4_grad_forwards_in_model > 0
    # prepare_model_for_kbit_training turns on (reentrant) gradient checkpointing: each step's forward runs
    # without gradients and is recomputed with them in backward, so half the calls are grad-enabled (42 of 84).
    assert run.quant4_forwards >= run.quant4_grad_forwards


@pytest.mark.slow
def test_plain_lora_on_a_full_precision_base_is_distinguishable(runs):
    run = runs["lora"]
    q = run.quantization
    assert q.linear4bit == 0 and q.quant_types == [] and q.double_quant == []
    assert q.full_precision_linear == 14  # the base weights, lm_head and LoRA's own lora_A/lora_B excluded
    assert q.full_precision_dtypes == ["torch.float32"] and q.other_quantized == 0
    assert q.full_precision_examples[0].endswith("layers.0.self_attn.q_proj.base_layer")
    assert q.lora_layers == 4 and q.lora_on_4bit == 0 and q.lora_base_types == ["Linear"]
    assert run.quant4_forwards == run.quant4_grad_forwards == 0


@pytest.mark.slow
def test_fp4_without_double_quant_is_reported_as_such(runs):
    run = runs["fp4"]
    q = run.quantization
    assert (q.linear4bit, q.quant_types, q.double_quant) == (14, ["fp4"], [False])
    assert q.lora_layers == q.lora_on_4bit == 4 and run.quant4_grad_forwards_in_model > 0


@pytest.mark.slow
def test_8bit_base_is_counted_as_other_quantized(runs):
    run = runs["int8"]
    q = run.quantization
    assert q.other_quantized == 14 and q.other_quantized_kinds == ["bitsandbytes.nn.modules.Linear8bitLt"]
    assert q.linear4bit == q.full_precision_linear == q.lora_on_4bit == 0 and q.lora_base_types == ["Linear8bitLt"]
    assert run.quant4_forwards == 0


@pytest.mark.slow
def test_the_trainers_model_is_reported_not_another_model_loaded_in_4bit(runs):
    run = runs["decoy"]
    q = run.quantization
    assert q.linear4bit == 0 and q.full_precision_linear == 14 and q.lora_on_4bit == 0
    assert run.quant4_grad_forwards > 0  # the decoy ran its 4-bit layers during training ...
    assert run.quant4_grad_forwards_in_model == 0  # ... but none of them belong to the trained model


START = {"trainer_id": 7, "cls": "Trainer", "bases": [], "model_cls": "PeftModelForCausalLM", "name_or_path": "b",
         "peft_configs": None, "trainable_params": 1, "total_params": 10}
END = {"trainer_id": 7, "wall_s": 1.0, "global_step": 3, "trainable_params": 1, "total_params": 10,
       "optimizer_params": 1, "error": None}


def _line(event: str, **fields) -> str:
    return json.dumps({"v": 1, "event": event, "pid": 10, "t": 1.0, **fields})


def _summary(*lines: str) -> Telemetry:
    events, malformed = read_mod.parse_events("\n".join(lines).encode())
    return read_mod.summarise(events, malformed=malformed)


def test_forged_quantization_facts_make_the_line_malformed():
    good = {"linear4bit": 2, "quant_types": ["nf4"], "double_quant": [True], "compute_dtypes": ["torch.float32"],
            "quant_storage": ["torch.uint8"], "full_precision_linear": 0, "full_precision_dtypes": [],
            "full_precision_examples": [],
            "other_quantized": 0, "other_quantized_kinds": [], "lora_layers": 2, "lora_on_4bit": 2,
            "lora_trainable": 2, "lora_trainable_on_4bit": 2, "lora_base_types": ["Linear4bit"],
            "modules_scanned": 40, "capped": False}
    forged = [
        "yes",
        ["nf4"],
        {**good, "linear4bit": "many"},
        {**good, "linear4bit": -1},
        {**good, "quant_types": "nf4"},
        {**good, "double_quant": ["sure"]},
        {**good, "lora_on_4bit": 3},  # more LoRA layers on 4-bit bases than LoRA layers
        {**good, "surprise": 1},
        {"linear4bit": 2},  # required facts missing
    ]
    tel = _summary(*(_line("train_start", **START, quantization=q) for q in forged))
    assert tel.malformed_lines == len(forged) and tel.train_runs == []
    forged_end = [
        {"quant4_forwards": "lots"},
        {"quant4_grad_forwards": -5},
        {"quant4_grad_forwards": 1.5},
        {"quant4_forwards": 3, "quant4_grad_forwards": 5},  # more grad-enabled calls than calls
    ]
    tel = _summary(_line("train_start", **START, quantization=good), *(_line("train_end", **END, **f) for f in forged_end))
    assert tel.malformed_lines == len(forged_end) and not tel.train_runs[0].ended
    [run] = _summary(
        _line("train_start", **START, quantization=good), _line("train_end", **END, quant4_grad_forwards=5)
    ).train_runs
    assert run.quantization.lora_on_4bit == 2 and run.quantization.quant_types == ["nf4"]
    assert (run.quant4_grad_forwards, run.quant4_forwards, run.quant4_grad_forwards_in_model) == (5, None, None)


def test_files_from_before_the_quantization_fields_still_parse():
    tel = _summary(_line("train_start", **START), _line("train_end", **END))
    assert tel.malformed_lines == 0
    [run] = tel.train_runs
    assert run.ended and run.quantization is None and run.quant4_grad_forwards is None


@pytest.mark.slow
def test_each_training_keeps_its_own_loss_curve(runs):
    """A search trains one model after another: each run's logged losses are its own, by trainer number."""
    assert len({r.trainer_id for r in runs.values()}) == 5
    for run in runs.values():
        assert [step for step, _ in run.losses] == [1, 2, 3]
    assert runs["qlora"].losses != runs["lora"].losses  # 4-bit weights change the numbers
