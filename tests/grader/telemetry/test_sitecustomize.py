"""Real runs of small training scripts with the telemetry hooks on (no mocks)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from grader.telemetry import SITE_DIR, Telemetry, read_telemetry, trained_fingerprints
from grader.telemetry.site import tunegrade_fingerprint as fingerprint

TOKENIZER = Path(__file__).resolve().parents[3] / "tasks" / "_shared" / "tokenizer"

MODEL = """
import sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
from peft import LoraConfig, get_peft_model
from datasets import Dataset

out = Path(sys.argv[1])
torch.manual_seed(0)
config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=128, max_position_embeddings=64)
LlamaForCausalLM(config).save_pretrained(out / "base")
model = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
"""

TRAIN = """
ids = torch.randint(0, 128, (16, 12)).tolist()
data = Dataset.from_dict({"input_ids": ids, "labels": ids})
args = TrainingArguments(output_dir=str(out / "ckpt"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
                         logging_steps=1, eval_strategy="steps", eval_steps=4, save_strategy="no", use_cpu=True,
                         report_to=[], seed=7)
Trainer(model=model, args=args, train_dataset=data, eval_dataset=data.select(range(4))).train()
"""

DISGUISE = """
for p in model.parameters():  # "LoRA" in name only: every weight is trained
    p.requires_grad_(True)
"""

SFT = """
import json, sys, torch
from pathlib import Path
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

out, tok_dir = Path(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
for split, n in (("train", 16), ("valid", 4)):
    with open(out / f"{split}.jsonl", "w") as f:
        for i in range(n):
            msgs = [{"role": "user", "content": f"what is {i} plus {i}?"}, {"role": "assistant", "content": str(2 * i)}]
            f.write(json.dumps({"messages": msgs}) + "\\n")
data = load_dataset("json", data_files={"train": str(out / "train.jsonl"), "validation": str(out / "valid.jsonl")})
tok = AutoTokenizer.from_pretrained(tok_dir)
config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=len(tok), max_position_embeddings=128,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
args = SFTConfig(output_dir=str(out / "ckpt"), max_steps=3, per_device_train_batch_size=4, learning_rate=2e-4,
                 logging_steps=1, bf16=False, gradient_checkpointing=False, use_cpu=True, report_to=[],
                 save_strategy="no", max_length=64, eval_strategy="steps", eval_steps=3)
lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
trainer = SFTTrainer(model=LlamaForCausalLM(config), args=args, train_dataset=data["train"],
                     eval_dataset=data["validation"], processing_class=tok, peft_config=lora)
trainer.train()
"""

HAND_LOOP = """
import json
a, b, c = (torch.randint(0, 128, (n, 12)) for n in (6, 4, 4))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
for _ in range(2):  # a hand-written loop: trained twice on a
    model(input_ids=a, labels=a).loss.backward()
    opt.step()
    opt.zero_grad()
with torch.no_grad():
    model(input_ids=b, labels=b)  # evaluated
model(input_ids=c, labels=c).loss  # a forward pass with gradients on, never backpropagated
(out / "rows.json").write_text(json.dumps({"a": a.tolist(), "b": b.tolist(), "c": c.tolist()}))
"""

SCRIPTS = {"lora": MODEL + TRAIN, "disguised": MODEL + DISGUISE + TRAIN, "sft": SFT, "hand-loop": MODEL + HAND_LOOP}


@dataclass
class Run:
    dir: Path
    returncode: int
    output: str
    telemetry: Telemetry

    def check_ok(self) -> None:
        assert self.returncode == 0, self.output[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env_for) -> dict[str, Run]:
    """The three training scripts, started together (each pays ~10 s of imports)."""
    root = tmp_path_factory.mktemp("telemetry-runs")
    started = {}
    for name, code in SCRIPTS.items():
        d = root / name
        d.mkdir()
        (d / "train.py").write_text(code)
        started[name] = (
            d,
            subprocess.Popen(
                [sys.executable, str(d / "train.py"), str(d), str(TOKENIZER)],
                cwd=d,
                env=env_for(d, d / "telemetry.jsonl"),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
    done = {}
    for name, (d, proc) in started.items():
        output, _ = proc.communicate(timeout=300)
        done[name] = Run(d, proc.returncode, output, read_telemetry(d / "telemetry.jsonl"))
    return done


@pytest.mark.slow
def test_trainer_lora_run_is_recorded(runs):
    run = runs["lora"]
    run.check_ok()
    tel = run.telemetry
    assert tel.present and tel.malformed_lines == 0 and tel.hook_errors == []
    [model] = tel.models_loaded
    assert model.cls == "LlamaForCausalLM"
    assert model.name_or_path == str(run.dir / "base")
    assert model.dtype == model.requested_dtype == "torch.float32"
    assert model.quantization_config is None
    [peft] = tel.peft_configs
    assert peft.via == "get_peft_model" and peft.peft_type == "LORA"
    assert peft.config["r"] == 4 and set(peft.config["target_modules"]) == {"q_proj", "v_proj"}
    assert peft.base_cls == "LlamaForCausalLM"
    assert tel.trainer.cls == "Trainer" and tel.trainer.args_cls == "TrainingArguments"
    args = tel.trainer.args
    assert args["learning_rate"] == 1e-3 and args["max_steps"] == 4 and args["seed"] == 7
    assert args["bf16"] is False and args["eval_strategy"] == "steps"
    assert args["output_dir"] == str(run.dir / "ckpt")
    assert tel.trainer.train_rows == 16 and tel.trainer.eval_rows == 4
    assert tel.trainable_params * 10 < tel.total_params
    [train] = tel.train_runs
    assert train.ended and train.error is None and train.global_step == 4
    assert train.optimizer_params == train.trainable_params_end == tel.trainable_params
    assert train.probe is None  # no ref_model: not DPO-style
    assert [step for step, _ in tel.losses] == [1, 2, 3, 4]
    assert all(3 < loss < 7 for _, loss in tel.losses)  # ~ln(128) for a random model
    assert [step for step, _ in tel.eval_losses] == [4]
    assert str(run.dir / "base" / "config.json") in tel.files_read
    [proc] = tel.processes
    assert tel.exited and proc.exited and proc.uncaught is None
    assert 0 < tel.wall_s < 300 and tel.peak_rss_mb > 100
    assert tel.cuda_peak_mb is None


@pytest.mark.slow
def test_sequences_trained_on_are_fingerprinted_whatever_the_loop(runs):
    """Only what received a gradient: not evaluation, not a forward pass that was never backpropagated."""
    run = runs["hand-loop"]
    run.check_ok()
    rows = json.loads((run.dir / "rows.json").read_text())
    trained = trained_fingerprints(run.dir / "telemetry.jsonl", fingerprint.N, fingerprint.SAMPLE)
    assert all(fingerprint.fingerprints(r) <= trained for r in rows["a"])
    assert not any(fingerprint.fingerprints(r) & trained for r in rows["b"] + rows["c"])
    assert (run.telemetry.trained_rows, run.telemetry.trained_tokens) == (12, 12 * 12)
    assert run.telemetry.trained_ngrams == len(trained) > 0
    assert trained_fingerprints(run.dir / "telemetry.jsonl", fingerprint.N + 1, fingerprint.SAMPLE) == set()
    lora = runs["lora"].telemetry  # Trainer: 4 steps of 4 rows; its evaluation is not training
    assert (lora.trained_rows, lora.trained_tokens) == (16, 16 * 12)


@pytest.mark.slow
def test_full_fine_tuning_disguised_as_lora_is_visible(runs):
    run = runs["disguised"]
    run.check_ok()
    tel = run.telemetry
    [peft] = tel.peft_configs
    assert peft.trainable_params * 10 < peft.total_params  # looked like LoRA when the adapter was applied
    assert tel.trainable_params == tel.total_params  # ... but every parameter trains
    assert tel.train_runs[0].optimizer_params == tel.total_params
    assert tel.train_runs[0].peft_configs["default"]["r"] == 4


@pytest.mark.slow
def test_trl_sft_run_is_recorded(runs):
    run = runs["sft"]
    run.check_ok()
    tel = run.telemetry
    assert tel.malformed_lines == 0 and tel.hook_errors == []
    assert tel.trainer.cls == "SFTTrainer" and tel.trainer.args_cls == "SFTConfig"
    assert "Trainer" in tel.trainer.bases
    args = tel.trainer.args
    assert args["bf16"] is False and args["gradient_checkpointing"] is False and args["use_cpu"] is True
    assert args["learning_rate"] == 2e-4 and args["max_length"] == 64
    [peft] = tel.peft_configs  # applied by SFTTrainer through `from peft import get_peft_model`
    assert peft.config["r"] == 8
    assert tel.trainable_params * 10 < tel.total_params
    assert len(tel.losses) == 3 and len(tel.eval_losses) == 1
    assert tel.trained_rows == 3 * 4 and tel.trained_ngrams > 0  # TRL's fused head returns log-probs, not logits
    [load] = tel.datasets_loaded
    assert load.via == "load_dataset" and load.path == "json"
    assert load.data_files == {"train": str(run.dir / "train.jsonl"), "validation": str(run.dir / "valid.jsonl")}
    assert str(TOKENIZER / "tokenizer_config.json") in tel.files_read
    assert str(run.dir / "train.jsonl") in tel.files_read  # read by datasets' json builder through open()
    assert tel.exited


def test_files_read_are_recorded_across_subprocesses(run_py, tmp_path):
    data = tmp_path / "valid.jsonl"
    data.write_text("{}\n")
    other = tmp_path / "other.txt"
    other.write_text("x")
    code = f"""
import subprocess, sys
from pathlib import Path
open({str(data)!r}).read()
Path({str(other)!r}).read_text()
open("written.txt", "w").write("not a read")
try:
    open("missing.txt")
except FileNotFoundError:
    pass
else:
    raise SystemExit("the hook changed open()")
subprocess.run([sys.executable, "-c", "open('child.txt', 'rb')"], check=True)
"""
    (tmp_path / "child.txt").write_text("c")
    proc, out = run_py(code)
    assert proc.returncode == 0, proc.stderr
    tel = read_telemetry(out)
    assert {str(data), str(other), str(tmp_path / "child.txt")} <= set(tel.files_read)
    assert str(tmp_path / "written.txt") not in tel.files_read
    assert str(tmp_path / "missing.txt") not in tel.files_read
    parent, child = tel.processes
    assert child.ppid == parent.pid and child.exited
    assert tel.exited and tel.wall_s == parent.wall_s
    assert not any(p.startswith(sys.prefix) for p in tel.files_read)


def test_uncaught_exception_is_noted_and_exit_code_kept(run_py):
    proc, out = run_py("raise ValueError('boom')")
    assert proc.returncode == 1 and "ValueError: boom" in proc.stderr
    assert read_telemetry(out).processes[0].uncaught == "ValueError"


def _pass_seconds(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return time.perf_counter() - start


def test_startup_cost_is_small_and_imports_nothing_heavy(tmp_path, env_for):
    on, off = env_for(tmp_path, tmp_path / "t.jsonl"), env_for(tmp_path, None)
    times_on, times_off = [], []
    for _ in range(5):
        times_off.append(_pass_seconds(off))
        times_on.append(_pass_seconds(on))
    assert statistics.median(times_on) - statistics.median(times_off) < 0.3
    probe = (
        "import sys, json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'transformers', 'peft', 'datasets', 'trl', 'numpy'})))"
    )
    child = subprocess.run([sys.executable, "-c", probe], env=on, capture_output=True, text=True, check=True)
    assert json.loads(child.stdout) == []
    assert (
        "sitecustomize"
        in subprocess.run(
            [sys.executable, "-c", "import sys; print(sys.modules['sitecustomize'].__file__)"],
            env=on,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )


def test_off_without_a_config_file(tmp_path, env_for):
    """The package's own site folder has no config: on PYTHONPATH it changes nothing."""
    env = env_for(tmp_path, None) | {"PYTHONPATH": str(SITE_DIR), "TUNEGRADE_TELEMETRY": str(tmp_path / "t.jsonl")}
    code = (
        "import builtins, io; assert builtins.open is io.open and type(open).__name__ == 'builtin_function_or_method'"
    )
    subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []


def test_shadowed_sitecustomize_still_runs(tmp_path, env_for):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import builtins\nbuiltins.TG_CHAINED = True\n")
    env = env_for(tmp_path, tmp_path / "t.jsonl")
    env["PYTHONPATH"] += f":{other}"
    subprocess.run([sys.executable, "-c", "assert TG_CHAINED"], env=env, check=True)
