"""Grades through the docker backend match the local backend's: same check statuses, same score
(within a small tolerance for training), and the result records the image it ran in.

Skipped without an engine and image (failed where TUNEGRADE_REQUIRE_DOCKER=1). The echo fixture
needs only ``python`` in the image; data-prep and ab-and-cost need the real candidate image (torch,
transformers, peft), so they run only when the tag built by `tunegrade sandbox build-image` is the
image in use.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from grader.pipeline import GradeRequest, grade
from grader.result import Result
from grader.solutions import list_solutions, materialise
from grader.tasks import discover, get_task
from sandbox import SandboxUnavailable, get_backend

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
MODEL_SCORE_TOLERANCE = 5.0
"""Training on another interpreter build may move the held-out improvement by a few points."""


def _require(image_needed: str | None = None) -> None:
    """Skip (or, with TUNEGRADE_REQUIRE_DOCKER=1, fail) without a usable engine and image."""
    try:
        sb = get_backend("docker")
        reason = None if image_needed in (None, sb.image) else f"the image in use is {sb.image}, not {image_needed}"
    except SandboxUnavailable as exc:
        reason = str(exc)
    if reason and os.environ.get("TUNEGRADE_REQUIRE_DOCKER") == "1":
        pytest.fail(f"TUNEGRADE_REQUIRE_DOCKER=1 but: {reason}")
    if reason:
        pytest.skip(reason)


def _real_image() -> str:
    from sandbox.images import image_tag

    return image_tag("cpu")


def _both(pack, source: Path, out: Path) -> tuple[Result, Result]:
    """The same submission graded on local, then on docker (one after the other: budgets are timed)."""
    local = grade(GradeRequest(pack=pack, source=source, out=out / "local", candidate="c", backend="local"))
    dock = grade(GradeRequest(pack=pack, source=source, out=out / "docker", candidate="c", backend="docker"))
    return local, dock


def _statuses(result: Result) -> dict[str, str]:
    return {c.id: c.status for c in result.checks}


def _assert_docker_recorded(result: Result) -> None:
    assert result.backend == "docker" and result.isolation.mechanism == "docker" and result.isolation.level == "full"
    assert result.isolation.image_digest and result.isolation.image_digest.startswith("sha256:")
    assert not result.errors, result.errors


def test_echo_fixture_grades_the_same_on_docker(tmp_path):
    _require()
    pack = get_task("echo", [ROOT / "tests" / "fixtures" / "tasks"])
    local, dock = _both(pack, pack.dir / "solutions" / "good", tmp_path)
    assert _statuses(dock) == _statuses(local) == {"runs": "pass", "echoed": "pass"}
    assert dock.score == local.score == 100.0
    _assert_docker_recorded(dock)
    assert (tmp_path / "docker" / "result.json").read_text().count(dock.isolation.image_digest) >= 1


@pytest.mark.slow
def test_data_prep_corpus_grades_the_same_on_docker(tmp_path):
    """Every data-prep reference submission (good, each flawed one, the starter): the same findings."""
    _require(_real_image())
    pack = discover([])["data-prep"]
    sources = [*(materialise(pack, s.name, tmp_path / "src" / s.name) for s in list_solutions(pack)), pack.dir / "starter"]
    with ThreadPoolExecutor(max_workers=2) as pool:  # no time budget in data-prep: grades may share the CPUs
        pairs = dict(zip([s.name for s in sources],
                         pool.map(lambda s: _both(pack, s, tmp_path / s.name), sources)))
    assert {name: _statuses(d) for name, (_, d) in pairs.items()} == {
        name: _statuses(loc) for name, (loc, _) in pairs.items()}
    assert {name: d.score for name, (_, d) in pairs.items()} == {name: loc.score for name, (loc, _) in pairs.items()}
    assert pairs["good"][1].score >= 90
    for _, dock in pairs.values():
        _assert_docker_recorded(dock)


@pytest.mark.slow
def test_a_model_task_grades_the_same_on_docker(tmp_path):
    """ab-and-cost's good solution: a LoRA training run and a plain-Python run in the image, the
    telemetry and the adapter coming out of the container, the CPU-seconds its cost is scored on
    metered there, and the references run again in the image. The cheapest model task to grade
    (its reference is one seed): every check a model task's flaws rest on reads what crossed the same
    two paths (the run's files and its telemetry), and the corpus grades every flaw."""
    _require(_real_image())
    pack = discover([])["ab-and-cost"]
    local, dock = _both(pack, materialise(pack, "good", tmp_path / "src"), tmp_path)
    assert _statuses(dock) == _statuses(local)
    assert abs(dock.score - local.score) <= MODEL_SCORE_TOLERANCE
    assert dock.score >= 90
    inside = dock.telemetry["train"]
    assert inside.present and inside.trained_rows == local.telemetry["train"].trained_rows > 0
    assert next(r for r in dock.runs if r.name == "train").cpu_s > 0
    _assert_docker_recorded(dock)
