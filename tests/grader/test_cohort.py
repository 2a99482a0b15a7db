"""The cohort page (grader/cohort.py, render_all): metric positions, the histogram, self-report flags, and an
index rendered from real results."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from grader.checks.base import Artifacts, CheckContext, Outcome, failed
from grader.cohort import assemble, columns, histogram, position, scale_of
from grader.evaluate import run_checks
from grader.report import render_all
from grader.result import CheckRecord, Evidence, Result, load_result
from grader.tasks import discover
from grader.taskspec import CheckSpec

RESULT = Path(__file__).resolve().parents[1] / "fixtures" / "results" / "data-prep-good.json"
SELF_REPORT_CHECKS = {"data-prep": ["stats-accurate"], "lora-sft": ["metrics-honest"],
                      "qlora-tune": ["best-reproduces"], "sft-dpo": ["reported-matches"]}


def test_position_runs_from_base_to_reference_whichever_way_is_better() -> None:
    assert position(2.0, base=5.4, reference=1.75) == pytest.approx(0.9315, abs=1e-4)  # NLL: lower is better
    assert position(0.95, base=0.5, reference=1.0) == pytest.approx(0.9)  # accuracy: higher is better
    assert position(6.0, base=5.4, reference=1.75) < 0  # type: ignore[operator]  # worse than the base
    assert position(1.5, base=5.4, reference=1.75) > 1  # type: ignore[operator]  # past the reference
    assert position(1.0, base=2.0, reference=2.0) is None
    assert position(math.nan, base=0.5, reference=1.0) is None


def check(cid: str, status: str = "pass", score: float = 1.0, data: dict | None = None, message: str = "ok",
          self_report: bool = False) -> CheckRecord:
    return CheckRecord(id=cid, title=f"{cid} title", status=status, score=score, weight=1,  # type: ignore[arg-type]
                       self_report=self_report, evidence=Evidence(message=message, data=data or {}))


def test_scale_of_reads_the_convention_and_ignores_anything_else() -> None:
    good = check("heldout", data={"scale": {"metric": "held-out NLL", "base": 5.4, "reference": 1.75, "value": 2.0}})
    assert scale_of(good).value == 2.0  # type: ignore[union-attr]
    assert scale_of(check("x", data={"scale": {"metric": "m", "base": "?"}})) is None
    assert scale_of(check("x", data={"scale": [1, 2]})) is None
    assert scale_of(check("x")) is None


def test_histogram_bins_of_ten_with_100_in_the_last() -> None:
    assert histogram([0, 9.99, 10, 55, 99.9, 100, None]) == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert histogram([]) == [0] * 10


def result(candidate: str, score: float | None, checks: list[CheckRecord] | None = None,
           task: str = "data-prep", verdict: str | None = None) -> Result:
    base = load_result(RESULT)
    return base.model_copy(update={
        "candidate": candidate, "score": score, "checks": checks if checks is not None else base.checks,
        "verdict": verdict or ("strong" if (score or 0) >= 85 else "below"),
        "task": base.task.model_copy(update={"id": task})})


def test_columns_are_every_check_id_of_the_cohort_once() -> None:
    a = result("a", 90, [check("runs"), check("alpha")], task="t1")
    b = result("b", 80, [check("runs"), check("beta")], task="t2")
    assert [c.id for c in columns([b, a])] == ["runs", "alpha", "beta"]


def test_assemble_puts_errors_apart_and_flags_contradicted_self_reports() -> None:
    honest = result("honest", 95)
    liar = result("liar", 70, [check("runs"), check("stats-accurate", "fail", 0.0, message="says 10, has 12",
                                                     self_report=True), check("pii", "partial", 0.5)])
    broken = result("broken", None, verdict="error")
    cohort = assemble([(liar, "liar", "liar/report.html"), (broken, "broken", "b/report.html"),
                       (honest, "honest", "h/report.html")], similar={"liar": ["honest"]})
    assert [r.key for r in cohort.graded] == ["honest", "liar"] and [r.key for r in cohort.incomplete] == ["broken"]
    liar_row = cohort.graded[1]
    assert [(f.check, f.message) for f in liar_row.self_reports] == [("stats-accurate", "says 10, has 12")]
    assert liar_row.similar == ["honest"] and liar_row.flags == 2
    assert cohort.graded[0].self_reports == []  # a partial check that is no self-report is no flag
    assert cohort.histogram[9] == 1 and cohort.histogram[7] == 1 and sum(cohort.histogram) == 2


def test_task_packs_mark_their_self_report_checks() -> None:
    packs = discover([])
    marked = {task: [c.id for c in packs[task].spec.checks if c.self_report] for task in SELF_REPORT_CHECKS}
    assert marked == SELF_REPORT_CHECKS


def test_check_records_carry_the_self_report_mark() -> None:
    def lie(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
        return failed("reported 1.0, measured 2.0")

    specs = [CheckSpec(id="reported", title="t", self_report=True), CheckSpec(id="plain", title="t")]
    pack = SimpleNamespace(spec=SimpleNamespace(checks=specs), checks={"reported": lie, "plain": lie})
    ctx = CheckContext(task_dir=Path("."), inputs={}, params={}, seed=0, manifest=None)
    records = run_checks(pack, Artifacts(runs={}), ctx)  # type: ignore[arg-type]
    assert [(r.id, r.self_report) for r in records] == [("reported", True), ("plain", False)]


def test_index_renders_the_cohort_from_real_results(tmp_path: Path) -> None:
    real = load_result(RESULT)
    scale = {"metric": "held-out NLL", "base": 5.4, "reference": 1.75, "value": 2.0}
    checks = [c.model_copy(update={"evidence": Evidence(message="NLL 2.0 <b>", data={"scale": scale})})
              if c.id == "schema-chat" else c for c in real.checks]
    checks = [c.model_copy(update={"status": "fail", "score": 0.0, "self_report": True,
                                   "evidence": Evidence(message="stats.json says <img src=x>")})
              if c.id == "stats-accurate" else c for c in checks]
    cohort = [result("ada", 100.0), result("bob", 61.0, checks), result("cy", None, verdict="error")]
    written = render_all(cohort, tmp_path)
    assert {p.relative_to(tmp_path).as_posix() for p in written} == {
        "ada-data-prep/report.html", "bob-data-prep/report.html", "cy-data-prep/report.html", "index.html"}
    html = (tmp_path / "index.html").read_text()

    graded, rest = html.split("<h2>Incomplete", 1)
    assert graded.index('href="ada-data-prep/report.html"') < graded.index('href="bob-data-prep/report.html"')
    assert 'href="cy-data-prep/report.html"' in rest.split("<h2>Score distribution")[0]
    heads = re.findall(r"<th scope=\"col\" aria-sort=\"(\w+)\" data-type=\"(\w+)\"[^>]*><button type=\"button\">"
                       r"([^<]+)</button></th>", graded)
    assert ("descending", "num", "Score") in heads and ("none", "text", "Candidate") in heads
    assert ("none", "num", "stats-accurate") in heads and ("none", "num", "Max RSS MB") in heads
    assert '<td class="cell fail" data-v="0.0" title="stats-accurate · fail: stats.json says &lt;img src=x&gt;">' \
           in graded
    assert re.search(r'<td class="cell pass" data-v="0\.93\d*" title="schema-chat · pass · held-out NLL at 0\.93 '
                     r'from the base \(0\) to the reference \(1\): NLL 2\.0 &lt;b&gt;"><span class="pos">0\.93</span>',
                     graded)
    assert '<td class="num" data-v="7.093">7.1</td>' in graded  # timings.total_s
    assert 'aria-label="score distribution in bins of 10: 60-70: 1, 90-100: 1"' in html
    integrity = html.split('id="integrity"', 1)[1]
    assert "stats-accurate" in integrity and "stats.json says &lt;img src=x&gt;" in integrity
    assert "the result folders were not given" in integrity
    assert html.count("<script") == 1 and "aria-sort" in html.split("<script>", 1)[1]
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "<img" not in html
