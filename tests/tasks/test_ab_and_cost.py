"""ab-and-cost, Part B: the generator, and the checks cost-quality, cost-reported and version-lineage on
hand-made registry.json and cost.json beside an untrained adapter (no training: the corpus grades real
runs end to end)."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from grader.basemodels import TINY_DIR, describe
from grader.checks import Artifacts, CheckContext, InfraFault, RunArtifacts
from grader.tasks import get_task
from sandbox import ExecResult

PACK = get_task("ab-and-cost")
CHECKS = PACK.checks
SEED = "ab-and-cost-test-cohort"
REF_CPU_S = 20.0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One generated cohort and an untrained LoRA adapter on tiny, with the grader-independent val NLL."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from grader.evaluation import encode_chat, load_adapter, load_model, response_nll

    root = tmp_path_factory.mktemp("cohort")
    manifest = PACK.generate(root / "gen", SEED, {"model": TINY_DIR})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32, local_files_only=True)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    get_peft_model(model, config).save_pretrained(root / "adapter", safe_serialization=True)
    base, tokenizer = load_model(TINY_DIR, device="cpu", dtype="float32")
    val = [json.loads(line) for line in (root / "gen" / "data" / "val.jsonl").read_text().splitlines()]
    val_nll = response_nll(load_adapter(base, root / "adapter"), encode_chat(tokenizer, val)).mean_nll
    return {"root": root, "manifest": manifest, "val_nll": val_nll}


def registry(cohort: dict[str, Any], out: Path) -> dict[str, Any]:
    return {"versions": [
        {"id": "base", "parent": None, "kind": "base", "model_sha256": describe(TINY_DIR, "tiny").sha256},
        {"id": "v1", "parent": "base", "kind": "adapter", "path": "adapter",
         "artifact_sha256": sha256(out / "adapter" / "adapter_model.safetensors"),
         "data_sha256": sha256(cohort["root"] / "gen" / "data" / "train.jsonl"),
         "config": {"r": 4}, "metrics": {"val_nll": cohort["val_nll"]}}]}


def honest_cost(cohort: dict[str, Any], cpu_s: float) -> dict[str, Any]:
    brief = cohort["manifest"]["brief"]["scale_to"]
    n_train = cohort["manifest"]["counts"]["train"]
    hours = cpu_s * brief["params"] / describe(TINY_DIR, "tiny").parameters * brief["train_examples"] / n_train / 3600
    return {"run": {"cpu_s": cpu_s}, "scaled": {"cpu_hours": hours, "method": "params × examples"}}


def result(tmp: Path, cpu_s: float | None) -> ExecResult:
    return ExecResult(returncode=0, duration_s=1.0, cpu_s=cpu_s, stdout_path=tmp / "o", stderr_path=tmp / "e")


def submission(tmp: Path, cohort: dict[str, Any], *, cpu_s: float = REF_CPU_S, ref_cpu_s: float | None = REF_CPU_S,
               reg: Any = None, cost: Any = None, target: float | None = None) -> tuple[Artifacts, CheckContext]:
    """A train run's output folder (the cohort's adapter, registry.json, cost.json), a reference run on the
    same adapter, and the grading context; ``reg`` and ``cost`` edit the honest files in place."""
    out, ref_out = tmp / "out", tmp / "ref"
    for folder in (out, ref_out):
        shutil.copytree(cohort["root"] / "adapter", folder / "adapter")
    honest = registry(cohort, out)
    (out / "registry.json").write_text(json.dumps(reg(honest) if reg else honest))
    honest_c = honest_cost(cohort, cpu_s)
    (out / "cost.json").write_text(json.dumps(cost(honest_c) if cost else honest_c))
    manifest = copy.deepcopy(cohort["manifest"])
    if target is not None:
        manifest["brief"]["target_nll"] = target
    gen = cohort["root"] / "gen"
    ctx = CheckContext(task_dir=PACK.dir, inputs={"model": TINY_DIR, "data": gen / "data"}, params={}, seed=1,
                       manifest=manifest, data_dir=gen, spec=PACK.spec)
    runs = {"train": RunArtifacts("train", [], out, result(tmp, cpu_s))}
    references = [RunArtifacts("train", [], ref_out, result(tmp, ref_cpu_s))]
    return Artifacts(runs=runs, references=references), ctx


def run_check(check_id: str, artifacts: Artifacts, ctx: CheckContext) -> Any:
    return CHECKS[check_id](artifacts, ctx)


# -- the generator -----------------------------------------------------------------------------------


def test_the_generator_is_deterministic_and_states_the_brief(tmp_path: Path, cohort: dict[str, Any]) -> None:
    again = PACK.generate(tmp_path / "again", SEED, {})
    first = cohort["root"] / "gen"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert {"data/train.jsonl", "data/val.jsonl", "data/brief.json", "data/ab/interactions.csv",
            "heldout/test.jsonl"} <= {p.as_posix() for p in files}
    assert all((first / p).read_bytes() == (tmp_path / "again" / p).read_bytes() for p in files)
    assert again == cohort["manifest"]
    brief = json.loads((first / "data" / "brief.json").read_text())
    assert brief == again["brief"] and brief["target_nll"] == 2.8
    assert brief["scale_to"] == {"params": 1.0e9, "train_examples": 200_000}
    assert {"ab", "signature", "counts"} <= set(again)
    other = PACK.generate(tmp_path / "other", "another-cohort", {})
    assert (tmp_path / "other" / "data" / "train.jsonl").read_bytes() != (first / "data" / "train.jsonl").read_bytes()
    assert other["signature"] != again["signature"]


def test_public_data_is_the_generator_output_for_the_public_seed(tmp_path: Path) -> None:
    PACK.generate(tmp_path, "public", {})
    for name in ("data/train.jsonl", "data/brief.json", "data/ab/interactions.csv"):
        assert (tmp_path / name).read_bytes() == (PACK.dir / "public" / name).read_bytes(), name


# -- version-lineage ---------------------------------------------------------------------------------


def test_an_honest_registry_passes(tmp_path: Path, cohort: dict[str, Any]) -> None:
    outcome = run_check("version-lineage", *submission(tmp_path, cohort))
    assert outcome.status == "pass", outcome.message


def _edit(index: int, **fields: Any) -> Any:
    def apply(reg: dict[str, Any]) -> dict[str, Any]:
        reg["versions"][index] |= fields
        return reg
    return apply


@pytest.mark.parametrize(("edit", "words"), [
    (_edit(1, artifact_sha256="0" * 64), "artifact_sha256 is not the sha256"),
    (_edit(1, data_sha256=hashlib.sha256(b"public").hexdigest()), "data_sha256 is not the sha256"),
    (_edit(0, model_sha256="0" * 64), "not the base model this run received"),
    (_edit(1, metrics={"val_nll": 1.0}), "metrics.val_nll 1.0000 but the grader measures"),
    (_edit(1, parent="v0"), "parent 'v0' is not a registered version"),
    (_edit(1, path="../ref/adapter"), "outside the run's output folder"),
    (_edit(1, path="missing"), "missing/adapter_model.safetensors does not exist"),
])
def test_each_mismatch_with_the_artifacts_fails(tmp_path: Path, cohort: dict[str, Any], edit: Any, words: str) -> None:
    outcome = run_check("version-lineage", *submission(tmp_path, cohort, reg=edit))
    assert outcome.status == "fail" and words in outcome.message, outcome.message


def test_an_unregistered_adapter_folder_fails(tmp_path: Path, cohort: dict[str, Any]) -> None:
    artifacts, ctx = submission(tmp_path, cohort)
    shutil.copytree(tmp_path / "out" / "adapter", tmp_path / "out" / "checkpoints" / "step-10")
    outcome = run_check("version-lineage", artifacts, ctx)
    assert outcome.status == "fail" and "checkpoints/step-10/ holds an adapter that is not a registered" in outcome.message


def test_a_parent_loop_and_a_malformed_registry_fail(tmp_path: Path, cohort: dict[str, Any]) -> None:
    def loop(reg: dict[str, Any]) -> dict[str, Any]:
        reg["versions"].append(reg["versions"][1] | {"id": "v2", "parent": "v3"})
        reg["versions"].append(reg["versions"][1] | {"id": "v3", "parent": "v2"})
        return reg
    outcome = run_check("version-lineage", *submission(tmp_path / "loop", cohort, reg=loop))
    assert outcome.status == "fail" and "parent chain loops" in outcome.message
    outcome = run_check("version-lineage", *submission(tmp_path / "bad", cohort, reg=lambda r: {"versions": [{}]}))
    assert outcome.status == "fail" and outcome.message.startswith("registry.json: versions.0")


# -- cost-reported -----------------------------------------------------------------------------------


def test_an_estimate_within_the_factor_passes_and_a_missed_ratio_fails(tmp_path: Path, cohort: dict[str, Any]) -> None:
    def times(factor: float) -> Any:
        def apply(cost: dict[str, Any]) -> dict[str, Any]:
            cost["scaled"]["cpu_hours"] *= factor
            return cost
        return apply

    assert run_check("cost-reported", *submission(tmp_path / "ok", cohort)).status == "pass"
    assert run_check("cost-reported", *submission(tmp_path / "x2", cohort, cost=times(2.5))).status == "pass"
    n_train = cohort["manifest"]["counts"]["train"]
    outcome = run_check("cost-reported", *submission(tmp_path / "params-only", cohort,
                                                     cost=times(n_train / 200_000)))
    assert outcome.status == "fail" and "more than 3× off" in outcome.message


def test_a_wrong_own_cpu_figure_scores_half_and_a_malformed_file_fails(tmp_path: Path, cohort: dict[str, Any]) -> None:
    def own(cost: dict[str, Any]) -> dict[str, Any]:
        cost["run"]["cpu_s"] = 1.0
        return cost
    outcome = run_check("cost-reported", *submission(tmp_path / "own", cohort, cost=own))
    assert outcome.status == "partial" and outcome.score == 0.5
    outcome = run_check("cost-reported", *submission(tmp_path / "bad", cohort,
                                                     cost=lambda c: c | {"scaled": {"cpu_hours": -1, "method": "x"}}))
    assert outcome.status == "fail" and "scaled.cpu_hours" in outcome.message


# -- cost-quality ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ratio", "status", "score"), [(0.5, "pass", 1.0), (1.5, "pass", 1.0), (2.25, "partial", 0.5),
                                                         (3.0, "fail", 0.0), (5.0, "fail", 0.0)])
def test_cost_is_scored_against_the_reference_run(tmp_path: Path, cohort: dict[str, Any], ratio: float, status: str,
                                                  score: float) -> None:
    outcome = run_check("cost-quality", *submission(tmp_path, cohort, cpu_s=REF_CPU_S * ratio, target=99.0))
    assert (outcome.status, pytest.approx(outcome.score)) == (status, score), outcome.message


def test_quality_not_reached_fails_however_cheap(tmp_path: Path, cohort: dict[str, Any]) -> None:
    outcome = run_check("cost-quality", *submission(tmp_path, cohort, cpu_s=1.0))  # untrained: base NLL, above 2.8
    assert outcome.status == "fail" and "the quality was not reached" in outcome.message


def test_a_reference_without_a_cpu_measure_is_the_graders_fault(tmp_path: Path, cohort: dict[str, Any]) -> None:
    with pytest.raises(InfraFault):
        run_check("cost-quality", *submission(tmp_path, cohort, ref_cpu_s=None, target=99.0))
