"""The policy/reference probe at the start of DPO training: real TRL DPOTrainer runs on the tiny model
(CPU, one step each), and the grader scoring the same models with the same shared module."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from grader.telemetry import Telemetry, read_telemetry
from grader.telemetry.read import Probe
from grader.telemetry.site import tunegrade_probe as probe

TINY = Path(__file__).resolve().parents[3] / "tasks" / "_shared" / "models" / "tiny"

# One process, four trainers (imports are most of the cost); telemetry numbers them 1 to 4.
SCRIPT = """
import sys, torch
from pathlib import Path
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
from trl import DPOConfig, DPOTrainer

out, tiny = Path(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(tiny)
pairs = Dataset.from_list([
    {"prompt": [{"role": "user", "content": f"Where is parcel {i}?"}],
     "chosen": [{"role": "assistant", "content": f"Parcel {i} arrives tomorrow."}],
     "rejected": [{"role": "assistant", "content": "Read the FAQ."}]}
    for i in range(4)
])
lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def base():
    return AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)


def dpo(name, model, **kwargs):
    args = DPOConfig(output_dir=str(out / name), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-3,
                     bf16=False, gradient_checkpointing=False, use_cpu=True, report_to=[], save_strategy="no",
                     logging_steps=1, max_length=64)
    trainer = DPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=tok, **kwargs)
    trainer.train()
    return trainer


# 1. a fresh adapter: TRL's reference is the model with its adapters disabled
dpo("fresh", base(), ref_model=None, peft_config=LoraConfig(**lora))
# 2. an explicit reference model, unlike the policy
ref = base()
ref.model.norm.weight.data.mul_(1.5)
ref.save_pretrained(out / "ref-model")
dpo("explicit", base(), ref_model=ref, peft_config=LoraConfig(**lora))
# 3. training continues an existing (non-zero) adapter: TRL copies it as the "ref" adapter
dpo("continued", get_peft_model(base(), LoraConfig(init_lora_weights=False, **lora)))


class WithRef(Trainer):  # DPO-like, but without a tokenizer: the probe fails, training goes on
    ref_model = None


ids = torch.randint(0, 3000, (4, 12)).tolist()
args = TrainingArguments(output_dir=str(out / "no-tokenizer"), max_steps=1, use_cpu=True, report_to=[],
                         save_strategy="no")
WithRef(model=base(), args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids})).train()
"""


@dataclass
class Run:
    dir: Path
    telemetry: Telemetry

    def probe(self, trainer_id: int) -> Probe:
        [run] = [r for r in self.telemetry.train_runs if r.trainer_id == trainer_id]
        assert run.cls == "DPOTrainer" and run.ended and run.error is None
        assert run.probe is not None
        return run.probe


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, env_for) -> Run:
    d = tmp_path_factory.mktemp("dpo-probe")
    (d / "dpo.py").write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(d / "dpo.py"), str(d), str(TINY)],
        check=False,
        cwd=d,
        env=env_for(d, d / "telemetry.jsonl"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    tel = read_telemetry(d / "telemetry.jsonl")
    assert tel.malformed_lines == 0
    return Run(d, tel)


def close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def load(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY)


@pytest.mark.slow
def test_fresh_adapter_reference_is_the_model_with_adapters_disabled(dpo_run):
    fresh = dpo_run.probe(1)
    assert fresh.reference_via == "disabled_adapters"
    assert len(fresh.policy) == len(fresh.ids) - 1 > 20
    assert close(fresh.policy, fresh.reference)  # a fresh LoRA adapter is the identity
    assert all(lp <= 0 for lp in fresh.policy)


@pytest.mark.slow
def test_explicit_reference_model_is_scored(dpo_run):
    fresh, explicit = dpo_run.probe(1), dpo_run.probe(2)
    assert explicit.reference_via == "ref_model"
    assert explicit.ids == fresh.ids and close(explicit.policy, fresh.policy)
    assert not close(explicit.reference, explicit.policy, tol=1e-2)


@pytest.mark.slow
def test_continued_adapter_reference_is_trls_ref_adapter(dpo_run):
    fresh, continued = dpo_run.probe(1), dpo_run.probe(3)
    assert continued.reference_via == "ref_adapter"
    assert close(continued.policy, continued.reference)  # TRL's copy of the adapter being trained
    assert not close(continued.policy, fresh.policy, tol=1e-2)  # a non-zero adapter changes the model
    run = next(r for r in dpo_run.telemetry.train_runs if r.trainer_id == 3)
    assert set(run.peft_configs) == {"default", "ref"}


@pytest.mark.slow
def test_a_failed_probe_is_a_hook_error_and_training_goes_on(dpo_run):
    [error] = dpo_run.telemetry.hook_errors
    assert error.startswith("tunegrade_probe: AttributeError")
    run = next(r for r in dpo_run.telemetry.train_runs if r.trainer_id == 4)
    assert run.cls == "WithRef" and run.probe is None
    assert run.ended and run.error is None and run.global_step == 1


@pytest.mark.slow
def test_grader_reproduces_the_recorded_probe(dpo_run):
    """The same shared module, in the grader's process, on the models the run started from."""
    tok = tokenizer()
    ids = probe.probe_ids(tok)
    fresh, explicit = dpo_run.probe(1), dpo_run.probe(2)
    assert fresh.ids == ids
    assert close(probe.token_logprobs(load(TINY), ids), fresh.policy)
    assert close(probe.token_logprobs(load(dpo_run.dir / "ref-model"), ids), explicit.reference)


def test_probe_restores_adapter_gradients_and_modes():
    """In-process: the probe leaves the active adapter, requires_grad and every module's mode as found,
    and takes the tokenizer from a processor that wraps one."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(load(TINY), lora)
    model.add_adapter("ref", lora)  # as TRL does: not trainable, not active
    model.train()
    layers = model.base_model.model.model.layers
    layers[0].eval()  # mixed states must survive: a frozen layer, a frozen part of the active adapter
    layers[1].self_attn.q_proj.lora_A["default"].weight.requires_grad_(False)  # set_adapter would unfreeze it
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    assert any(".ref." in n and not g for n, g in grads.items())
    trainer = SimpleNamespace(model=model, ref_model=None, processing_class=SimpleNamespace(tokenizer=tokenizer()))
    result = probe.probe_trainer(trainer)
    assert result["reference_via"] == "ref_adapter" and len(result["policy"]) == len(result["ids"]) - 1
    assert model.active_adapter == "default"
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert probe.reference_logprobs(SimpleNamespace(ref_model=None), load(TINY), result["ids"]) == (None, None)
