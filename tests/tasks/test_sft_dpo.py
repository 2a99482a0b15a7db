"""sft-dpo's checks on crafted outputs: pipeline.json, trainer_state.json and the distributed run's telemetry
written by hand, so the rules that need no model are pinned without training (the corpus grades real runs
end to end, tests/tasks/test_reference_solutions.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from grader.checks import Artifacts, CandidateFault, CheckContext, RunArtifacts
from grader.checks.base import sibling_module
from grader.tasks import get_task
from sandbox import ExecResult

PACK = get_task("sft-dpo")
CHECKS = PACK.checks
measure = sibling_module(str(PACK.dir / "checks.py"), "measure")
checks = sibling_module(str(PACK.dir / "checks.py"), "checks")
OUTPUTS = ("sft/adapter/adapter_config.json", "sft/adapter/adapter_model.safetensors",
           "dpo/adapter/adapter_config.json", "dpo/adapter/adapter_model.safetensors", "dpo/trainer_state.json",
           "pipeline.json")
PROBE = {"ids": [1, 2, 3], "policy": [-1.0, -2.0], "reference": [-1.0, -2.0], "reference_via": "disabled_adapters"}


def event(kind: str, pid: int, **fields: Any) -> str:
    return json.dumps({"v": 1, "event": kind, "pid": pid, "t": 1.0, **fields})


def start(pid: int, rank: int | None, ppid: int = 1) -> str:
    return event("start", pid, ppid=ppid, argv=["python"], cwd="/sandbox/work", python="3.11", rank=rank,
                 local_rank=rank, world_size=None if rank is None else 2)


def dpo_training(pid: int) -> list[str]:
    return [event("train_start", pid, trainer_id=1, cls="DPOTrainer", bases=["Trainer"], model_cls="LlamaForCausalLM",
                  name_or_path="m", trainable_params=10, total_params=100, peft_configs=None, probe=PROBE),
            event("train_end", pid, trainer_id=1, wall_s=1.0, global_step=10, trainable_params=10, total_params=100,
                  optimizer_params=10, error=None)]


def run(tmp_path: Path, name: str, settings: dict[str, Any], telemetry: list[str] | None = None) -> RunArtifacts:
    out = tmp_path / name / "out"
    for rel in OUTPUTS:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("{}")
    (out / "pipeline.json").write_text(json.dumps(settings))
    path = None
    if telemetry is not None:
        path = tmp_path / name / "telemetry.jsonl"
        path.write_text("\n".join(telemetry) + "\n")
    result = ExecResult(returncode=0, duration_s=30.0, cpu_s=40.0, max_rss_mb=900.0, stdout_path=out.parent / "stdout.txt",
                        stderr_path=out.parent / "stderr.txt")
    return RunArtifacts(name, ["python"], out, result, telemetry_path=path)


def settings(**changes: Any) -> dict[str, Any]:
    return {"beta": 0.1, "world_size": 1, "eval_pairs": list(range(0, 170, 10))} | changes


def context(tmp_path: Path) -> CheckContext:
    return CheckContext(task_dir=PACK.dir, inputs={"data": PACK.dir / "public" / "data"}, params={}, seed=1,
                        manifest=None, spec=PACK.spec)


def distributed(tmp_path: Path, telemetry: list[str], **changes: Any) -> Any:
    runs = {"main": run(tmp_path, "main", settings()),
            "distributed": run(tmp_path, "distributed", settings(world_size=2) | changes, telemetry)}
    return CHECKS["distributed"](Artifacts(runs=runs), context(tmp_path))


def torchrun(writes: dict[int, list[str]]) -> list[str]:
    """A launcher (pid 10) and ranks 0 and 1 (pids 11, 12) that both ran DPO; ``writes``: pid -> files written."""
    lines = [start(10, None), start(11, 0, ppid=10), start(12, 1, ppid=10), *dpo_training(11), *dpo_training(12)]
    return lines + [event("file_written", pid, path=f"/sandbox/out/{p}", via="open") for pid, paths in writes.items()
                    for p in paths]


def test_a_file_written_by_both_ranks_fails(tmp_path: Path) -> None:
    outcome = distributed(tmp_path, torchrun({11: ["pipeline.json", "sft/adapter/adapter_config.json"],
                                              12: ["pipeline.json"]}))
    assert outcome.status == "fail"
    assert "written by more than one rank, e.g. pipeline.json by ranks [0, 1]" in outcome.message
    assert outcome.data["written_by_several_ranks"] == ["/sandbox/out/pipeline.json"]


def test_dpo_on_one_rank_only_and_a_wrong_world_size_fail(tmp_path: Path) -> None:
    lines = [start(10, None), start(11, 0, ppid=10), start(12, 1, ppid=10), *dpo_training(11)]
    outcome = distributed(tmp_path, lines, world_size=1)
    assert outcome.status == "fail"
    assert "world_size 1" in outcome.message and "rank(s) [0], not on both" in outcome.message


def test_a_file_missing_from_the_distributed_run_fails(tmp_path: Path) -> None:
    runs = {"main": run(tmp_path, "main", settings()),
            "distributed": run(tmp_path, "distributed", settings(world_size=2), torchrun({11: ["pipeline.json"]}))}
    (runs["distributed"].out_dir / "dpo" / "trainer_state.json").unlink()
    outcome = CHECKS["distributed"](Artifacts(runs=runs), context(tmp_path))
    assert outcome.status == "fail" and "missing, e.g. dpo/trainer_state.json" in outcome.message


def test_no_dpo_training_seen_fails_dpo_from_sft(tmp_path: Path) -> None:
    lines = [start(10, None)]
    runs = {"main": run(tmp_path, "main", settings(), lines)}
    outcome = CHECKS["dpo-from-sft"](Artifacts(runs=runs), context(tmp_path))
    assert outcome.status == "fail" and "no DPO training" in outcome.message


@pytest.mark.parametrize(("bad", "message"), [
    ({"beta": 0}, "pipeline.json: beta: Input should be greater than 0"),
    ({"beta": float("inf")}, "beta: Value error, must be finite"),
    ({"eval_pairs": [1, 2]}, "eval_pairs: List should have at least 16 items"),
    ({"eval_pairs": [3] * 16}, "eval_pairs: Value error, must be distinct"),
    ({"world_size": "two"}, "world_size: Input should be a valid integer"),
])
def test_pipeline_json_is_validated(tmp_path: Path, bad: dict[str, Any], message: str) -> None:
    out = run(tmp_path, "main", settings(**bad)).out_dir
    with pytest.raises(CandidateFault, match=message.replace("(", r"\(")):
        measure.settings(out)


def test_eval_pairs_past_the_file_fail_reported_matches(tmp_path: Path) -> None:
    runs = {"main": run(tmp_path, "main", settings(eval_pairs=list(range(160, 400, 10))))}
    (runs["main"].out_dir / "dpo" / "trainer_state.json").write_text(json.dumps(
        {"log_history": [{"eval_rewards/accuracies": 1.0, "eval_rewards/margins": 0.5}]}))
    outcome = CHECKS["reported-matches"](Artifacts(runs=runs), context(tmp_path))
    assert outcome.status == "fail" and "past the" in outcome.message


def test_no_final_evaluation_logged_is_the_candidates_fault(tmp_path: Path) -> None:
    runs = {"main": run(tmp_path, "main", settings())}
    (runs["main"].out_dir / "dpo" / "trainer_state.json").write_text(json.dumps({"log_history": [{"loss": 0.6}]}))
    with pytest.raises(CandidateFault, match="logs no evaluation"):
        CHECKS["reported-matches"](Artifacts(runs=runs), context(tmp_path))


def test_batch_means_weigh_a_short_last_batch_as_a_full_one() -> None:
    assert checks._batch_means((1.0, 1.0, 1.0, 4.0), 3) == pytest.approx(2.5)
    assert checks._batch_means((1.0, 2.0, 3.0, 4.0), 2) == pytest.approx(2.5)
