"""Promotion review (grader/review.py, `tunegrade review`): one person's results on a role's ladder."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grader.cli import main
from grader.constants import RUBRICS_DIR
from grader.panel import Sheet, SheetEntry, merge_sheets
from grader.result import Result, save_result
from grader.review import Review, build_review
from grader.rubric import load_rubrics

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib: make helpers importable
from result_helpers import as_task, data_prep  # noqa: E402

RUBRIC = load_rubrics(RUBRICS_DIR)["llm-engineer"]
TASK_LEVELS = ["junior", "middle", "middle", "senior"]  # data-prep, lora-sft, qlora-tune, sft-dpo


def with_panel(result: Result, scores: dict[str, int]) -> Result:
    entries = [SheetEntry(id=comp, score=score) for comp, score in scores.items()]
    sheet = Sheet(candidate=result.candidate, task=result.task.id, role=result.role, level=result.level,
                  submission_sha256=result.submission_sha256, rater="ann", competencies=entries)
    return merge_sheets(result, RUBRIC, [(Path("ann.yaml"), sheet)], "2026-03-01T00:00:00+00:00")


def statuses(review: Review, level: str) -> dict[str, str]:
    return {c.id: c.status for c in next(r for r in review.ladder if r.level == level).competencies}


def all_tasks(lora_status: str = "pass") -> list[Result]:
    base = data_prep()
    return [with_panel(base, {"fine-tuning-basics": 3}), as_task(base, "lora-sft", lora_status),
            as_task(base, "qlora-tune"), as_task(base, "sft-dpo")]


def test_ladder_from_all_results_checks() -> None:
    review = build_review("alice", RUBRIC, all_tasks(), TASK_LEVELS)
    # trainer-basics (junior) is evidenced by lora-sft, a middle task: every level takes every result's checks.
    assert statuses(review, "junior") == {"fine-tuning-basics": "met", "instruction-data-format": "met",
                                          "trainer-basics": "met"}
    assert set(statuses(review, "middle").values()) == {"met"}
    assert statuses(review, "senior") == {
        "production-pipelines": "awaiting-panel", "data-curation": "awaiting-panel",
        "multi-stage-training": "met", "distributed-fine-tuning": "met", "hyperparameter-optimization": "awaiting-panel"}
    assert [r.state for r in review.ladder] == ["met", "met", "incomplete", "beyond-tasks", "beyond-tasks"]
    assert (review.current, review.next) == ("middle", "senior")
    assert [c.id for c in review.blockers] == ["production-pipelines", "data-curation", "hyperparameter-optimization"]


def test_levels_above_every_task_are_not_assessed_by_any_task() -> None:
    review = build_review("alice", RUBRIC, all_tasks(), TASK_LEVELS)
    assert review.top_task_level == "senior"
    for rung in review.ladder[3:]:
        assert rung.state == "beyond-tasks" and rung.score is None
        assert {(c.status, c.why) for c in rung.competencies} == {("not-assessed", "not assessed by any task")}


def test_not_met_blocks_the_ladder_and_uncovered_is_not_failed() -> None:
    review = build_review("alice", RUBRIC, all_tasks(lora_status="fail"), TASK_LEVELS)
    assert statuses(review, "junior")["trainer-basics"] == "not-met"
    assert review.ladder[0].state == "not-met"
    assert (review.current, review.next) == (None, "junior")
    assert [(c.id, c.status) for c in review.blockers] == [("trainer-basics", "not-met")]
    only_data_prep = build_review("alice", RUBRIC, [data_prep()], TASK_LEVELS)
    assert statuses(only_data_prep, "junior") == {"fine-tuning-basics": "awaiting-panel",
                                                  "instruction-data-format": "met", "trainer-basics": "not-assessed"}
    assert statuses(only_data_prep, "senior")["production-pipelines"] == "not-assessed"  # no senior result to merge into
    assert [r.state for r in only_data_prep.ladder[:3]] == ["incomplete"] * 3


def test_a_regrade_counts_once_by_its_latest_grade() -> None:
    old = as_task(data_prep(), "lora-sft", "fail").model_copy(update={"created_at": "2020-01-01T00:00:00+00:00"})
    review = build_review("alice", RUBRIC, [old, *all_tasks()], TASK_LEVELS)
    assert statuses(review, "junior")["trainer-basics"] == "met"
    assert len(review.evidence) == 4 and len(review.warnings) == 1 and "lora-sft" in review.warnings[0]


def stored(tmp_path: Path, results: list[Result]) -> list[str]:
    paths = []
    for r in results:
        path = tmp_path / "graded" / r.task.id / "result.json"
        path.parent.mkdir(parents=True)
        save_result(r, path)
        paths.append(str(path))
    return paths


def test_review_page_links_resolve(capsys, tmp_path: Path) -> None:
    out = tmp_path / "review"
    code = main(["review", "--person", "alice", "--role", "llm-engineer", *stored(tmp_path, all_tasks()),
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    page = out / "review.html"
    assert captured.out.strip() == str(page)
    html = page.read_text()
    assert "not assessed by any task" in html and "awaiting panel" in html and "reaches the level's pass score" in html
    hrefs = set(re.findall(r'href="([^"]+)"', html))
    assert any("#check-" in h for h in hrefs) and any("#competency-fine-tuning-basics" in h for h in hrefs)
    for href in hrefs:
        target, _, anchor = href.partition("#")
        file = out / target if target else page
        assert file.is_file(), href
        if anchor:
            assert f'id="{anchor}"' in file.read_text(), href


def test_another_roles_result_is_refused(capsys, tmp_path: Path) -> None:
    other = data_prep().model_copy(update={"role": "data-scientist"})
    code = main(["review", "--person", "alice", "--role", "llm-engineer", *stored(tmp_path, [other]),
                 "--out", str(tmp_path / "review")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "graded for role 'data-scientist', not 'llm-engineer'" in err
    assert not (tmp_path / "review").exists()


def test_another_candidates_result_is_a_warning(capsys, tmp_path: Path) -> None:
    code = main(["review", "--person", "bob", "--role", "llm-engineer", *stored(tmp_path, [data_prep()]),
                 "--out", str(tmp_path / "review")])
    err = capsys.readouterr().err
    assert code == 0 and "tunegrade: warning: " in err and "candidate 'alice', not 'bob'" in err


def test_lead_and_principal_tasks_put_checks_on_the_top_rungs() -> None:
    """model-selection (lead) and ab-and-cost (principal) evidence the competencies they were built for;
    the strategy and platform ones stay with the panel."""
    results = [*all_tasks(), as_task(data_prep(), "model-selection"), as_task(data_prep(), "ab-and-cost")]
    review = build_review("alice", RUBRIC, results, [*TASK_LEVELS, "lead", "principal"])
    assert review.top_task_level == "principal"
    assert statuses(review, "lead") == {"team-strategy": "awaiting-panel", "best-practices": "awaiting-panel",
                                        "experiment-coordination": "awaiting-panel", "model-selection": "met"}
    assert statuses(review, "principal") == {
        "enterprise-platform": "awaiting-panel", "automated-fine-tuning": "awaiting-panel", "model-versioning": "met",
        "ab-testing": "met", "cost-speed-at-scale": "met"}
    failed_ab = as_task(data_prep(), "ab-and-cost", "fail")
    review = build_review("alice", RUBRIC, [*results[:-1], failed_ab], [*TASK_LEVELS, "lead", "principal"])
    assert {c: s for c, s in statuses(review, "principal").items() if s != "awaiting-panel"} == {
        "model-versioning": "not-met", "ab-testing": "not-met", "cost-speed-at-scale": "not-met"}
