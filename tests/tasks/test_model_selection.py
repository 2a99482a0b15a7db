"""model-selection: the builder's ground truth on real cohorts (slow: it trains adapters), and each check on
hand-written selection.json files against the public cohort, whose adapters are committed (fast after the
grader's first measurements are stored)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from grader.checks import Artifacts, CandidateFault, CheckContext, RunArtifacts
from grader.evaluation import (
    encode_chat,
    load_adapter,
    load_model,
    paired_bootstrap_delta,
    response_nll,
)
from grader.tasks import get_task
from sandbox import ExecResult

PACK = get_task("model-selection")
CHECKS = PACK.checks
measured = CHECKS["intervals-valid"].__globals__["measured"]  # checks.py is loaded by path, not imported
PUBLIC = PACK.public_dir
TINY = PACK.dir.parent / "_shared" / "models" / "tiny"
SEEDS = ("model-selection-2026-cohort-a", "corpus-cohort-b")


def context(data_dir: Path, manifest: dict[str, Any]) -> CheckContext:
    return CheckContext(task_dir=PACK.dir, inputs={"model": TINY, "data": data_dir / "data"}, params={}, seed=0,
                        manifest=manifest, data_dir=data_dir, spec=PACK.spec)


def artifacts(out: Path) -> Artifacts:
    result = ExecResult(returncode=0, duration_s=1.0, stdout_path=out / "o", stderr_path=out / "e")
    return Artifacts(runs={"main": RunArtifacts("main", [], out, result)})


@pytest.fixture(scope="module")
def public() -> tuple[CheckContext, dict[str, str]]:
    manifest = json.loads((PUBLIC / "manifest.json").read_text())
    return context(PUBLIC, manifest), manifest["roles"]


def honest(ctx: CheckContext, roles: dict[str, str]) -> dict[str, Any]:
    """What a correct submission writes: the grader's own numbers and intervals, the leaks flagged."""
    from grader.checks.adapters import ci

    adapters = {}
    for name in roles.values():
        value, lo, hi = ci(measured(ctx, name, "val"))
        adapters[name] = {"val_nll": value, "ci": [lo, hi]}
    flags = [{"adapter": roles["contaminated"], "flag": "contaminated", "evidence": "bench far below val"},
             {"adapter": roles["overfit"], "flag": "overfit", "evidence": "val far below bench"}]
    order = [roles[r] for r in ("best", "tie", "undertrained", "overfit", "contaminated")]
    ranking = sorted(order[:3], key=lambda n: adapters[n]["val_nll"]) + order[3:]
    return {"metric": "val_nll", "adapters": adapters, "ranking": ranking, "chosen": ranking[0], "flags": flags}


def grade(tmp_path: Path, ctx: CheckContext, selection: Any, report: str = "word " * 200) -> dict[str, Any]:
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    (out / "selection.json").write_text(selection if isinstance(selection, str) else json.dumps(selection))
    (out / "REPORT.md").write_text(report)
    ctx.cache.pop("selection", None)
    ids = ("choice-correct", "contamination-flagged", "intervals-valid", "ranking-consistent", "report-present")
    return {i: CHECKS[i](artifacts(out), ctx) for i in ids}


def test_honest_selection_passes_every_check(tmp_path: Path, public: Any) -> None:
    ctx, roles = public
    results = grade(tmp_path, ctx, honest(ctx, roles))
    assert {i: r.status for i, r in results.items()} == dict.fromkeys(results, "pass"), results


def test_each_mistake_fails_its_check(tmp_path: Path, public: Any) -> None:
    ctx, roles = public
    good = honest(ctx, roles)
    picks_overfit = good | {"chosen": roles["overfit"]}
    assert grade(tmp_path, ctx, picks_overfit)["choice-correct"].status == "fail"
    unflagged = good | {"flags": [f for f in good["flags"] if f["flag"] != "contaminated"]}
    assert grade(tmp_path, ctx, unflagged)["contamination-flagged"].status == "fail"
    false_flag = good | {"flags": [*good["flags"], {"adapter": roles["best"], "flag": "contaminated", "evidence": "x"}]}
    assert grade(tmp_path, ctx, false_flag)["contamination-flagged"].status == "fail"
    zero = json.loads(json.dumps(good))
    for a in zero["adapters"].values():
        a["ci"] = [a["val_nll"], a["val_nll"]]
    assert grade(tmp_path, ctx, zero)["intervals-valid"].status == "fail"
    wide = json.loads(json.dumps(good))
    for a in wide["adapters"].values():
        a["ci"] = [a["val_nll"] - 1, a["val_nll"] + 1]
    assert grade(tmp_path, ctx, wide)["intervals-valid"].status == "fail"
    made_up = json.loads(json.dumps(good))
    made_up["adapters"][roles["best"]]["val_nll"] -= 0.05
    assert grade(tmp_path, ctx, made_up)["intervals-valid"].status in ("partial", "fail")
    upside_down = good | {"ranking": [roles["undertrained"], *[n for n in good["ranking"] if n != roles["undertrained"]]]}
    assert grade(tmp_path, ctx, upside_down)["ranking-consistent"].status != "pass"
    all_flagged = good | {"flags": [{"adapter": n, "flag": "odd", "evidence": "e"} for n in roles.values()]}
    assert grade(tmp_path, ctx, all_flagged)["ranking-consistent"].status == "fail"
    assert grade(tmp_path, ctx, good, report="too short")["report-present"].status == "fail"


@pytest.mark.parametrize("bad", ["not json", "[]", '{"metric": "val_nll"}', json.dumps({
    "metric": "val_nll", "adapters": {}, "ranking": [], "chosen": "x", "flags": []}), '{"adapters": NaN}'])
def test_malformed_selection_is_the_candidates_fault(tmp_path: Path, public: Any, bad: str) -> None:
    ctx, _ = public
    with pytest.raises(CandidateFault):
        grade(tmp_path, ctx, bad)


def test_public_candidates_reveal_nothing() -> None:
    folders = sorted((PUBLIC / "data" / "candidates").iterdir())
    assert len(folders) == 5
    assert {tuple(sorted(p.name for p in f.iterdir())) for f in folders} == {("adapter_config.json",
                                                                             "adapter_model.safetensors")}
    assert len({(f / "adapter_config.json").read_bytes() for f in folders}) == 1
    assert len({(f / "adapter_model.safetensors").stat().st_size for f in folders}) == 1


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any], float]]:
    out = {}
    for seed in SEEDS:
        dest = tmp_path_factory.mktemp("cohort")
        start = time.monotonic()
        manifest = PACK.generate(dest, seed, {"model": TINY})
        out[seed] = (dest, manifest, time.monotonic() - start)
    return out


def measure(dest: Path, roles: dict[str, str]) -> dict[str, dict[str, Any]]:
    _, tok = load_model(TINY, device="cpu")
    sets = {k: encode_chat(tok, [json.loads(x) for x in (dest / f).read_text().splitlines()])
            for k, f in (("val", "data/val.jsonl"), ("bench", "data/bench.jsonl"), ("test", "heldout/test.jsonl"))}
    res = {}
    for role, name in roles.items():
        model, _ = load_model(TINY, device="cpu", dtype="float32")
        model = load_adapter(model, dest / "data" / "candidates" / name)
        res[role] = {k: response_nll(model, e) for k, e in sets.items()}
    return res


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_builder_plants_the_roles(cohorts: Any, seed: str) -> None:
    dest, manifest, _ = cohorts[seed]
    res = measure(dest, manifest["roles"])
    nll = {role: {k: r.mean_nll for k, r in sets.items()} for role, sets in res.items()}
    assert min(nll, key=lambda r: nll[r]["val"]) == "overfit", nll
    assert min(nll, key=lambda r: nll[r]["bench"]) == "contaminated", nll
    best, weights = res["best"]["test"].bootstrap_inputs()
    for role in ("overfit", "contaminated", "undertrained"):
        _, lo, _ = paired_bootstrap_delta(best, res[role]["test"].bootstrap_inputs()[0], weights)
        assert lo > 0, (role, nll)
    assert abs(nll["tie"]["test"] - nll["best"]["test"]) < 0.15, nll
    assert (nll["tie"]["val"] < nll["best"]["val"]) == (nll["tie"]["test"] < nll["best"]["test"]), nll


@pytest.mark.slow
def test_builder_is_cached_and_names_vary(cohorts: Any, tmp_path: Path) -> None:
    dest, manifest, cold = cohorts[SEEDS[0]]
    start = time.monotonic()
    again = PACK.generate(tmp_path / "again", SEEDS[0], {"model": TINY})
    assert time.monotonic() - start < max(10.0, cold / 3)
    assert again == manifest
    for name in manifest["roles"].values():
        a = (dest / "data" / "candidates" / name / "adapter_model.safetensors").read_bytes()
        assert a == (tmp_path / "again" / "data" / "candidates" / name / "adapter_model.safetensors").read_bytes()
    candidates = dest / "data" / "candidates"
    assert len({p.stat().st_mtime for p in [candidates, *candidates.rglob("*")]}) == 1
    other = cohorts[SEEDS[1]][1]["roles"]
    assert set(other.values()).isdisjoint(manifest["roles"].values())
    sets = {k: {json.dumps(r) for r in map(json.loads, (dest / f).read_text().splitlines())}
            for k, f in (("val", "data/val.jsonl"), ("bench", "data/bench.jsonl"), ("test", "heldout/test.jsonl"))}
    assert not sets["val"] & sets["bench"] and not sets["val"] & sets["test"] and not sets["bench"] & sets["test"]
