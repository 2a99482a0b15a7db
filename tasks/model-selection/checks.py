"""Checks of the model-selection task. The grader measures every candidate adapter itself, on the
candidate's validation set (to judge the reported numbers and intervals) and on the hidden test set
(the truth the choice, the flags and the ranking are judged against); the manifest says which adapter
has which role. Those measurements do not depend on the submission, so they are kept across the grades
of a cohort.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

from grader.checks import (
    Artifacts,
    CheckContext,
    InfraFault,
    Outcome,
    check,
    failed,
    graded,
    passed,
    sibling_module,
)
from grader.checks.adapters import AdapterMeasures, ci, manifest_entry

s = sibling_module(__file__, "selection")
m = AdapterMeasures("model-selection", lambda out: out)
CANDIDATES = "candidates"
CLEAN = ("best", "tie", "undertrained")
"""Roles trained on the training pool only: never contaminated."""
METRIC_TOLERANCE = (0.002, 0.001)
"""Absolute, plus this fraction of the grader's value (as lora-sft's metrics-honest)."""
WIDTH_RATIO = (0.6, 1.67)
"""A reported interval's width over the grader's percentile-bootstrap 95% width on the same file. Honest 95%
intervals land within 0.93 to 1.09 of it (a bootstrap over records, or a delta-method t interval: both
reference solutions, three cohorts); a ±1 standard error band (0.51) or ± 0 does not."""
REPORT_MIN_WORDS = 150


def roles(ctx: CheckContext) -> dict[str, str]:
    """Adapter name -> role, from the manifest (grader-only)."""
    entry = manifest_entry(ctx, "roles")
    return {name: role for role, name in entry.items()}


def adapter(ctx: CheckContext, name: str) -> Path:
    path = ctx.inputs["data"] / CANDIDATES / name
    if not path.is_dir():
        raise InfraFault(f"candidate adapter {name} is missing from the task's inputs")
    return path


def selection(artifacts: Artifacts, ctx: CheckContext) -> Any:
    return ctx.memo("selection", lambda: s.load_selection(artifacts.require("main") / s.SELECTION_FILE,
                                                           set(roles(ctx))))


def measured(ctx: CheckContext, name: str, split: str) -> Any:
    return m.nll(ctx, adapter(ctx, name), split, trusted=True)


def test_delta(ctx: CheckContext, a: str, b: str) -> tuple[float, float, float]:
    """``(delta, lo, hi)`` of test NLL(b) - NLL(a), paired bootstrap 95% over test records."""
    from grader.evaluation import paired_bootstrap_delta

    av, weights = measured(ctx, a, "test").bootstrap_inputs()
    bv, _ = measured(ctx, b, "test").bootstrap_inputs()
    return ctx.memo(f"delta:{a}:{b}", lambda: paired_bootstrap_delta(av, bv, weights))


def test_best(ctx: CheckContext) -> str:
    return min(roles(ctx), key=lambda n: measured(ctx, n, "test").mean_nll)


@check("choice-correct")
def choice_correct(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The chosen adapter is the best on the hidden test set, or no paired 95% interval tells it from the best."""
    chosen = selection(artifacts, ctx).chosen
    best, role = test_best(ctx), roles(ctx)
    data = {"chosen": chosen, "chosen_role": role[chosen], "test_best": best,
            "test_nll": {n: round(measured(ctx, n, "test").mean_nll, 4) for n in role}}
    if chosen == best:
        return passed(f"chose {chosen}, the best adapter on the hidden test set", **data)
    delta, lo, hi = test_delta(ctx, best, chosen)
    data["delta_vs_best"] = [round(delta, 4), round(lo, 4), round(hi, 4)]
    if lo <= 0.0:
        return passed(f"chose {chosen}, tied with the best ({best}) on the hidden test set: NLL {delta:+.4f} "
                      f"[{lo:+.4f}, {hi:+.4f}]", **data)
    return failed(f"chose {chosen} (the {role[chosen]} adapter), worse than {best} on the hidden test set by "
                  f"{delta:.4f} nats [{lo:+.4f}, {hi:+.4f}]", **data)


@check("contamination-flagged")
def contamination_flagged(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The adapter trained on the benchmark's items is flagged contaminated, and no clean adapter is."""
    sel, role = selection(artifacts, ctx), roles(ctx)
    flagged = sel.flagged("contaminated")
    contaminated = next(n for n, r in role.items() if r == "contaminated")
    wrong = sorted(n for n in flagged if role[n] in CLEAN)
    data = {"flagged_contaminated": sorted(flagged), "contaminated": contaminated, "falsely_flagged": wrong}
    if contaminated not in flagged:
        return failed(f"{contaminated}, trained on the benchmark's items, is not flagged contaminated", **data)
    if wrong:
        return failed(f"{contaminated} is flagged, but so are clean adapters: {', '.join(wrong)}", **data)
    return passed(f"{contaminated} is flagged contaminated, and no clean adapter is", **data)


def _interval_problem(ctx: CheckContext, name: str, score: Any) -> tuple[str | None, dict[str, Any]]:
    result = measured(ctx, name, "val")
    value, lo, hi = ci(result)
    tolerance = METRIC_TOLERANCE[0] + METRIC_TOLERANCE[1] * value
    ratio = score.ci.width / (hi - lo)
    data = {"reported": round(score.val_nll, 5), "measured": round(value, 5), "ci": [score.ci.lo, score.ci.hi],
            "grader_ci": [round(lo, 5), round(hi, 5)], "width_ratio": round(ratio, 3)}
    if abs(score.val_nll - value) > tolerance:
        return f"{name}: reported val_nll {score.val_nll:.4f}, the grader measures {value:.4f}", data
    if not score.ci.lo - tolerance <= value <= score.ci.hi + tolerance:
        return f"{name}: the interval [{score.ci.lo:.4f}, {score.ci.hi:.4f}] misses the measured {value:.4f}", data
    if not WIDTH_RATIO[0] <= ratio <= WIDTH_RATIO[1]:
        return (f"{name}: the interval is {ratio:.2f}× the width of a 95% bootstrap interval over the records "
                f"({score.ci.width:.4f} vs {hi - lo:.4f})"), data
    return None, data


@check("intervals-valid")
def intervals_valid(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Each reported val_nll matches the grader's, and its interval holds it and has a 95% interval's width."""
    sel = selection(artifacts, ctx)
    problems, data = [], {}
    for name, score in sorted(sel.adapters.items()):
        problem, data[name] = _interval_problem(ctx, name, score)
        if problem:
            problems.append(problem)
    share = 1 - len(problems) / len(sel.adapters)
    if problems:
        return graded(share, "; ".join(problems), adapters=data)
    return passed(f"all {len(sel.adapters)} val_nll values and intervals agree with the grader's", adapters=data)


@check("ranking-consistent")
def ranking_consistent(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Among the adapters not flagged, every pair the hidden test set separates is ranked in its order."""
    sel = selection(artifacts, ctx)
    kept = [n for n in sel.ranking if n not in sel.flagged()]
    if len(kept) < 2:
        return failed(f"only {len(kept)} adapter(s) left unflagged: nothing is ranked", unflagged=kept)
    right, wrong = 0, []
    for a, b in combinations(kept, 2):  # a is ranked above b
        delta, lo, hi = test_delta(ctx, a, b)
        if lo > 0.0:
            right += 1
        elif hi < 0.0:
            wrong.append(f"{b} above {a} (test NLL {delta:+.4f})")
    separable = right + len(wrong)
    data = {"unflagged": kept, "separable_pairs": separable, "misordered": wrong}
    if not separable:
        return passed(f"no pair of the {len(kept)} unflagged adapters is separated on the hidden test set", **data)
    if wrong:
        return graded(right / separable, f"{len(wrong)} of {separable} separable pairs are misordered: the test "
                      f"set puts {'; '.join(wrong)}", **data)
    return passed(f"all {separable} pairs the hidden test set separates are ranked in its order", **data)


@check("report-present")
def report_present(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """REPORT.md exists with some substance; what it says is the panel's to judge."""
    path = artifacts.require("main") / s.REPORT_FILE
    if not path.is_file():
        return failed(f"{s.REPORT_FILE} was not written")
    words = len(path.read_text(encoding="utf-8", errors="replace").split())
    if words < REPORT_MIN_WORDS:
        return failed(f"{s.REPORT_FILE} has {words} words; the evaluation standard needs at least "
                      f"{REPORT_MIN_WORDS}", words=words)
    return passed(f"{s.REPORT_FILE} written ({words} words), for the panel", words=words)
