"""The tunegrade command line: thin commands that parse, call one pipeline function, and print.

Exit codes: 0 graded (whatever the score), 1 grader or infrastructure fault (the result is
still written, with the errors shown apart), 2 bad input or usage, 3 the self-check found
failing checks. Messages go to stderr; --json goes to stdout.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from grader.constants import (
    DEFAULT_BACKEND,
    DEFAULT_BASE_MODEL,
    DEFAULT_SEED,
    REPORT_FILE,
    RESULT_FILE,
    RUBRICS_DIR,
    TASK_MARKER,
    TASKS_ENV,
)
from grader.errors import BadInput, GraderFault, TunegradeError
from grader.export import export_task
from grader.panel import load_sheet, merge_sheets, rubric_for, sheet_text
from grader.pdf import html_to_pdf
from grader.pipeline import GradeRequest, grade
from grader.progress import Progress
from grader.progress import for_console as progress_for
from grader.report import render_all, render_report, slug
from grader.result import Result, load_result, save_result
from grader.review import build_review, check_results, write_review
from grader.rubric import load_rubrics
from grader.solutions import list_solutions, materialise, refuse_patch_folder
from grader.tasks import discover, get_task

EXIT_CHECKS_FAILED = 3
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _stdout() -> Console:
    """Piped output is not wrapped at 80 columns, so one row stays one line."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 240)


def _tasks_dirs() -> list[Path]:
    return click.get_current_context().obj or []


PathArg = click.Path(path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--tasks-dir", "tasks_dirs", multiple=True, type=PathArg,
              help=f"Extra folder of task packs (repeatable); also ${TASKS_ENV}, colon-separated.")
@click.pass_context
def app(ctx: click.Context, tasks_dirs: tuple[Path, ...]) -> None:
    """Grade LLM fine-tuning submissions in a sandbox, on hidden inputs, against level rubrics."""
    ctx.obj = list(tasks_dirs)


def _check_table(result: Result) -> Table:
    colour = {"pass": "green", "partial": "yellow", "fail": "red", "error": "magenta"}
    table = Table(show_edge=False, pad_edge=False)
    for col in ("check", "status", "score", "evidence"):
        table.add_column(col, overflow="fold")
    for c in result.checks:
        table.add_row(c.id, f"[{colour[c.status]}]{c.status}[/]", f"{c.score:.2f}", c.evidence.message[:160])
    return table


def _summary(result: Result) -> str:
    score = f"{result.score:.1f}/100" if result.score is not None else "no score"
    return f"{result.candidate}: {result.task.id} {score}, verdict {result.verdict}, isolation {result.isolation.level}"


@app.command("tasks")
def tasks_cmd() -> None:
    """List the tasks: id, title, level, roles, resources."""
    table = Table(show_edge=False)
    for col in ("id", "title", "level", "roles", "resources"):
        table.add_column(col)
    for pack in sorted(discover(_tasks_dirs()).values(), key=lambda p: p.id):
        lim = pack.spec.limits
        res = f"{lim.wall_time_s:.0f}s, {lim.memory_mb} MB, {lim.cpus:g} CPU, {lim.gpus} GPU, network {lim.network}"
        table.add_row(pack.id, pack.spec.title, pack.spec.level, ", ".join(pack.spec.roles), res)
    _stdout().print(table)


@app.command("export")
@click.argument("task")
@click.argument("dest", type=PathArg)
def export_cmd(task: str, dest: Path) -> None:
    """Write the candidate's starter repo for TASK into DEST (no hidden material)."""
    path = export_task(get_task(task, _tasks_dirs()), dest)
    err.print(f"exported {task} to {path}")


def _task_for(submission: Path, task: str | None) -> str:
    if task:
        return task
    marker = submission / TASK_MARKER
    if submission.is_dir() and marker.is_file():
        return marker.read_text(encoding="utf-8").strip()
    raise BadInput(f"--task is required ({submission} has no {TASK_MARKER} marker)")


_backend = click.option("--backend", default=DEFAULT_BACKEND, show_default=True,
                        help="Sandbox backend: local (bubblewrap, falls back to process), process, or docker.")
_gpus = click.option("--gpus", help="docker: GPUs for runs that ask for them: all, a count, or device=ID[,ID...].")
_image = click.option("--image", help="docker: candidate image (default $TUNEGRADE_DOCKER_IMAGE, else the built one).")
_seed = click.option("--seed", default=DEFAULT_SEED, show_default=True, type=int, help="Seed passed to the entry command.")
_base_model = click.option("--base-model", default=DEFAULT_BASE_MODEL, show_default=True,
                           help="Base model for model tasks: tiny, smollm2-135m, or a local Hugging Face model folder.")
_scale = click.FloatRange(min=0.1, max=100)
_time_scale = click.option("--time-scale", default=1.0, show_default=True, type=_scale,
                           help="Scale the task's time limit and budget (a larger base model, slower hardware).")
_memory_scale = click.option("--memory-scale", default=1.0, show_default=True, type=_scale,
                             help="Scale the task's memory limit and budget.")
_allow_reduced = click.option("--allow-reduced-isolation", is_flag=True,
                              help="Run the submission even where the sandbox cannot isolate it (no bubblewrap, "
                                   "--backend process): only for code you trust.")
_hidden_seed = click.option("--hidden-seed", envvar="TUNEGRADE_HIDDEN_SEED",
                            help="Secret seed of this cohort's hidden inputs.")
_quiet = click.option("--quiet", "-q", is_flag=True, help="Show no progress while grading (the outcome still prints).")
_device = click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
                       help="Where the grader's own evaluation runs.")


@contextmanager
def _progress(quiet: bool) -> Iterator[Progress]:
    """The grade's progress on stderr: live on a terminal, timestamped lines elsewhere."""
    progress = progress_for(err, quiet)
    try:
        yield progress
    finally:
        progress.close()


def _backend_options(gpus: str | None, image: str | None) -> dict[str, str]:
    """The backend options given on the command line (a backend that takes none refuses them)."""
    return {key: value for key, value in {"gpus": gpus, "image": image}.items() if value is not None}


@app.command("check")
@click.argument("submission", type=PathArg)
@click.option("--task", help="Task id; read from the exported repo if omitted.")
@click.option("--out", "out_dir", type=PathArg, help="Result folder (default ./graded/self-check-<name>).")
@_backend
@_gpus
@_image
@_seed
@_base_model
@_device
@_time_scale
@_memory_scale
@_allow_reduced
@_quiet
def check_cmd(submission: Path, task: str | None, out_dir: Path | None, backend: str, gpus: str | None,
              image: str | None, seed: int, base_model: str, device: str, time_scale: float,
              memory_scale: float, allow_reduced_isolation: bool, quiet: bool) -> None:
    """Self-check: run the visible checks on the public data (exit 3 if one does not pass)."""
    pack = get_task(_task_for(submission, task), _tasks_dirs())
    refuse_patch_folder(submission, pack.id)
    target = out_dir or Path("graded") / slug(f"self-check-{submission.resolve().name}")
    with _progress(quiet) as progress:
        result = grade(GradeRequest(pack=pack, source=submission, out=target, backend=backend,
                                    backend_options=_backend_options(gpus, image), seed=seed, public=True,
                                    base_model=base_model, device=device, time_scale=time_scale,
                                    memory_scale=memory_scale, allow_reduced_isolation=allow_reduced_isolation,
                                    progress=progress))
    render_report(result, target / REPORT_FILE)
    err.print(_check_table(result))
    err.print(_summary(result))
    _stdout().print(str(target / REPORT_FILE))
    if any(c.status != "pass" for c in result.checks):
        raise click.exceptions.Exit(EXIT_CHECKS_FAILED)


@app.command("grade")
@click.argument("submission", type=PathArg)
@click.option("--task", required=True, help="Task id (see `tunegrade tasks`).")
@click.option("--out", "out_dir", type=PathArg, help="Result folder (default ./graded/<candidate>).")
@click.option("--candidate", help="Candidate name (default: the submission's name).")
@_backend
@_gpus
@_image
@_seed
@click.option("--ref", help="Git ref to grade when SUBMISSION is a git repository (default HEAD).")
@_hidden_seed
@click.option("--role", help="Rubric role (default: the task's first role).")
@_base_model
@_device
@_time_scale
@_memory_scale
@_allow_reduced
@_quiet
@click.option("--json", "as_json", is_flag=True, help="Print result.json to stdout.")
def grade_cmd(submission: Path, task: str, out_dir: Path | None, candidate: str | None, backend: str,
              gpus: str | None, image: str | None, seed: int, ref: str | None, hidden_seed: str | None,
              role: str | None, base_model: str, device: str, time_scale: float, memory_scale: float,
              allow_reduced_isolation: bool, quiet: bool, as_json: bool) -> None:
    """Grade SUBMISSION (folder, .tar.gz/.tgz/.zip, or git repo) on hidden inputs."""
    pack = get_task(task, _tasks_dirs())
    refuse_patch_folder(submission, pack.id)
    name = candidate or (submission.name.split(".")[0] if submission.is_file() else submission.resolve().name)
    target = out_dir or Path("graded") / slug(name)
    with _progress(quiet) as progress:
        result = grade(GradeRequest(
            pack=pack, source=submission, out=target, candidate=candidate, backend=backend,
            backend_options=_backend_options(gpus, image), seed=seed, ref=ref, hidden_seed=hidden_seed, role=role,
            base_model=base_model, device=device, time_scale=time_scale, memory_scale=memory_scale,
            allow_reduced_isolation=allow_reduced_isolation, progress=progress,
        ))
    report = render_report(result, target / REPORT_FILE)
    err.print(_check_table(result))
    err.print(_summary(result))
    _stdout().print(result.model_dump_json(indent=2) if as_json else str(report))
    if result.verdict in ("error", "incomplete"):
        raise click.exceptions.Exit(GraderFault.exit_code)


@app.command("solutions")
@click.argument("task")
@click.argument("name", required=False)
@click.argument("dest", required=False, type=PathArg)
def solutions_cmd(task: str, name: str | None, dest: Path | None) -> None:
    """List TASK's reference solutions, or write solution NAME into DEST as a full submission."""
    pack = get_task(task, _tasks_dirs())
    if name is None:
        table = Table(show_edge=False)
        for col in ("solution", "kind", "caught by"):
            table.add_column(col)
        for sol in list_solutions(pack):
            caught = f"{sol.check} (on a cohort like {sol.cohort})" if sol.cohort else sol.check or ""
            table.add_row(sol.name, "good" if sol.check is None else "flawed", caught)
        _stdout().print(table)
        return
    if dest is None:
        raise click.UsageError("DEST is required with NAME (the folder to write the submission into)")
    err.print(f"wrote {task} solution {name} to {materialise(pack, name, dest)}")


@app.command("report")
@click.argument("results", nargs=-1, required=True, type=PathArg)
@click.option("--out", "out_dir", required=True, type=PathArg, help="Folder for the rendered pages.")
@click.option("--pdf", is_flag=True, help="Also print each page to a .pdf beside it (needs Chromium).")
def report_cmd(results: tuple[Path, ...], out_dir: Path, pdf: bool) -> None:
    """Re-render reports (and a cohort page for several) from stored result.json files or folders."""
    loaded = [load_result(p / RESULT_FILE if p.is_dir() else p) for p in results]
    folders = [p if p.is_dir() else p.parent for p in results]  # their submission/ is compared for similar code
    for path in render_all(loaded, out_dir, folders=folders):
        _stdout().print(str(path))
        if pdf:
            _stdout().print(str(html_to_pdf(path, path.with_suffix(".pdf"))))


def _result_file(path: Path) -> Path:
    return path / RESULT_FILE if path.is_dir() else path


@app.command("panel-sheet")
@click.argument("result_path", metavar="RESULT.json", type=PathArg)
@click.option("--rater", help="The rater's name, written into the sheet.")
@click.option("--out", "out", type=PathArg, help="Write the sheet here (default: stdout).")
def panel_sheet_cmd(result_path: Path, rater: str | None, out: Path | None) -> None:
    """Write a YAML scoresheet for the panel competencies of a grade's level."""
    text = sheet_text(load_result(_result_file(result_path)), rater)
    if out is None:
        click.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8")
    err.print(f"wrote {out}")


@app.command("panel-merge")
@click.argument("result_path", metavar="RESULT.json", type=PathArg)
@click.argument("sheets", nargs=-1, required=True, metavar="SHEET.yaml...", type=PathArg)
def panel_merge_cmd(result_path: Path, sheets: tuple[Path, ...]) -> None:
    """Merge filled-in scoresheets into RESULT.json, re-score its level and re-render its report."""
    path = _result_file(result_path)
    result = load_result(path)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    merged = merge_sheets(result, rubric_for(result), [(s, load_sheet(s)) for s in sheets], now)
    save_result(merged, path)
    report = render_report(merged, path.parent / REPORT_FILE)
    for c in merged.rollup.competencies:
        if c.kind == "panel":
            err.print(f"{c.id}: {c.status}" + (f" {c.score:.2f}" if c.score is not None else ""), markup=False)
    agree = merged.panel_agreement
    if agree is not None:
        alpha = f"{agree.alpha:.3f}" if agree.alpha is not None else f"undefined ({agree.alpha_undefined})"
        err.print(f"Krippendorff's alpha over {len(agree.raters)} raters: {alpha}", markup=False)
        if agree.disagreements:
            err.print(f"raters disagree by more than one point on: {', '.join(agree.disagreements)}", markup=False)
    _stdout().print(str(report))


@app.command("review")
@click.argument("results", nargs=-1, required=True, type=PathArg)
@click.option("--person", required=True, help="Whose results these are (a result's candidate name).")
@click.option("--role", required=True, help="The role whose five-level ladder to place the person on.")
@click.option("--out", "out_dir", type=PathArg, help="Folder for review.html and the reports (default ./review-<person>).")
def review_cmd(results: tuple[Path, ...], person: str, role: str, out_dir: Path | None) -> None:
    """Place a person's results across tasks on ROLE's ladder, junior to principal, in one page."""
    rubrics = load_rubrics(RUBRICS_DIR)
    if role not in rubrics:
        raise BadInput(f"--role: no rubric for {role!r} (roles: {', '.join(sorted(rubrics))})")
    loaded = [(p, load_result(_result_file(p))) for p in results]
    for warning in check_results(loaded, person, role):
        err.print(f"tunegrade: warning: {warning}", markup=False)
    task_levels = [pack.spec.level for pack in discover(_tasks_dirs()).values() if role in pack.spec.roles]
    review = build_review(person, rubrics[role], [r for _, r in loaded], task_levels)
    for warning in review.warnings:
        err.print(f"tunegrade: warning: {warning}", markup=False)
    _stdout().print(str(write_review(review, out_dir or Path(slug(f"review-{person}")))))


@app.command("batch")
@click.argument("folder", type=PathArg)
@click.option("--task", help="Task id of every submission (default: each exported repo's own marker).")
@click.option("--out", "out_dir", type=PathArg, help="Batch folder: results, reports, batch.sqlite, index.html "
                                                      "(default ./graded/<FOLDER's name>).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Grades at a time (default: as many as the tasks' "
                                                                 "CPUs and GPUs allow on this host).")
@click.option("--regrade", is_flag=True, help="Grade again what this batch folder already recorded as graded.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine's threads; ray: one Ray task per submission across a cluster "
                   "(pip install 'tunegrade[ray]').")
@click.option("--address", help="ray: the cluster to grade on (host:port, or auto); default: start one on "
                                "this machine.")
@click.option("--storage", help="ray: where submissions and results travel, reached by every node: a shared "
                                "path or an fsspec URL (default: <out>/.fleet-storage, one machine only).")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="ray: how often a grade whose worker or node was lost starts again before it is an error.")
@click.option("--backend", help="Sandbox backend: local, process or docker; with --engine ray also auto "
                                "(default there: docker with the task's GPUs on GPU nodes, local elsewhere).")
@_gpus
@_image
@_seed
@_hidden_seed
@click.option("--role", help="Rubric role (default: each task's first role).")
@_base_model
@_device
@_time_scale
@_memory_scale
@_allow_reduced
@_quiet
def batch_cmd(folder: Path, task: str | None, out_dir: Path | None, jobs: int | None, regrade: bool, engine: str,
              address: str | None, storage: str | None, retries: int, backend: str | None, gpus: str | None,
              image: str | None, seed: int, hidden_seed: str | None, role: str | None, base_model: str, device: str,
              time_scale: float, memory_scale: float, allow_reduced_isolation: bool, quiet: bool) -> None:
    """Grade every submission in FOLDER (one sub-folder, git repository or archive per candidate), resumably."""
    from grader.batch import BatchRequest, render_batch_pages, run_batch
    from grader.batch_display import for_console

    if engine == "local" and (address or storage):
        raise BadInput("--address and --storage are options of --engine ray")
    if engine == "ray" and jobs is not None:
        raise BadInput("--jobs is an option of the local engine: Ray admits grades by the tasks' resources")
    if engine == "local" and backend == "auto":
        raise BadInput("--backend auto chooses per node: it needs --engine ray")
    out = out_dir or Path("graded") / slug(folder.resolve().name)
    options = dict(backend=backend or ("auto" if engine == "ray" else DEFAULT_BACKEND),
                   backend_options=_backend_options(gpus, image), seed=seed, hidden_seed=hidden_seed,
                   role=role, base_model=base_model, device=device, time_scale=time_scale, memory_scale=memory_scale,
                   allow_reduced_isolation=allow_reduced_isolation)
    req = BatchRequest(folder=folder, out=out, task=task, jobs=jobs, regrade=regrade, tasks_dirs=_tasks_dirs(),
                       options=options)
    if engine == "ray":
        from grader.fleet import FleetOptions, run_fleet

        summary = run_fleet(req, FleetOptions(address=address, storage=storage, retries=retries),
                            for_console(err, quiet))
    else:
        summary = run_batch(req, for_console(err, quiet))
    index = render_batch_pages(out, summary.rows)
    counts = ", ".join(f"{summary.count(s)} {s}" for s in ("graded", "bad-input", "error") if summary.count(s))
    err.print(f"batch {out}: {len(summary.rows)} submissions ({counts}); {len(summary.graded_now)} graded now, "
              f"{len(summary.skipped)} already graded", markup=False)
    _stdout().print(str(index))
    if summary.count("error") or summary.count("running"):
        raise click.exceptions.Exit(GraderFault.exit_code)


@app.command("rescore")
@click.argument("folders", nargs=-1, required=True, type=PathArg)
@click.option("--hidden-seed", envvar="TUNEGRADE_HIDDEN_SEED", help="The cohort's hidden seed, as it was graded with.")
@click.option("--base-model", help="Base model, when it was a local folder (default: the profile it was graded on).")
@_backend
@_gpus
@_image
@_device
@_allow_reduced
def rescore_cmd(folders: tuple[Path, ...], hidden_seed: str | None, base_model: str | None, backend: str,
                gpus: str | None, image: str | None, device: str, allow_reduced_isolation: bool) -> None:
    """Re-run the checks on result folders' stored artifacts (no candidate code runs) and re-render; a batch
    folder re-scores every grade it recorded and its cohort page."""
    from grader.batch import render_batch_pages
    from grader.batch_store import DB_FILE, BatchStore
    from grader.rescore import RescoreRequest, rescore

    def one(folder: Path) -> Result:
        before = load_result(folder / RESULT_FILE)
        result = rescore(RescoreRequest(folder=folder, hidden_seed=hidden_seed, base_model=base_model, backend=backend,
                                        backend_options=_backend_options(gpus, image), device=device,
                                        allow_reduced_isolation=allow_reduced_isolation, tasks_dirs=_tasks_dirs()))
        report = render_report(result, folder / REPORT_FILE)
        changed = [c.id for c, o in zip(result.checks, before.checks) if (c.status, c.score) != (o.status, o.score)]
        err.print(f"{result.candidate}: {before.verdict} {before.score} -> {result.verdict} {result.score}"
                  + (f" (changed: {', '.join(changed)})" if changed else " (no check changed)"), markup=False)
        _stdout().print(str(report))
        return result

    for folder in folders:
        if not (folder / DB_FILE).is_file():
            one(folder)
            continue
        store = BatchStore(folder)  # refused while a batch runs in it
        try:
            for row in store.rows().values():
                if row.result:
                    result = one(folder / row.result)
                    store.rescored(row.candidate, result.verdict, result.score)
            _stdout().print(str(render_batch_pages(folder, store.rows())))
        finally:
            store.close()


@app.group("sandbox")
def sandbox_group() -> None:
    """Sandbox infrastructure: candidate images, cleanup."""


@sandbox_group.command("build-image")
@click.option("--kind", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Candidate image to build (cuda needs several GB of wheels from the package index).")
def build_image_cmd(kind: str) -> None:
    """Build (or load from the cache) the candidate image; print its tag and digest."""
    from sandbox.base import SandboxUnavailable
    from sandbox.images import build_image, image_digest

    try:
        tag = build_image(kind, progress=lambda line: err.print(line, markup=False))
        digest = image_digest(tag)
    except SandboxUnavailable as exc:
        raise GraderFault(str(exc)) from exc
    _stdout().print(f"{tag} {digest}")


@sandbox_group.command("sweep")
@click.option("--older-than", "older_than_h", default=6.0, show_default=True, type=click.FloatRange(min=0),
              help="Also remove what is older than this many hours, whatever its grader.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def sweep_cmd(older_than_h: float, dry_run: bool) -> None:
    """Remove docker containers and volumes left by graders that are gone (crashed, killed)."""
    from sandbox.base import SandboxUnavailable
    from sandbox.docker_sweep import sweep

    try:
        swept = sweep(older_than_h * 3600, dry_run=dry_run)
    except SandboxUnavailable as exc:
        raise GraderFault(str(exc)) from exc
    for s in swept:
        done = "would remove" if dry_run else ("removed" if s.removed else "could not remove")
        _stdout().print(f"{done} {s.kind} {s.name} ({s.reason}){': ' + s.error if s.error else ''}", markup=False)
    if not swept:
        err.print("nothing to sweep")
    if any(s.error for s in swept):
        raise click.exceptions.Exit(GraderFault.exit_code)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; every expected failure is one line on stderr."""
    try:
        code = app.main(args=argv, prog_name="tunegrade", standalone_mode=False)
    except TunegradeError as exc:
        err.print(f"tunegrade: error: {exc}", markup=False)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        err.print(f"tunegrade: error: {exc.format_message()}", markup=False)
        return 2
    except click.exceptions.Abort:
        return 130
    except Exception as exc:  # a grader bug: say so plainly, keep the traceback for debugging
        if os.environ.get("TUNEGRADE_DEBUG"):
            traceback.print_exc()
        err.print(f"tunegrade: internal error: {type(exc).__name__}: {exc} (set TUNEGRADE_DEBUG=1 for the traceback)", markup=False)
        return 1
    return code if isinstance(code, int) else 0  # click returns an Exit's code here


def entry() -> None:
    sys.exit(main())
