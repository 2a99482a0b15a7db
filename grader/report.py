"""Report stage: render self-contained HTML pages (inline CSS, no network) from results. Only the cohort page
has a script, inline: it sorts the table."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from grader import __version__
from grader.cohort import Cohort, Row, Ungraded, assemble
from grader.constants import COHORT_FILE, REPORT_FILE, REPORTS_DIR, SUBMISSION_DIR
from grader.integrity import SIMILARITY_THRESHOLD, SimilarPair, Submission, similar_pairs
from grader.result import Result
from grader.tasks import discover

_EVIDENCE_CHARS = 600


def _compact(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= _EVIDENCE_CHARS else text[:_EVIDENCE_CHARS] + " …"


def _sparkline(points: list[tuple[int, float]], width: int = 360, height: int = 80) -> Markup:
    """An inline SVG loss curve: the report stays one self-contained file."""
    if len(points) < 2:
        return Markup("")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (width - 8) / ((x1 - x0) or 1)
    sy = (height - 8) / ((y1 - y0) or 1)
    path = " ".join(f"{4 + (x - x0) * sx:.1f},{height - 4 - (y - y0) * sy:.1f}" for x, y in points)
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="training loss from {ys[0]:.3f} to {ys[-1]:.3f}"><polyline fill="none" stroke="#0969da" '
        f'stroke-width="1.5" points="{path}"/></svg>'
    )


PALETTE = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#0a7b83", "#953800", "#6e7781")


def _curves(runs: list[Any], width: int = 560, height: int = 200) -> Markup:
    """Every training run's loss curve (lines) and eval losses (dots) in one inline SVG, one colour per
    run: a search's trials side by side on shared axes."""
    series = [(r.losses, r.eval_losses) for r in runs if len(r.losses) >= 2]
    points = [p for losses, evals in series for p in losses + evals]
    if not points:
        return Markup("")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx, sy = (width - 12) / ((x1 - x0) or 1), (height - 12) / ((y1 - y0) or 1)

    def at(x: float, y: float) -> str:
        return f"{6 + (x - x0) * sx:.1f},{height - 6 - (y - y0) * sy:.1f}"

    parts = []
    for i, (losses, evals) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{" ".join(at(x, y) for x, y in losses)}"/>')
        parts += [f'<circle cx="{at(x, y).split(",")[0]}" cy="{at(x, y).split(",")[1]}" r="3.5" fill="{colour}"/>'
                  for x, y in evals]
    return Markup(f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
                  f'aria-label="loss curves of {len(series)} training runs, loss {y0:.3f} to {y1:.3f}">{"".join(parts)}'
                  "</svg>")


def _search(result: Result) -> dict[str, Any] | None:
    """A hyperparameter search, where the task's checks describe one: the trial table (reported and
    recomputed losses, the chosen trial), and what telemetry saw of each training run."""
    data = {c.id: c.evidence.data for c in result.checks}
    trials = (data.get("best-reproduces") or {}).get("trials") or (data.get("best-selected") or {}).get("trials")
    quantization = (data.get("quantized-4bit") or {}).get("quantization")
    main = next(iter(result.telemetry.values()), None)
    runs = [r for r in main.train_runs if r.losses] if main is not None else []
    if not trials and not quantization:
        return None
    return {"trials": trials or [], "quantization": quantization, "runs": runs, "palette": PALETTE}


def _alignment(result: Result) -> dict[str, Any] | None:
    """A multi-stage alignment pipeline, where the task's checks describe one: held-out NLL of the base,
    SFT and final models, preference accuracy and margin, retention and drift against their bounds, and
    the distributed run beside the single-process one (all from the checks' evidence)."""
    data = {c.id: c.evidence.data for c in result.checks}
    if "preference-accuracy" not in data and "dpo-from-sft" not in data:
        return None
    sft, retention = data.get("sft-improves") or {}, data.get("retention") or {}
    stages = []
    if sft.get("base_nll"):
        stages.append({"name": "Base", "nll": sft["base_nll"], "rise": None})
    if sft.get("adapter_nll"):
        stages.append({"name": "SFT", "nll": sft["adapter_nll"], "rise": None})
    if retention.get("final_nll") is not None:
        stages.append({"name": "SFT + DPO", "nll": [retention["final_nll"]], "rise": retention.get("rise")})
    return {"stages": stages, "preference": data.get("preference-accuracy") or {}, "retention": retention,
            "drift": data.get("drift-bounded") or {}, "distributed": data.get("distributed") or {},
            "runs": {r.name: r for r in result.runs}}


def templates() -> Environment:
    """The page templates, with the shared filters and the inline CSS every page carries."""
    env = Environment(
        loader=FileSystemLoader(REPORTS_DIR / "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["compact"] = _compact
    env.filters["sparkline"] = _sparkline
    env.filters["curves"] = _curves
    env.tests["startswith"] = lambda value, prefix: str(value).startswith(prefix)
    env.globals |= {
        "css": (REPORTS_DIR / "assets" / "report.css").read_text(encoding="utf-8"),
        "tool_version": __version__,
        "rendered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return env


def render_report(result: Result, path: Path) -> Path:
    counts = Counter({"pass": 0, "partial": 0, "fail": 0, "error": 0})
    counts.update(c.status for c in result.checks)
    html = templates().get_template("report.html.j2").render(r=result, counts=counts, search=_search(result),
                                                        alignment=_alignment(result))
    path.write_text(html, encoding="utf-8")
    return path


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "candidate"


def _histogram(counts: list[int], width: int = 360, height: int = 120) -> Markup:
    """Scores in bins of 10 as an inline SVG bar chart (numbers only, so nothing to escape)."""
    top, bar = max(counts, default=0) or 1, (width - 20) / len(counts)
    parts = []
    for i, n in enumerate(counts):
        h = (height - 36) * n / top
        x, y = 10 + i * bar, height - 18 - h
        parts.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" fill="#0969da">'
                     f"<title>{i * 10}-{i * 10 + 10}: {n}</title></rect>")
        if n:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle">{n}</text>')
    ticks = "".join(f'<text x="{10 + i * bar:.1f}" y="{height - 4}" text-anchor="middle">{i * 10}</text>'
                    for i in range(0, len(counts) + 1, 2))
    label = ", ".join(f"{i * 10}-{i * 10 + 10}: {n}" for i, n in enumerate(counts) if n) or "no scores"
    return Markup(f'<svg class="histogram" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
                  f'role="img" aria-label="score distribution in bins of 10: {label}">{"".join(parts)}'
                  f'<line x1="10" y1="{height - 18}" x2="{width - 10}" y2="{height - 18}" stroke="#8c959f"/>'
                  f"{ticks}</svg>")


def _pair_page(pair: SimilarPair) -> str:
    return f"similar-{pair.left}-{pair.right}.html"


def render_cohort(cohort: Cohort, path: Path, pairs: list[SimilarPair] | None = None,
                  not_compared: str | None = None) -> Path:
    """The panel's cohort page: a sortable table of every grade with its check matrix, the score
    distribution, and the integrity flags (similar code, self-reports the grader's numbers contradict);
    grades with grader errors are listed apart. Its one inline script sorts the table."""
    rows = {row.key: row for row in cohort.rows}
    html = templates().get_template("cohort.html.j2").render(
        c=cohort, histogram=_histogram(cohort.histogram), threshold=SIMILARITY_THRESHOLD, not_compared=not_compared,
        pairs=[{"pair": p, "href": _pair_page(p), "left": rows[p.left], "right": rows[p.right]}
               for p in pairs or []],
        self_reports=[row for row in cohort.rows if row.self_reports],
    )
    path.write_text(html, encoding="utf-8")
    return path


def render_similar(pair: SimilarPair, left: Row, right: Row, path: Path) -> Path:
    """Two submissions' best-matching files side by side, similar passages marked. The code is the
    candidates' and hostile: it reaches the page only as escaped text."""
    html = templates().get_template("similar.html.j2").render(p=pair, left=left, right=right,
                                                         threshold=SIMILARITY_THRESHOLD)
    path.write_text(html, encoding="utf-8")
    return path


def _similarity(results: list[Result], keys: list[str], folders: Sequence[Path | None] | None,
                starters: Mapping[str, Path] | None) -> tuple[list[SimilarPair], str | None]:
    """Flagged pairs of the submissions kept beside their results, and why any grade was not compared."""
    if folders is None:
        return [], "the result folders were not given, so no code was compared"
    if starters is None:
        starters = {task_id: pack.dir / "starter" for task_id, pack in discover([]).items()}
    subs, missing = [], []
    for result, key, folder in zip(results, keys, folders, strict=True):
        code = folder / SUBMISSION_DIR if folder is not None else None
        if code is not None and code.is_dir() and result.task.id in starters:
            subs.append(Submission(key=key, task=result.task.id, folder=code))
        else:
            missing.append(key)
    note = (f"not compared (no {SUBMISSION_DIR}/ kept beside the result, or the task's starter is unknown): "
            + ", ".join(missing)) if missing else None
    return similar_pairs(subs, dict(starters)), note


def render_all(results: list[Result], out: Path, folders: Sequence[Path | None] | None = None,
               starters: Mapping[str, Path] | None = None, names: Sequence[str] | None = None,
               ungraded: Sequence[Ungraded] = (), cohort_page: bool | None = None) -> list[Path]:
    """Re-render stored results: one page each under out/<candidate>/, plus a cohort page when several.

    ``folders``: each result's folder (the one holding result.json), in the order of ``results``; the code
    in its submission/ is compared with the other submissions of the same task, beyond the task's starter
    code (``starters``: task id to starter folder; by default the discovered task packs' starter/).
    ``names``: each result's page folder under ``out`` (a batch's candidate folders); ``ungraded``: entries
    with no result, listed on the cohort page; ``cohort_page``: render it even for one result."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    entries: list[tuple[Result, str, str]] = []
    used: Counter[str] = Counter()
    for i, result in enumerate(results):
        name = names[i] if names is not None else slug(f"{result.candidate}-{result.task.id}")
        used[name] += 1
        if used[name] > 1:
            name = f"{name}-{used[name]}"
        (out / name).mkdir(exist_ok=True)
        written.append(render_report(result, out / name / REPORT_FILE))
        entries.append((result, name, f"{name}/{REPORT_FILE}"))
    if cohort_page if cohort_page is not None else len(results) > 1:
        pairs, not_compared = _similarity(results, [key for _, key, _ in entries], folders, starters)
        similar: dict[str, list[str]] = {}
        for pair in pairs:
            similar.setdefault(pair.left, []).append(pair.right)
            similar.setdefault(pair.right, []).append(pair.left)
        cohort = assemble(entries, similar, list(ungraded))
        rows = {row.key: row for row in cohort.rows}
        written.append(render_cohort(cohort, out / COHORT_FILE, pairs, not_compared))
        written += [render_similar(p, rows[p.left], rows[p.right], out / _pair_page(p)) for p in pairs]
    return written
