"""Part A of the ab-and-cost pack: the A/B log generator, the ab-* checks on hand-made decision.json,
and the good, flawed and starter decide.py run on the three cohorts' real files (no sandbox)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pytest

from grader.checks import Artifacts, CandidateFault, CheckContext, InfraFault, Outcome, RunArtifacts, sibling_module
from grader.solutions import materialise
from grader.tasks import get_task
from sandbox.base import ExecResult

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "tasks" / "ab-and-cost"
checks = sibling_module(str(PACK / "checks.py"), "ab_checks")
ab = checks.ab
COHORTS = {"none": "ab-and-cost-2026-cohort-b", "real": "ab-and-cost-2026-cohort-a",
           "novelty": "ab-and-cost-2026-cohort-d"}
"""One hidden seed per scenario; the task's default cohort is the 'none' one."""
CHECKS = {"ab-decision": checks.ab_decision, "ab-effect": checks.ab_effect, "ab-power": checks.ab_power}
PROPERTY_SEEDS = [f"tests-ab-{i}" for i in range(20)]


def generate(dest: Path, seed: str) -> dict[str, Any]:
    """The generator's truth as the grader stores it: under "ab" in a JSON manifest."""
    return json.loads(json.dumps({"ab": ab.write_ab(dest, seed)}))


def context(data: Path, manifest: dict[str, Any] | None) -> CheckContext:
    return CheckContext(task_dir=PACK, inputs={"data": data}, params={}, seed=0, manifest=manifest)


def artifacts(out: Path) -> Artifacts:
    ok = ExecResult(returncode=0, duration_s=1.0, stdout_path=out / "o", stderr_path=out / "e")
    return Artifacts(runs={checks.AB_RUN: RunArtifacts(name=checks.AB_RUN, argv=[], out_dir=out, result=ok)})


def outcome(check_id: str, out: Path, ctx: CheckContext) -> Outcome:
    """The check's outcome; a CandidateFault is a fail, as the runner makes it."""
    try:
        return CHECKS[check_id](artifacts(out), ctx)
    except CandidateFault as exc:
        return Outcome(status="fail", score=0, message=str(exc))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("ab-cohorts")
    return {name: (root / name, generate(root / name, seed)) for name, seed in COHORTS.items()}


# -- the generator ----------------------------------------------------------------------------------

def test_the_generator_is_deterministic_per_seed(tmp_path: Path) -> None:
    first, again, other = (generate(tmp_path / name, seed) for name, seed in
                           (("1", "tests-ab-x"), ("2", "tests-ab-x"), ("3", "tests-ab-y")))
    assert first == again and first != other
    for name in (ab.LOGS_FILE, ab.BRIEF_FILE):
        assert (tmp_path / "1" / "ab" / name).read_bytes() == (tmp_path / "2" / "ab" / name).read_bytes()


def read_daily(path: Path) -> list[tuple[int, int, int, int, int]]:
    """Per day counts from the CSV itself, checking its shape on the way."""
    counts: dict[int, list[int]] = {}
    users = set()
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        assert row["version"] in ("A", "B") and row["resolved"] in ("0", "1")
        users.add(row["user_id"])
        c = counts.setdefault(int(row["day"]), [0, 0, 0, 0])
        arm = 0 if row["version"] == "A" else 2
        c[arm] += 1
        c[arm + 1] += int(row["resolved"])
    assert len(users) == len(rows), "a user appears more than once"
    assert sorted(counts) == list(ab.ALL_DAYS)
    return [(day, *c) for day, c in sorted(counts.items())]


@pytest.fixture(scope="module")
def property_cohorts(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("ab-properties")
    return [(root / seed / "ab", generate(root / seed, seed)["ab"]) for seed in PROPERTY_SEEDS]


def test_every_cohort_shows_its_scenario_and_all_three_occur(property_cohorts: list) -> None:
    assert {truth["scenario"] for _, truth in property_cohorts} == set(ab.SCENARIOS)
    for folder, truth in property_cohorts:
        daily = read_daily(folder / ab.LOGS_FILE)
        assert [list(d) for d in daily] == truth["daily"]
        assert all(1300 < n < 1700 for d in daily for n in (d[1], d[3]))
        brief = json.loads((folder / ab.BRIEF_FILE).read_text(encoding="utf-8"))
        assert (brief["alpha"], brief["power"], brief["alternative"]) == (0.05, 0.8, "two-sided")
        assert (brief["baseline_rate"], brief["minimum_detectable_effect"]) == (truth["baseline_rate"], truth["mde"])
        pooled, late = ab.compare(daily, ab.ALL_DAYS), ab.compare(daily, ab.LATE)
        lasting = truth["lasting_effect"]
        if truth["scenario"] == "real":
            assert lasting >= 0.02 and pooled.p_value < 0.001 and pooled.ci[0] <= lasting <= pooled.ci[1]
        elif truth["scenario"] == "none":
            assert lasting == 0 and pooled.estimate > 0 and pooled.p_value > 0.2
        else:
            first = ab.compare(daily, ab.FIRST_DAYS)
            assert lasting == 0 and first.p_value < 0.001 and pooled.estimate > 0 and pooled.p_value < 0.05
            assert late.p_value > 0.2 and late.ci[0] <= 0 <= late.ci[1] and ab.change_p_value(daily) < 0.01


# -- the checks on hand-made decision.json -----------------------------------------------------------

def grader_ci(truth: dict[str, Any]) -> tuple[float, float]:
    days = ab.LATE if truth["scenario"] == "novelty" else ab.ALL_DAYS
    return ab.compare([tuple(d) for d in truth["daily"]], days).ci


def honest(truth: dict[str, Any], **change: Any) -> dict[str, Any]:
    """A right decision.json for the cohort: the grader's own numbers."""
    lo, hi = grader_ci(truth)
    decision = {"decision": "ship-B" if truth["scenario"] == "real" else "keep-A", "test": "z-test",
                "effect": {"estimate": (lo + hi) / 2, "ci": [lo, hi], "window": "1-14"}, "p_value": 0.01,
                "required_n_per_arm": truth["required_n_per_arm"]}
    return decision | change


def grade(tmp_path: Path, cohort: tuple[Path, dict[str, Any]], check_id: str, decision: Any) -> Outcome:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    text = decision if isinstance(decision, str) else json.dumps(decision)
    (out / checks.DECISION_FILE).write_text(text, encoding="utf-8")
    return outcome(check_id, out, context(*cohort))


@pytest.mark.parametrize(("scenario", "call", "status"), [
    ("real", "ship-B", "pass"), ("real", "keep-A", "fail"), ("real", "no-decision", "fail"),
    ("none", "ship-B", "fail"), ("none", "keep-A", "pass"), ("none", "no-decision", "pass"),
    ("novelty", "ship-B", "fail"), ("novelty", "keep-A", "pass"), ("novelty", "no-decision", "pass")])
def test_the_decision_must_match_the_truth(scenario: str, call: str, status: str, cohorts: dict,
                                           tmp_path: Path) -> None:
    result = grade(tmp_path, cohorts[scenario], "ab-decision", honest(cohorts[scenario][1]["ab"], decision=call))
    assert result.status == status, result.message
    assert result.data["scenario"] == scenario and "late_days_8_14" in result.data


def interval(truth: dict[str, Any], centre: float, width_factor: float) -> dict[str, Any]:
    lo, hi = grader_ci(truth)
    half = (hi - lo) / 2 * width_factor
    return {"estimate": centre, "ci": [centre - half, centre + half], "window": "x"}


@pytest.mark.parametrize(("scenario", "shift", "width", "status", "words"), [
    ("real", 0.0, 1.0, "pass", "holds the lasting effect"),
    ("novelty", 0.0, 1.3, "pass", "holds the lasting effect"),
    ("none", 0.0, 0.0, "fail", "is 0 times as wide"),
    ("real", 0.0, 0.2, "fail", "times as wide"),
    ("none", 0.0, 50.0, "fail", "times as wide"),
    ("none", 0.0, 1e307, "fail", "e+307 times as wide"),
    ("real", -0.02, 1.0, "fail", "misses the lasting effect"),
])
def test_the_interval_must_hold_the_truth_with_a_plausible_width(scenario: str, shift: float, width: float,
                                                                 status: str, words: str, cohorts: dict,
                                                                 tmp_path: Path) -> None:
    truth = cohorts[scenario][1]["ab"]
    effect = interval(truth, truth["lasting_effect"] + shift, width)
    result = grade(tmp_path, cohorts[scenario], "ab-effect", honest(truth, effect=effect))
    assert result.status == status and words in result.message, result.message


def test_pooling_a_novelty_cohort_misses_the_lasting_effect(cohorts: dict, tmp_path: Path) -> None:
    truth = cohorts["novelty"][1]["ab"]
    pooled = ab.compare([tuple(d) for d in truth["daily"]], ab.ALL_DAYS)
    effect = {"estimate": pooled.estimate, "ci": list(pooled.ci), "window": "1-14"}
    result = grade(tmp_path, cohorts["novelty"], "ab-effect", honest(truth, effect=effect))
    assert result.status == "fail" and "misses the lasting effect +0" in result.message


def test_an_estimate_outside_its_own_interval_fails(cohorts: dict, tmp_path: Path) -> None:
    truth = cohorts["real"][1]["ab"]
    effect = interval(truth, truth["lasting_effect"], 1.0) | {"estimate": 0.5}
    result = grade(tmp_path, cohorts["real"], "ab-effect", honest(truth, effect=effect))
    assert result.status == "fail" and "outside its own interval" in result.message


def test_an_interval_too_wide_for_floats_fails(cohorts: dict, tmp_path: Path) -> None:
    truth = cohorts["none"][1]["ab"]
    effect = {"estimate": 0.0, "ci": [-1.7e308, 1.7e308], "window": "1-14"}
    result = grade(tmp_path, cohorts["none"], "ab-effect", honest(truth, effect=effect))
    assert result.status == "fail" and "inf times as wide" in result.message and len(result.message) < 300


def test_when_the_graders_own_interval_misses_too_the_candidate_is_not_blamed(cohorts: dict,
                                                                               tmp_path: Path) -> None:
    data, manifest = cohorts["real"]
    truth = manifest["ab"]
    unlucky = (data, {"ab": truth | {"lasting_effect": 0.2}})
    result = grade(tmp_path, unlucky, "ab-effect", honest(truth, effect=interval(truth, truth["lasting_effect"], 1)))
    assert result.status == "pass" and "unlucky" in result.message


def sample_sizes(baseline: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> dict[str, float]:
    """Users per arm by the usual textbook formulas."""
    p0, p1 = baseline, baseline + mde
    za, zb = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    unpooled = (za + zb) ** 2 * (p0 * (1 - p0) + p1 * (1 - p1)) / mde ** 2
    mean = (p0 + p1) / 2
    pooled = (za * math.sqrt(2 * mean * (1 - mean)) + zb * math.sqrt(p0 * (1 - p0) + p1 * (1 - p1))) ** 2 / mde ** 2
    h = 2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p0))
    return {"unpooled": unpooled, "pooled-h0": pooled, "cohen-h": 2 * ((za + zb) / h) ** 2,
            "fleiss-continuity": pooled / 4 * (1 + math.sqrt(1 + 4 / (pooled * mde))) ** 2,
            "one-sided": (NormalDist().inv_cdf(1 - alpha) + zb) ** 2 * (p0 * (1 - p0) + p1 * (1 - p1)) / mde ** 2}


@pytest.mark.parametrize("scenario", sorted(COHORTS))
@pytest.mark.parametrize(("formula", "status"), [("unpooled", "pass"), ("pooled-h0", "pass"), ("cohen-h", "pass"),
                                                  ("fleiss-continuity", "pass"), ("one-sided", "fail")])
def test_power_accepts_the_honest_formulas_and_not_the_one_sided_one(scenario: str, formula: str, status: str,
                                                                      cohorts: dict, tmp_path: Path) -> None:
    truth = cohorts[scenario][1]["ab"]
    n = math.ceil(sample_sizes(truth["baseline_rate"], truth["mde"])[formula])
    result = grade(tmp_path, cohorts[scenario], "ab-power", honest(truth, required_n_per_arm=n))
    assert result.status == status, result.message
    assert (formula == "one-sided") == ("one-sided formula" in result.message)


@pytest.mark.parametrize(("factor", "status"), [(2.0, "fail"), (0.5, "fail"), (1.14, "partial"), (0.91, "pass")])
def test_power_is_graded_by_its_relative_error(factor: float, status: str, cohorts: dict, tmp_path: Path) -> None:
    truth = cohorts["none"][1]["ab"]
    n = round(truth["required_n_per_arm"] * factor)
    assert grade(tmp_path, cohorts["none"], "ab-power", honest(truth, required_n_per_arm=n)).status == status


MALFORMED = {
    "not-json": "{ship it",
    "not-an-object": "[1, 2]",
    "unknown-decision": {"decision": "ship"},
    "no-evidence": {"p_value": None},
    "reversed-ci": {"effect": {"estimate": 0.0, "ci": [0.1, -0.1], "window": "1-14"}},
    "nan-estimate": '{"decision": "keep-A", "test": "t", "effect": {"estimate": NaN, "ci": [0, 1], "window": "1"}, '
                    '"p_value": 0.5, "required_n_per_arm": 10}',
    "huge-n": '{"decision": "keep-A", "test": "t", "effect": {"estimate": 0, "ci": [0, 1], "window": "1"}, '
              '"p_value": 0.5, "required_n_per_arm": 1' + "0" * 200 + "}",
    "float-n": {"required_n_per_arm": 1234.5},
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_decision_files_fail_every_check(kind: str, cohorts: dict, tmp_path: Path) -> None:
    bad = MALFORMED[kind]
    decision = honest(cohorts["real"][1]["ab"], **bad) if isinstance(bad, dict) else bad
    for check_id in CHECKS:
        result = grade(tmp_path, cohorts["real"], check_id, decision)
        assert result.status == "fail" and "decision.json" in result.message, (check_id, result.message)


def test_a_missing_decision_file_fails_and_a_missing_truth_is_the_graders_fault(cohorts: dict,
                                                                                 tmp_path: Path) -> None:
    assert "decision.json was not written" in outcome("ab-decision", tmp_path, context(*cohorts["none"])).message
    with pytest.raises(InfraFault):
        checks.ab_decision(artifacts(tmp_path), context(cohorts["none"][0], {"other": 1}))


# -- the reference submissions on the real files ---------------------------------------------------------

AB_FLAWS = ("flawed-ships-nonsignificant", "flawed-one-sided-power", "flawed-pooled-novelty", "flawed-point-effect")
"""The reference flaws of Part A (patches of good/decide.py); Part B's change only train.py."""
FAILS = {
    "good": {}, "good-bayes": {},
    "flawed-ships-nonsignificant": {"none": {"ab-decision"}},
    "flawed-one-sided-power": {s: {"ab-power"} for s in COHORTS},
    "flawed-pooled-novelty": {"novelty": {"ab-decision", "ab-effect"}},
    "flawed-point-effect": {s: {"ab-effect"} for s in COHORTS},
    "starter": {"real": {"ab-decision", "ab-effect", "ab-power"}, "none": {"ab-effect", "ab-power"},
                "novelty": {"ab-effect", "ab-power"}},
}
"""Per solution and scenario, the checks that must not pass; all others must."""


@pytest.fixture(scope="module")
def solutions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each reference submission as a full folder (flaws materialised from their patches)."""
    root = tmp_path_factory.mktemp("ab-materialised")
    pack = get_task("ab-and-cost")
    for name in AB_FLAWS:
        materialise(pack, name, root / name)
    return {"good": PACK / "solutions" / "good", "good-bayes": PACK / "solutions" / "good-bayes",
            "starter": PACK / "starter"} | {name: root / name for name in AB_FLAWS}


@pytest.fixture(scope="module")
def solution_outputs(cohorts: dict, solutions: dict[str, Path],
                     tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("ab-solutions")

    def run(key: tuple[str, str]) -> Path:
        name, scenario = key
        data, out = cohorts[scenario][0] / "ab", root / name / scenario
        proc = subprocess.run([sys.executable, str(solutions[name] / "decide.py"), "--logs",
                               str(data / ab.LOGS_FILE), "--brief", str(data / ab.BRIEF_FILE), "--out", str(out)],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"{name} on {scenario}: {proc.stderr[-2000:]}"
        return out

    keys = [(name, scenario) for name in FAILS for scenario in COHORTS]
    with ThreadPoolExecutor(8) as pool:
        return dict(zip(keys, pool.map(run, keys), strict=True))


def test_every_flaw_has_a_flaw_note_naming_a_check() -> None:
    for name in AB_FLAWS:
        first = (PACK / "solutions" / name / "FLAW.md").read_text(encoding="utf-8").splitlines()[0]
        assert first.removeprefix("check: ") in CHECKS
        assert any(first.removeprefix("check: ") in fails for fails in FAILS[name].values())


@pytest.mark.parametrize("name", sorted(FAILS))
def test_reference_submissions_get_their_expected_statuses(name: str, solution_outputs: dict, cohorts: dict) -> None:
    for scenario in COHORTS:
        statuses = {cid: outcome(cid, solution_outputs[name, scenario], context(*cohorts[scenario]))
                    for cid in CHECKS}
        failing = {cid for cid, o in statuses.items() if o.status != "pass"}
        expected = FAILS[name].get(scenario, set())
        assert failing == expected, {cid: statuses[cid].message for cid in failing ^ expected}
        assert all(statuses[cid].status == "fail" for cid in expected)
