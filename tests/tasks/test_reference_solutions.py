"""The grader's own test corpus: every task's reference submissions graded end to end.

Each `solutions/good*` scores at least 90 with every check passing; each `solutions/flawed-*`
(a patch against good/, materialised by grader/solutions.py) fails the check its FLAW.md names
(first line `check: <id>`) and is never rated "strong"; the starter does not pass. Grades run
through the real pipeline and the default (local) sandbox.

One cohort is not all cohorts: the good solutions, and a sample of the flawed ones, are also
graded on other hidden seeds (OTHER_COHORTS), so a check that fails honest work on some cohorts
is found here.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from grader.pipeline import GradeRequest, grade
from grader.result import Result
from grader.solutions import list_solutions, materialise
from grader.tasks import TaskPack, discover

PACKS = discover([])
DEFAULT = "default"
OTHER_COHORTS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "data-prep": {"corpus-cohort-b": None, "corpus-cohort-c": ("good",)},
    "lora-sft": {"corpus-cohort-b": ("good", "good-trl", "flawed-train-on-val", "flawed-hand-loop-on-val")},
    "qlora-tune": {"corpus-cohort-b": ("good", "good-trl", "flawed-last-trial")},
    "sft-dpo": {"corpus-cohort-b": ("good", "good-ref-model")},
}
"""Per task, the other hidden seeds and the solutions graded on each (None: all of them)."""
CASES = [(pack.id, sol.name, DEFAULT) for pack in PACKS.values() for sol in list_solutions(pack)] + [
    (pack.id, "starter", DEFAULT) for pack in PACKS.values()]
CASES += [(task, sol.name, cohort) for task, cohorts in OTHER_COHORTS.items() for cohort, names in cohorts.items()
          for sol in list_solutions(PACKS[task]) if names is None or sol.name in names]


def case_id(case: tuple[str, str, str]) -> str:
    task, name, cohort = case
    return f"{task}/{name}" + ("" if cohort == DEFAULT else f"@{cohort}")


def _source(pack: TaskPack, name: str, scratch: Path) -> Path:
    """The folder to grade: the starter, or the solution written out in full under ``scratch``."""
    return pack.dir / "starter" if name == "starter" else materialise(pack, name, scratch / pack.id / name)


def flaw_check(pack: TaskPack, name: str) -> str:
    first = (pack.dir / "solutions" / name / "FLAW.md").read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("check: "), f"{name}/FLAW.md must start with 'check: <id>'"
    return first.removeprefix("check: ").strip()


@pytest.fixture(scope="session")
def graded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], Result]:
    """The selected cases graded (`-k data-prep` grades no lora-sft solution)."""
    root = tmp_path_factory.mktemp("corpus")
    selected = {item.callspec.params.get("case") for item in request.session.items if hasattr(item, "callspec")}

    def one(case: tuple[str, str, str]) -> Result:
        task, name, cohort = case
        pack = PACKS[task]
        source = _source(pack, name, root / "src" / cohort)
        return grade(GradeRequest(pack=pack, source=source, out=root / cohort / task / name, candidate=name,
                                  hidden_seed=None if cohort == DEFAULT else cohort))

    # Tasks with a time budget are graded one at a time: a good solution must not blow its
    # budget because another grade shares the CPUs. The others run side by side, in threads,
    # and transformers resolves its names lazily and not thread-safely (two checks importing
    # PreTrainedTokenizerFast at once got an ImportError): import it once before.
    from transformers import PreTrainedTokenizerFast  # noqa: F401
    budgeted = [c for c in CASES if c in selected and PACKS[c[0]].spec.budget]
    free = [c for c in CASES if c in selected and c not in budgeted]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(zip(free, pool.map(one, free)))
    return results | {case: one(case) for case in budgeted}


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c[1].startswith("good")], ids=case_id)
def test_good_solution_passes(case: tuple[str, str], graded: dict) -> None:
    result = graded[case]
    failing = {c.id: f"{c.status}: {c.evidence.message}" for c in result.checks if c.status != "pass"}
    assert not failing
    assert result.score is not None and result.score >= 90
    assert result.verdict == "strong" and not result.errors


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c[1].startswith("flawed-")], ids=case_id)
def test_flawed_solution_caught_by_its_check(case: tuple[str, str], graded: dict) -> None:
    result = graded[case]
    named = flaw_check(PACKS[case[0]], case[1])
    check = next(c for c in result.checks if c.id == named)
    assert check.status in ("fail", "partial") and check.score < 1, check.evidence.message
    assert result.verdict not in ("strong", "error", "incomplete"), result.verdict
    if check.critical and check.status == "fail":
        assert result.verdict in ("borderline", "below"), result.verdict
    assert all(r.returncode == 0 for r in result.runs if r.name == PACKS[case[0]].spec.main_run)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c[1] == "starter"], ids=case_id)
def test_starter_does_not_pass(case: tuple[str, str], graded: dict) -> None:
    result = graded[case]
    assert result.verdict == "below"
    assert next(c for c in result.checks if c.id == "runs").status == "fail"


@pytest.mark.parametrize("task", sorted(PACKS))
def test_corpus_is_complete(task: str) -> None:
    pack = PACKS[task]
    names = [n for t, n, cohort in CASES if t == task and cohort == DEFAULT]
    flawed = [n for n in names if n.startswith("flawed-")]
    assert "good" in names and len(flawed) >= 6
    ids = {c.id for c in pack.spec.checks}
    assert {flaw_check(pack, n) for n in flawed} <= ids
    for cohort, sample in OTHER_COHORTS.get(task, {}).items():
        assert sample is None or ("good" in sample and set(sample) <= set(names)), cohort


@pytest.mark.slow
@pytest.mark.parametrize("case", [("qlora-tune", "good", DEFAULT)], ids=case_id)
def test_search_report_shows_trials_curves_and_quantisation(case: tuple[str, str, str], graded: dict,
                                                            tmp_path: Path) -> None:
    from grader.report import render_report

    html = render_report(graded[case], tmp_path / "report.html").read_text(encoding="utf-8")
    search = html[html.index("<h2>Search"):html.index("<h2>Rubric")]
    assert search.count('<span class="badge pass">chosen</span>') == 1
    assert search.count("<polyline") == 3 and "<circle" in search  # three trials' loss curves, eval dots
    assert "bitsandbytes Linear4bit" in search and "nf4" in search and "Double quantisation" in search


@pytest.mark.slow
@pytest.mark.parametrize("case", [("sft-dpo", "good", DEFAULT)], ids=case_id)
def test_alignment_report_shows_both_stages_preferences_and_the_distributed_run(
        case: tuple[str, str, str], graded: dict, tmp_path: Path) -> None:
    from grader.report import render_report

    html = render_report(graded[case], tmp_path / "report.html").read_text(encoding="utf-8")
    section = html[html.index("<h2>Alignment"):html.index("<h2>Rubric")]
    for model in ("<b>Base</b>", "<b>SFT</b>", "<b>SFT + DPO</b>"):
        assert model in section
    assert "Preference accuracy" in section and "Mean reward margin" in section and "Drift from SFT" in section
    assert "distributed (world size 2)" in section and "Distributed vs single" in section
