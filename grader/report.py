"""Report stage: render self-contained HTML pages (inline CSS, no scripts, no network) from results."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from grader import __version__
from grader.constants import COHORT_FILE, REPORT_FILE, REPORTS_DIR
from grader.result import Result

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


def _env() -> Environment:
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
    html = _env().get_template("report.html.j2").render(r=result, counts=counts, search=_search(result),
                                                        alignment=_alignment(result))
    path.write_text(html, encoding="utf-8")
    return path


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "candidate"


def render_cohort(results: list[tuple[Result, str]], path: Path) -> Path:
    """One row per grade, best first; grades with grader errors are listed apart."""
    rows = sorted(({"r": r, "href": href} for r, href in results), key=lambda row: -(row["r"].score or 0))
    incomplete = [row for row in rows if row["r"].verdict in ("error", "incomplete")]
    graded = [row for row in rows if row not in incomplete]
    html = _env().get_template("cohort.html.j2").render(
        rows=rows,
        graded=graded,
        incomplete=incomplete,
        errored=len(incomplete),
        tasks=sorted({row["r"].task.id for row in rows}),
    )
    path.write_text(html, encoding="utf-8")
    return path


def render_all(results: list[Result], out: Path) -> list[Path]:
    """Re-render stored results: one page each under out/<candidate>/, plus a cohort page when several."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    links: list[tuple[Result, str]] = []
    used: Counter[str] = Counter()
    for result in results:
        name = slug(f"{result.candidate}-{result.task.id}")
        used[name] += 1
        if used[name] > 1:
            name = f"{name}-{used[name]}"
        (out / name).mkdir(exist_ok=True)
        written.append(render_report(result, out / name / REPORT_FILE))
        links.append((result, f"{name}/{REPORT_FILE}"))
    if len(results) > 1:
        written.append(render_cohort(links, out / COHORT_FILE))
    return written
