"""A task's reference solutions: good ones as full folders, each flaw as a patch against good/.

``solutions/good*/`` are complete submissions. ``solutions/flawed-*/`` hold ``FLAW.md`` (first
line ``check: <id>``: the check that must catch the flaw; an optional second line ``cohort: <hidden
seed>`` for a flaw that shows only on some cohorts, e.g. pooling the days of an A/B test only misleads
where the effect fades) and ``flaw.patch``, a unified diff
against ``../good``, so a reader sees the flaw in a few lines instead of hunting for it in a full
copy. :func:`materialise` writes the full submission that the tests and ``tunegrade solutions``
need, applying the patch with ``git apply``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from grader.errors import BadInput, GraderFault
from grader.tasks import TaskPack

SOLUTIONS_DIR = "solutions"
BASE = "good"
FLAW_PREFIX = "flawed-"
FLAW_FILE = "FLAW.md"
PATCH_FILE = "flaw.patch"
CHECK_LINE = "check: "
COHORT_LINE = "cohort: "
GIT_TIMEOUT_S = 60


@dataclass(frozen=True)
class Solution:
    """One reference solution; ``check`` is set for a flaw (the check that must catch it), ``cohort`` for
    a flaw that only a cohort like that hidden seed's shows."""

    name: str
    dir: Path
    check: str | None = None
    cohort: str | None = None


def _flaw(folder: Path) -> Solution:
    for name in (FLAW_FILE, PATCH_FILE):
        if not (folder / name).is_file():
            raise BadInput(f"{folder}: a flawed solution is {FLAW_FILE} and {PATCH_FILE}; {name} is missing")
    lines = (folder / FLAW_FILE).read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith(CHECK_LINE) or not lines[0].removeprefix(CHECK_LINE).strip():
        raise BadInput(f"{folder / FLAW_FILE}: the first line must be '{CHECK_LINE}<id>'")
    cohort = lines[1].removeprefix(COHORT_LINE).strip() if len(lines) > 1 and lines[1].startswith(COHORT_LINE) else None
    return Solution(folder.name, folder, lines[0].removeprefix(CHECK_LINE).strip(), cohort or None)


def list_solutions(pack: TaskPack) -> list[Solution]:
    """The pack's good* solutions, then its flawed-* ones, each by name."""
    root = pack.dir / SOLUTIONS_DIR
    folders = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    folders.sort(key=lambda p: (not p.name.startswith(BASE), p.name))
    return [_flaw(p) if p.name.startswith(FLAW_PREFIX) else Solution(p.name, p)
            for p in folders if p.name.startswith((BASE, FLAW_PREFIX))]


def _git_apply(patch: Path, root: Path) -> None:
    """Apply ``patch`` inside ``root`` as a plain folder: no repository above it, no user or system
    git config (``apply.whitespace = fix`` would change the bytes), nothing outside ``root``."""
    git = shutil.which("git")
    if git is None:
        raise GraderFault(f"git is needed to apply {patch}; install git")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env |= {"GIT_CEILING_DIRECTORIES": str(root.parent), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    proc = subprocess.run([git, "apply", "--whitespace=nowarn", str(patch)], cwd=root, env=env, check=False,
                          capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    if proc.returncode != 0:
        why = " ".join(proc.stderr.split()) or f"git apply exited with status {proc.returncode}"
        raise BadInput(f"{patch} does not apply to {BASE}/: {why}")


def materialise(pack: TaskPack, name: str, dest: Path) -> Path:
    """Write solution ``name`` of ``pack`` into ``dest`` (absent or empty) as a full submission:
    good/ itself, or for a flaw good/ with flaw.patch applied, plus its FLAW.md."""
    solutions = {s.name: s for s in list_solutions(pack)}
    if name not in solutions:
        raise BadInput(f"task {pack.id} has no solution {name!r} (known: {', '.join(solutions) or 'none'})")
    dest = Path(dest).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BadInput(f"{dest} exists and is not an empty folder")
    sol = solutions[name]
    base = sol.dir if sol.check is None else pack.dir / SOLUTIONS_DIR / BASE
    if not base.is_dir():
        raise BadInput(f"task {pack.id}: {name} is a patch against {BASE}/, which is missing")
    try:
        shutil.copytree(base, dest, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        if sol.check is not None:
            _git_apply((sol.dir / PATCH_FILE).resolve(), dest)
            shutil.copy2(sol.dir / FLAW_FILE, dest / FLAW_FILE)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def refuse_patch_folder(submission: Path, task: str) -> None:
    """A flaw's own folder holds a patch, not a submission: say how to get the submission."""
    if submission.is_dir() and (submission / PATCH_FILE).is_file() and (submission / FLAW_FILE).is_file():
        raise BadInput(f"{submission} holds a flaw as a patch against ../{BASE}, not a submission; write the "
                       f"submission with `tunegrade solutions {task} {submission.name} DEST` and grade DEST")
