"""lora-sft against submissions written to fool it: what the run reports is never what decides."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from grader.checks import Artifacts, CheckContext, RunArtifacts
from grader.inputs import prepare_inputs
from grader.pipeline import GradeRequest, grade
from grader.reference import reference_runs
from grader.solutions import materialise
from grader.tasks import get_task
from sandbox import ExecResult, get_backend

PACK = get_task("lora-sft")
FORGER = Path(__file__).resolve().parents[1] / "fixtures" / "submissions" / "lora-forged"


def public_adapter(tmp: Path) -> Path:
    """The reference solution trained on the public data: what a candidate could train beforehand and ship
    (the grader's own cached run, which learned-cohort-data also compares with)."""
    inputs = prepare_inputs(PACK, tmp / "public-inputs", public=True, hidden_seed=None, base_model="tiny")
    try:
        [run] = reference_runs(PACK, inputs.mounts, get_backend("local"), [1234], inputs.variant,
                               inputs.base.sha256 if inputs.base else None)
    finally:
        inputs.remove()
    assert run.result is not None and run.result.ok
    return run.out_dir / "adapter"


def forged(tmp: Path, mode: str) -> Path:
    sub = tmp / f"forged-{mode}"
    shutil.copytree(FORGER, sub)
    shutil.copy(PACK.dir / "solutions" / "good" / "train.py", sub / "honest.py")
    (sub / "mode.txt").write_text(mode + "\n")
    if mode == "shipped":
        shutil.copytree(public_adapter(tmp), sub / "shipped" / "adapter")
    return sub


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["shipped", "noise"])
def test_forged_runs_cannot_meet(tmp_path: Path, mode: str) -> None:
    """A shipped adapter trained beforehand on the public data once graded 100/strong, and an untrained
    adapter with forged telemetry 80.6/meets: both now fail a critical check measured by the grader."""
    result = grade(GradeRequest(pack=PACK, source=forged(tmp_path, mode), out=tmp_path / "out", candidate=mode))
    checks = {c.id: c for c in result.checks}
    assert result.runs[0].returncode == 0
    assert checks["metrics-honest"].status == "pass"  # the true NLL of what it shipped: honest-looking
    assert checks["loss-decreases"].status == "pass"  # forged inside the run: evidence, not proof
    assert checks["learned-cohort-data"].status == "fail", checks["learned-cohort-data"].evidence.message
    if mode == "noise":
        assert checks["heldout-improves"].status == "fail", checks["heldout-improves"].evidence.message
    assert result.verdict in ("borderline", "below"), (result.verdict, result.score)


@pytest.mark.slow
def test_hostile_json_fails_checks_instead_of_switching_them_off(tmp_path: Path) -> None:
    """Valid JSON the parser chokes on once made checks 'error' and drop out: 100/incomplete instead of a fail."""
    result = grade(GradeRequest(pack=PACK, source=forged(tmp_path, "hostile-json"), out=tmp_path / "out"))
    checks = {c.id: c for c in result.checks}
    assert not [c.id for c in result.checks if c.status == "error"] and not result.errors
    assert checks["metrics-honest"].status == "fail" and "an integer of 5000 digits" in checks["metrics-honest"].evidence.message
    assert checks["eval-logged"].status == "fail" and "nested too deeply" in checks["eval-logged"].evidence.message
    assert result.verdict in ("borderline", "below") and result.score is not None


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return public_adapter(tmp_path_factory.mktemp("public"))


def check_outputs(tmp: Path, adapter: Path, check_id: str, files: dict[str, str | bytes] | None = None):  # type: ignore[no-untyped-def]
    """Run one check on a hand-made main-run output folder (``files`` relative to it), measured on the public data."""
    out = tmp / "out"
    shutil.copytree(adapter, out / "adapter")
    for name, content in (files or {}).items():
        (out / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    result = ExecResult(returncode=0, duration_s=1.0, stdout_path=tmp / "o", stderr_path=tmp / "e")
    artifacts = Artifacts(runs={"main": RunArtifacts("main", [], out, result)})
    ctx = CheckContext(task_dir=PACK.dir, inputs={"model": PACK.dir.parent / "_shared" / "models" / "tiny",
                                                  "data": PACK.dir / "public" / "data"},
                       params={}, seed=0, manifest=None, spec=PACK.spec)
    return PACK.checks[check_id](artifacts, ctx)


@pytest.mark.slow
def test_metrics_honest_catches_a_shaded_loss(tmp_path: Path, shipped: Path) -> None:
    """The old tolerance (0.047-0.126 nats) let a reported loss be shaded undetected."""
    true = check_outputs(tmp_path / "probe", shipped, "metrics-honest", {"metrics.json": '{"eval_loss": 0}'}).data["measured"]
    for shade, status in ((0.0, "pass"), (0.001, "pass"), (-0.01, "fail"), (-0.03, "fail")):
        outcome = check_outputs(tmp_path / str(shade), shipped, "metrics-honest",
                                {"metrics.json": f'{{"eval_loss": {true + shade}}}'})
        assert outcome.status == status, (shade, outcome.message)


@pytest.mark.slow
def test_safe_artifacts_allows_what_honest_tools_write_and_refuses_pickles(tmp_path: Path, shipped: Path) -> None:
    """TRL's `trl sft` writes the tokenizer and template beside the adapter: not a finding. A pickle is."""
    import pickle

    tokenizer = PACK.dir.parent / "_shared" / "models" / "tiny"
    honest = {f"adapter/{name}": (tokenizer / name).read_text() for name in ("tokenizer.json", "tokenizer_config.json")}
    honest["adapter/chat_template.jinja"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    outcome = check_outputs(tmp_path / "trl", shipped, "safe-artifacts", honest)
    assert outcome.status == "pass" and "chat_template.jinja" in outcome.message, outcome.message
    outcome = check_outputs(tmp_path / "pickle", shipped, "safe-artifacts",
                            {"adapter/training_args.json": pickle.dumps({"lr": 3e-3})})
    assert outcome.status == "fail" and "training_args.json (pickle)" in outcome.message


@pytest.mark.slow
def test_an_honest_slower_recipe_is_not_called_contaminated(tmp_path: Path) -> None:
    """A lower learning rate on another cohort once read as training on val (its val/held-out gap moved as
    much as contamination does): the gap alone no longer decides, what the trainer saw does."""
    sub = materialise(PACK, "good", tmp_path / "low-lr")
    train = sub / "train.py"
    train.write_text(train.read_text().replace('"learning_rate": 3e-3', '"learning_rate": 1e-3'))
    result = grade(GradeRequest(pack=PACK, source=sub, out=tmp_path / "out", candidate="low-lr",
                                hidden_seed="corpus-cohort-b"))
    checks = {c.id: c for c in result.checks}
    for check_id in ("eval-uncontaminated", "learned-cohort-data", "metrics-honest", "within-budget"):
        assert checks[check_id].status == "pass", (check_id, checks[check_id].evidence.message)
    assert result.verdict in ("strong", "meets"), (result.verdict, result.score)
