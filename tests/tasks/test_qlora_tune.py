"""qlora-tune's checks on crafted outputs: trials.jsonl, best/, TensorBoard runs and telemetry written by
hand, so each rule is pinned without training (the corpus grades real runs end to end)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from grader.checks import Artifacts, CandidateFault, CheckContext, RunArtifacts
from grader.tasks import get_task
from sandbox import ExecResult

PACK = get_task("qlora-tune")
CHECKS = PACK.checks
QLORA = {"linear4bit": 28, "quant_types": ["nf4"], "double_quant": [True], "compute_dtypes": ["torch.float32"],
         "quant_storage": ["torch.uint8"], "other_quantized": 0, "other_quantized_kinds": [],
         "full_precision_linear": 0, "full_precision_dtypes": [], "full_precision_examples": [], "lora_layers": 16,
         "lora_on_4bit": 16, "lora_trainable": 16, "lora_trainable_on_4bit": 16, "lora_base_types": ["Linear4bit"],
         "modules_scanned": 120, "capped": False}
PLAIN = QLORA | {"linear4bit": 0, "quant_types": [], "double_quant": [], "compute_dtypes": [], "quant_storage": [],
                 "full_precision_linear": 28, "full_precision_dtypes": ["torch.float32"],
                 "full_precision_examples": ["model.layers.0.self_attn.q_proj.base_layer"], "lora_on_4bit": 0,
                 "lora_trainable_on_4bit": 0, "lora_base_types": ["Linear"]}
TRIALS = [(5e-3, 16, 2.17), (1e-2, 4, 2.31), (5e-4, 8, 3.60)]


def event(kind: str, **fields: Any) -> str:
    return json.dumps({"v": 1, "event": kind, "pid": 7, "t": 1.0, **fields})


def telemetry(trials: list[tuple[float, int, float]], quantization: dict | None = None, forwards: int = 90) -> str:
    """What the hooks write for a search: one trainer per trial, its arguments, its LoRA config, its losses."""
    lines = []
    for n, (lr, r, _) in enumerate(trials, start=1):
        peft = {"default": {"r": r, "lora_alpha": 2 * r, "peft_type": "LORA"}}
        lines += [event("trainer_init", trainer_id=n, cls="Trainer", bases=[], args_cls="TrainingArguments",
                        args={"learning_rate": lr}, model_cls="PeftModelForCausalLM", name_or_path="m",
                        peft_configs=peft, train_rows=355, eval_rows=69),
                  event("train_start", trainer_id=n, cls="Trainer", bases=[], model_cls="PeftModelForCausalLM",
                        name_or_path="m", trainable_params=1, total_params=100, peft_configs=peft,
                        quantization=quantization if quantization is not None else QLORA)]
        lines += [event("log", trainer_id=n, step=s, epoch=None, logs={"loss": loss_at(n, s)}) for s in (1, 2, 3)]
        lines += [event("log", trainer_id=n, step=3, epoch=None, logs={"eval_loss": 2.5}),
                  event("train_end", trainer_id=n, wall_s=1.0, global_step=3, trainable_params=1, total_params=100,
                        optimizer_params=1, error=None, quant4_forwards=2 * forwards, quant4_grad_forwards=forwards,
                        quant4_grad_forwards_in_model=forwards)]
    return "\n".join(lines) + "\n"


def loss_at(trial: int, step: int) -> float:
    return 4.0 - 0.3 * step - 0.01 * trial + 1e-7  # not representable in float32


def write_runs(out: Path, trials: int, *, eval_curve: bool = True, offset: float = 0.0) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for n in range(1, trials + 1):
        with SummaryWriter(log_dir=str(out / "runs" / f"trial-{n}")) as writer:
            for s in (1, 2, 3):
                writer.add_scalar("train/loss", loss_at(n, s) + offset, s)
            if eval_curve:
                writer.add_scalar("eval/loss", 2.5, 3)


def submission(tmp: Path, trials: list[tuple[float, int, float]] = TRIALS, *, chosen: int | None = None,
               tel: str | None = None, runs: bool = True) -> tuple[Artifacts, CheckContext]:
    out = tmp / "out"
    out.mkdir(parents=True)
    rows = [{"trial": i, "params": {"learning_rate": lr, "r": r, "lora_alpha": 2 * r}, "eval_loss": loss}
            for i, (lr, r, loss) in enumerate(trials)]
    (out / "trials.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    best = min(rows, key=lambda row: row["eval_loss"]) if chosen is None else rows[chosen]
    (out / "best").mkdir()
    (out / "best" / "trial.json").write_text(json.dumps(best))
    if runs:
        write_runs(out, len(trials))
    (tmp / "telemetry.jsonl").write_text(tel if tel is not None else telemetry(trials))
    result = ExecResult(returncode=0, duration_s=1.0, stdout_path=tmp / "o", stderr_path=tmp / "e")
    run = RunArtifacts(name="main", argv=[], out_dir=out, result=result, telemetry_path=tmp / "telemetry.jsonl")
    ctx = CheckContext(task_dir=PACK.dir, inputs={}, params={"trials": 3}, seed=1, manifest={}, spec=PACK.spec)
    return Artifacts(runs={"main": run}), ctx


def run_check(check_id: str, artifacts: Artifacts, ctx: CheckContext) -> Any:
    return CHECKS[check_id](artifacts, ctx)


def test_an_honest_search_passes_the_file_and_telemetry_checks(tmp_path: Path) -> None:
    artifacts, ctx = submission(tmp_path)
    for check_id in ("quantized-4bit", "trials-count", "search-space", "best-selected", "tracking-logged"):
        outcome = run_check(check_id, artifacts, ctx)
        assert outcome.status == "pass", (check_id, outcome.message)


def test_plain_lora_on_a_full_precision_base_fails_quantized_4bit(tmp_path: Path) -> None:
    artifacts, ctx = submission(tmp_path, tel=telemetry(TRIALS, quantization=PLAIN, forwards=0))
    outcome = run_check("quantized-4bit", artifacts, ctx)
    assert outcome.status == "fail"
    assert "28 base linear layers in full precision" in outcome.message and "no forward pass" in outcome.message


@pytest.mark.parametrize(("change", "words"), [
    ({"quant_types": ["fp4"]}, "not nf4"),
    ({"double_quant": [False]}, "not double-quantised"),
    ({"lora_on_4bit": 8, "lora_trainable_on_4bit": 8}, "8 of 16 LoRA layers"),
])
def test_each_quantisation_fact_is_required(tmp_path: Path, change: dict, words: str) -> None:
    artifacts, ctx = submission(tmp_path, tel=telemetry(TRIALS, quantization=QLORA | change))
    outcome = run_check("quantized-4bit", artifacts, ctx)
    assert outcome.status == "fail" and words in outcome.message


def test_a_load_in_4bit_without_4bit_forwards_in_training_fails(tmp_path: Path) -> None:
    artifacts, ctx = submission(tmp_path, tel=telemetry(TRIALS, forwards=0))
    assert run_check("quantized-4bit", artifacts, ctx).status == "fail"


def test_trials_must_be_distinct_and_each_seen_training(tmp_path: Path) -> None:
    same = [(5e-3, 16, 2.17)] * 3
    artifacts, ctx = submission(tmp_path / "same", same)
    outcome = run_check("trials-count", artifacts, ctx)
    assert outcome.status == "fail" and "only 1 distinct parameter sets" in outcome.message
    listed_not_trained = submission(tmp_path / "unseen", tel=telemetry(TRIALS[:2]))
    outcome = run_check("trials-count", *listed_not_trained)
    assert outcome.status == "fail" and "trial(s) 2" in outcome.message


def test_a_search_that_fixes_the_rank_is_half_a_search(tmp_path: Path) -> None:
    trials = [(5e-3, 8, 2.2), (1e-2, 8, 2.3), (5e-4, 8, 3.6)]
    outcome = run_check("search-space", *submission(tmp_path, trials))
    assert outcome.status == "partial" and outcome.score == 0.5 and "LoRA rank did not vary" in outcome.message


def test_choosing_another_trial_than_the_lowest_loss_fails(tmp_path: Path) -> None:
    outcome = run_check("best-selected", *submission(tmp_path, chosen=2))
    assert outcome.status == "fail" and "trial 0 has the lowest eval_loss" in outcome.message


def test_malformed_trials_file_is_the_candidates_fault(tmp_path: Path) -> None:
    artifacts, ctx = submission(tmp_path)
    (artifacts.runs["main"].out_dir / "trials.jsonl").write_text('{"trial": 0, "params": {"r": 4}, "eval_loss": NaN}\n')
    with pytest.raises(CandidateFault, match="trials.jsonl line 1"):
        run_check("best-selected", artifacts, ctx)


def test_tracked_curves_must_be_the_ones_recorded_inside_the_run(tmp_path: Path) -> None:
    missing = run_check("tracking-logged", *submission(tmp_path / "none", runs=False))
    assert missing.status == "fail" and "no TensorBoard run" in missing.message
    artifacts, ctx = submission(tmp_path / "forged", runs=False)
    write_runs(artifacts.runs["main"].out_dir, 3, offset=0.004)  # curves written afterwards, not the run's
    forged = run_check("tracking-logged", artifacts, ctx)
    assert forged.status == "fail" and "3 of 3 trained trials have no tracked run" in forged.message
    artifacts, ctx = submission(tmp_path / "no-eval", runs=False)
    write_runs(artifacts.runs["main"].out_dir, 3, eval_curve=False)
    no_eval = run_check("tracking-logged", artifacts, ctx)
    assert no_eval.status == "fail" and "hold no validation loss" in no_eval.message
