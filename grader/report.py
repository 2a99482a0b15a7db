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
    html = _env().get_template("report.html.j2").render(r=result, counts=counts)
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
