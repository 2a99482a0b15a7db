"""lora-sft against submissions written to fool it: what the run reports is never what decides."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from grader.inputs import prepare_inputs
from grader.pipeline import GradeRequest, grade
from grader.reference import reference_runs
from grader.tasks import get_task
from sandbox import get_backend

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
