"""The grader's own test corpus: every task's reference submissions graded end to end.

Each `solutions/good*` scores at least 90 with every check passing; each `solutions/flawed-*`
(a patch against good/, materialised by grader/solutions.py) fails the check its FLAW.md names
(first line `check: <id>`) and is never rated "strong"; the starter does not pass. Each cohort grades
in one `tunegrade batch` (the real pipeline, the default local sandbox); the default cohort's batch is
killed with SIGKILL after its first grades and resumed, and its cohort page must flag a planted
near-copy; a promotion review and a two-rater panel are built on its results.

One cohort is not all cohorts: the good solutions, and a sample of the flawed ones, are also
graded on other hidden seeds (OTHER_COHORTS), so a check that fails honest work on some cohorts
is found here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from grader.batch_store import GradeRow, read_rows
from grader.cli import main
from grader.constants import COHORT_FILE, REPORT_FILE, RESULT_FILE, TASK_MARKER
from grader.result import Result, load_result
from grader.solutions import list_solutions, materialise
from grader.tasks import TaskPack, discover

PACKS = discover([])
DEFAULT = "default"
OTHER_COHORTS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "data-prep": {"corpus-cohort-b": None, "corpus-cohort-c": ("good",)},
    "lora-sft": {"corpus-cohort-b": ("good", "good-trl")},
    "qlora-tune": {"corpus-cohort-b": ("good", "good-trl")},
    "sft-dpo": {"corpus-cohort-b": ("good", "good-ref-model")},
    "model-selection": {"corpus-cohort-b": ("good", "good-analytic", "flawed-val-only")},
    "ab-and-cost": {"corpus-cohort-b": ("good", "good-bayes")},
}
"""Per task, the other hidden seeds and the solutions graded on each (None: all of them). Every good solution
is graded on another cohort; a flaw sample there is data-prep's (all of them) and model-selection's (one),
the cheapest grades, plus ab-and-cost's flaw that only a fading effect shows (its FLAW.md's cohort)."""
CASES = [(pack.id, sol.name, sol.cohort or DEFAULT) for pack in PACKS.values() for sol in list_solutions(pack)] + [
    (pack.id, "starter", DEFAULT) for pack in PACKS.values()]
CASES += [(task, sol.name, cohort) for task, cohorts in OTHER_COHORTS.items() for cohort, names in cohorts.items()
          for sol in list_solutions(PACKS[task]) if (names is None or sol.name in names) and sol.cohort is None]
"""Every solution on the default cohort, a flaw that only some cohorts show (FLAW.md's ``cohort:``) on its
own, and the OTHER_COHORTS samples."""


def case_id(case: tuple[str, str, str]) -> str:
    task, name, cohort = case
    return f"{task}/{name}" + ("" if cohort == DEFAULT else f"@{cohort}")


def flaw_check(pack: TaskPack, name: str) -> str:
    first = (pack.dir / "solutions" / name / "FLAW.md").read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("check: "), f"{name}/FLAW.md must start with 'check: <id>'"
    return first.removeprefix("check: ").strip()


def entry_name(task: str, name: str) -> str:
    return f"{task}--{name}"


@dataclass
class Cohort:
    """One cohort's batch: its submissions folder, its batch folder, and (the default cohort) what a
    SIGKILL mid-batch left recorded."""

    subs: Path
    out: Path
    before_kill: dict[str, GradeRow] = field(default_factory=dict)


def _submissions(cases: list[tuple[str, str, str]], subs: Path) -> None:
    """Each case written out in full as one candidate's folder, with the task marker an exported repo has."""
    for task, name, _ in cases:
        pack = PACKS[task]
        dest = subs / entry_name(task, name)
        if name == "starter":
            shutil.copytree(pack.dir / "starter", dest)
        else:
            materialise(pack, name, dest)
        (dest / TASK_MARKER).write_text(f"{task}\n", encoding="utf-8")


ROLE = "llm-engineer"
"""The corpus is graded as a panel hiring for one role does: every task offers it, so one promotion review
places all of them."""


def _batch_argv(cohort: str, subs: Path, out: Path) -> list[str]:
    argv = [sys.executable, "-c", "from grader.cli import entry; entry()", "batch", str(subs), "--out", str(out),
            "--role", ROLE]
    return argv + ([] if cohort == DEFAULT else ["--hidden-seed", cohort])


def _kill_after(argv: list[str], out: Path, log: Path, graded: int) -> dict[str, GradeRow]:
    """Start the batch, SIGKILL its whole process group once ``graded`` grades are recorded and another
    is in flight, and return what the database held at that moment."""
    with log.open("w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=out.parent)
    try:
        while proc.poll() is None:
            rows = read_rows(out)
            if sum(r.status == "graded" for r in rows.values()) >= graded and \
                    any(r.status == "running" for r in rows.values()):
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"the batch ended before it could be killed:\n{log.read_text()[-3000:]}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return read_rows(out)


@pytest.fixture(scope="session")
def cohorts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cohort]:
    """The selected cases (`-k data-prep` grades no lora-sft solution) graded as one `tunegrade batch` per
    cohort. The default cohort's batch is SIGKILLed after its first grades and started again: the corpus
    itself is the kill-and-resume test."""
    root = tmp_path_factory.mktemp("corpus")
    selected = {item.callspec.params.get("case") for item in request.session.items if hasattr(item, "callspec")}
    cohorts: dict[str, Cohort] = {}
    for cohort in dict.fromkeys(c[2] for c in CASES if c in selected):
        cases = [c for c in CASES if c in selected and c[2] == cohort]
        state = Cohort(subs=root / cohort / "subs", out=root / cohort / "graded")
        _submissions(cases, state.subs)
        if cohort == DEFAULT:
            _near_copy(state.subs)
        argv = _batch_argv(cohort, state.subs, state.out)
        state.out.mkdir(parents=True)
        if cohort == DEFAULT and len(cases) > 4:
            state.before_kill = _kill_after(argv, state.out, root / "killed.log", graded=2)
        log = root / f"{cohort}.log"
        with log.open("w") as fh:
            done = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=state.out.parent, check=False)
        assert done.returncode in (0, 1), log.read_text()[-3000:]
        cohorts[cohort] = state
    return cohorts


NEAR_COPY = entry_name("data-prep", "near-copy")
"""A planted near-copy of data-prep's good solution: names changed, comments rewritten, blank lines moved."""


def _near_copy(subs: Path) -> None:
    good = subs / entry_name("data-prep", "good")
    if not good.is_dir():
        return
    shutil.copytree(good, subs / NEAR_COPY)
    for path in (subs / NEAR_COPY).rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"#.*", "# reworded", text)
        text = re.sub(r"\brecords?\b", lambda m: m.group(0).replace("record", "row"), text)
        path.write_text(text.replace("\n\n\n", "\n\n"), encoding="utf-8")


@pytest.fixture(scope="session")
def graded(cohorts: dict[str, Cohort]) -> dict[tuple[str, str, str], Result]:
    """Each graded case's result, as its batch recorded it."""
    results = {}
    for cohort, state in cohorts.items():
        rows = read_rows(state.out)
        for row in rows.values():
            task, name = row.candidate.split("--", 1)
            assert row.status == "graded", f"{row.candidate}@{cohort}: {row.status}: {row.message}"
            results[(task, name, cohort)] = load_result(state.out / str(row.result) / RESULT_FILE)
    return results


@pytest.mark.slow
def test_the_killed_corpus_batch_resumed_with_every_grade_exactly_once(cohorts: dict[str, Cohort]) -> None:
    state = cohorts.get(DEFAULT)
    if state is None or not state.before_kill:
        pytest.skip("too few default-cohort cases selected to kill the batch mid-way")
    after = read_rows(state.out)
    entries = sorted(p.name for p in state.subs.iterdir())
    assert sorted(after) == entries and all(r.status == "graded" for r in after.values())
    for name, before in state.before_kill.items():
        if before.status == "graded":  # finished before the kill: never graded again
            assert after[name] == before and before.attempts == 1
        else:  # in flight at the kill: graded once more, to the end
            assert before.status == "running" and after[name].attempts == 2
    assert all(after[name].attempts == 1 for name in entries if name not in state.before_kill)


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
    flawed = [n for t, n, _ in CASES if t == task and n.startswith("flawed-")]
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


def _pair_page(out: Path, a: str, b: str) -> Path | None:
    return next((p for p in (out / f"similar-{a}-{b}.html", out / f"similar-{b}-{a}.html") if p.is_file()), None)


@pytest.mark.slow
def test_the_corpus_cohort_page_flags_the_planted_near_copy_only(cohorts: dict[str, Cohort]) -> None:
    state = cohorts.get(DEFAULT)
    if state is None or not (state.subs / NEAR_COPY).is_dir():
        pytest.skip("data-prep's good solution is not selected")
    index = (state.out / COHORT_FILE).read_text(encoding="utf-8")
    page = _pair_page(state.out, entry_name("data-prep", "good"), NEAR_COPY)
    assert page is not None and page.name in index
    for task, other in [("lora-sft", "good-trl"), ("qlora-tune", "good-trl"), ("sft-dpo", "good-ref-model")]:
        if (state.subs / entry_name(task, other)).is_dir():  # honest solutions written apart are not copies
            assert _pair_page(state.out, entry_name(task, "good"), entry_name(task, other)) is None
    for row in read_rows(state.out).values():
        assert f'href="{row.result}/{REPORT_FILE}"' in index


@pytest.mark.slow
def test_a_promotion_review_across_tasks_and_a_two_rater_panel(cohorts: dict[str, Cohort], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    state = cohorts.get(DEFAULT)
    folders = {task: state.out / entry_name(task, "good") for task in PACKS} if state else {}
    if not folders or not all((f / RESULT_FILE).is_file() for f in folders.values()):
        pytest.skip("not every task's good solution is selected")
    sft_dpo = tmp_path / "sft-dpo-good"
    shutil.copytree(folders["sft-dpo"], sft_dpo)  # the panel's merge rewrites it; the batch's stays as graded
    sheets = []
    for rater, scores in (("ana", (3, 4, 2, 3)), ("ben", (3, 3, 1, 3))):
        sheet = tmp_path / f"{rater}.yaml"
        assert main(["panel-sheet", str(sft_dpo), "--rater", rater, "--out", str(sheet)]) == 0
        data = yaml.safe_load(sheet.read_text())
        for entry, score in zip(data["competencies"], scores * 4):
            entry["score"], entry["comment"] = score, f"{rater}'s view"
        sheet.write_text(yaml.safe_dump(data))
        sheets.append(str(sheet))
    assert main(["panel-merge", str(sft_dpo), *sheets]) == 0
    merged = load_result(sft_dpo / RESULT_FILE)
    assert {s.rater for s in merged.panel} == {"ana", "ben"} and merged.panel_agreement is not None
    assert merged.panel_agreement.alpha is not None and "Krippendorff" in (sft_dpo / REPORT_FILE).read_text()
    assert all(c.status == "panel-scored" for c in merged.rollup.competencies if c.kind == "panel")

    review = tmp_path / "review"
    capsys.readouterr()
    assert main(["review", "--person", "corpus", "--role", ROLE, *(str(folders[t]) for t in PACKS if t != "sft-dpo"),
                 str(sft_dpo), "--out", str(review)]) == 0
    html = (review / "review.html").read_text(encoding="utf-8")
    assert {pack.spec.level for pack in PACKS.values()} == {"junior", "middle", "senior", "lead", "principal"}
    assert "badge rung-beyond-tasks" not in html  # every rung has a task now, lead and principal included
    for competency in ("model-selection", "ab-testing", "model-versioning", "cost-speed-at-scale"):
        row = re.search(rf'<tr id="c-{competency}">.*?</tr>', html, re.S)
        assert row is not None and '<span class="badge met">' in row.group(0), competency  # on the top rungs
    for link in re.findall(r'href="([^"#]+)', html):
        assert (review / link).is_file(), link
