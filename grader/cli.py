"""The tunegrade command line: thin commands that parse, call one pipeline function, and print.

Exit codes: 0 graded (whatever the score), 1 grader or infrastructure fault (the result is
still written, with the errors shown apart), 2 bad input or usage, 3 the self-check found
failing checks. Messages go to stderr; --json goes to stdout.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from grader.constants import DEFAULT_BACKEND, DEFAULT_BASE_MODEL, DEFAULT_SEED, REPORT_FILE, RESULT_FILE, TASK_MARKER, TASKS_ENV
from grader.errors import BadInput, GraderFault, TunegradeError
from grader.export import export_task
from grader.pipeline import GradeRequest, grade
from grader.report import render_all, render_report, slug
from grader.result import Result, load_result
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
_device = click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
                       help="Where the grader's own evaluation runs.")


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
def check_cmd(submission: Path, task: str | None, out_dir: Path | None, backend: str, gpus: str | None,
              image: str | None, seed: int, base_model: str, device: str, time_scale: float,
              memory_scale: float, allow_reduced_isolation: bool) -> None:
    """Self-check: run the visible checks on the public data (exit 3 if one does not pass)."""
    pack = get_task(_task_for(submission, task), _tasks_dirs())
    refuse_patch_folder(submission, pack.id)
    target = out_dir or Path("graded") / slug(f"self-check-{submission.resolve().name}")
    result = grade(GradeRequest(pack=pack, source=submission, out=target, backend=backend,
                                backend_options=_backend_options(gpus, image), seed=seed, public=True,
                                base_model=base_model, device=device, time_scale=time_scale,
                                memory_scale=memory_scale, allow_reduced_isolation=allow_reduced_isolation))
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
@click.option("--hidden-seed", envvar="TUNEGRADE_HIDDEN_SEED", help="Secret seed of this cohort's hidden inputs.")
@click.option("--role", help="Rubric role (default: the task's first role).")
@_base_model
@_device
@_time_scale
@_memory_scale
@_allow_reduced
@click.option("--json", "as_json", is_flag=True, help="Print result.json to stdout.")
def grade_cmd(submission: Path, task: str, out_dir: Path | None, candidate: str | None, backend: str,
              gpus: str | None, image: str | None, seed: int, ref: str | None, hidden_seed: str | None,
              role: str | None, base_model: str, device: str, time_scale: float, memory_scale: float,
              allow_reduced_isolation: bool, as_json: bool) -> None:
    """Grade SUBMISSION (folder, .tar.gz/.tgz/.zip, or git repo) on hidden inputs."""
    pack = get_task(task, _tasks_dirs())
    refuse_patch_folder(submission, pack.id)
    name = candidate or (submission.name.split(".")[0] if submission.is_file() else submission.resolve().name)
    target = out_dir or Path("graded") / slug(name)
    result = grade(
        GradeRequest(
            pack=pack, source=submission, out=target, candidate=candidate, backend=backend,
            backend_options=_backend_options(gpus, image), seed=seed, ref=ref, hidden_seed=hidden_seed, role=role,
            base_model=base_model, device=device, time_scale=time_scale, memory_scale=memory_scale,
            allow_reduced_isolation=allow_reduced_isolation,
        )
    )
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
            table.add_row(sol.name, "good" if sol.check is None else "flawed", sol.check or "")
        _stdout().print(table)
        return
    if dest is None:
        raise click.UsageError("DEST is required with NAME (the folder to write the submission into)")
    err.print(f"wrote {task} solution {name} to {materialise(pack, name, dest)}")


@app.command("report")
@click.argument("results", nargs=-1, required=True, type=PathArg)
@click.option("--out", "out_dir", required=True, type=PathArg, help="Folder for the rendered pages.")
def report_cmd(results: tuple[Path, ...], out_dir: Path) -> None:
    """Re-render reports (and a cohort page for several) from stored result.json files or folders."""
    loaded = [load_result(p / RESULT_FILE if p.is_dir() else p) for p in results]
    for path in render_all(loaded, out_dir):
        _stdout().print(str(path))


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
