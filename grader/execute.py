"""Run stage: execute each run variant of the entry command in a fresh sandboxed working copy.

Inputs are mounted read-only; the output folder is the only other writable path. After the
run, the output folder is vetted before any check reads it: links, special files and
oversized trees are removed and noted, so a check can never be tricked into reading the host.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from pathlib import Path
from typing import Any

from grader.checks.base import RunArtifacts
from grader.constants import MAX_ARTIFACT_BYTES, SANDBOX_IN, SANDBOX_OUT, SANDBOX_WORK
from grader.intake import copy_tree
from grader.progress import Progress
from grader.tasks import TaskPack
from grader.telemetry import TELEMETRY_FILENAME, telemetry_env, telemetry_mounts, write_site
from sandbox import Mount, RunSpec, Sandbox, SandboxUnavailable


def run_params(pack: TaskPack, run_name: str, seed: int) -> dict[str, Any]:
    """Task params overlaid with the run's own, plus the run's seed."""
    variant = next(r for r in pack.spec.runs if r.name == run_name)
    return {**pack.spec.params, **variant.params, "seed": seed + variant.seed_offset}


def build_argv(entry: str, values: dict[str, Any]) -> list[str]:
    """Split first, then fill placeholders per token, so a path with spaces stays one argument."""
    return [token.format(**values) for token in shlex.split(entry)]


def vet_artifacts(out_dir: Path) -> list[str]:
    """Remove what a check must never follow (links, devices, fifos), clear setuid/setgid bits and
    cap the total size. The run's files belong to the grader's user on the host (root, with local's
    uid mapping): a setuid file left in the result folder would hand that user to whoever runs it."""
    notes: list[str] = []
    total = 0
    for path in sorted(out_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        st = path.lstat()
        rel = path.relative_to(out_dir)
        if stat.S_ISLNK(st.st_mode):
            notes.append(f"removed symlink {rel} -> {path.readlink()}")
            path.unlink()
        elif stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                notes.append(f"removed hard-linked file {rel}")
                path.unlink()
                continue
            total += st.st_size
            _clear_setid(path, st, rel, notes)
        elif stat.S_ISDIR(st.st_mode):
            _clear_setid(path, st, rel, notes)
        else:
            notes.append(f"removed special file {rel}")
            path.unlink()
    if total > MAX_ARTIFACT_BYTES:
        notes.append(f"outputs total {total >> 20} MiB, over the {MAX_ARTIFACT_BYTES >> 20} MiB cap: discarded")
        shutil.rmtree(out_dir)
        out_dir.mkdir()
    return notes


def _clear_setid(path: Path, st: os.stat_result, rel: Path, notes: list[str]) -> None:
    """Call it on the run's own files only: hard links (whose mode is also the host file's) are removed before."""
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        path.chmod(stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
        notes.append(f"cleared the setuid/setgid bits of {rel}")


def execute_runs(
    pack: TaskPack,
    submission: Path,
    inputs: dict[str, Path],
    sandbox: Sandbox,
    seed: int,
    runs_dir: Path,
    scratch: Path,
    only: list[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, RunArtifacts]:
    """Run every variant (or those in ``only``); a sandbox failure is recorded on the run, never blamed on the candidate."""
    progress = progress or Progress()
    in_mounts = {name: Mount(source=path, target=f"{SANDBOX_IN}/{name}") for name, path in inputs.items()}
    results: dict[str, RunArtifacts] = {}
    for variant in pack.spec.runs:
        if only is not None and variant.name not in only:
            continue
        log_dir = runs_dir / variant.name
        out_dir = log_dir / "out"
        work = scratch / "work" / variant.name
        if log_dir.exists():
            shutil.rmtree(log_dir)
        out_dir.mkdir(parents=True)
        copy_tree(submission, work)
        out_mount = Mount(source=out_dir, target=SANDBOX_OUT, writable=True)
        mounts, env, telemetry_file = [*in_mounts.values(), out_mount], {}, None
        if pack.spec.telemetry:
            # Outside the working copy and the output folder, so the outputs stay the candidate's alone.
            site, tel = telemetry_mounts(log_dir)
            tel.source.mkdir()
            write_site(site.source, f"{sandbox.path_for(tel)}/{TELEMETRY_FILENAME}")
            mounts += [site, tel]
            env = telemetry_env(sandbox.path_for(site))
            telemetry_file = tel.source / TELEMETRY_FILENAME
        values = {name: sandbox.path_for(m) for name, m in in_mounts.items()}
        values |= run_params(pack, variant.name, seed) | {"out": sandbox.path_for(out_mount)}
        argv = build_argv(pack.spec.entry_of(variant.name), values)
        spec = RunSpec(
            argv=argv,
            workdir=Mount(source=work, target=SANDBOX_WORK, writable=True),
            mounts=mounts,
            env=env,
            limits=pack.spec.limits,
            log_dir=log_dir,
        )
        progress.run_started(variant.name, pack.spec.limits.wall_time_s, log_dir)
        try:
            result = sandbox.run(spec)
        except SandboxUnavailable as exc:
            progress.run_finished(variant.name, None, log_dir)
            results[variant.name] = RunArtifacts(variant.name, argv, out_dir, None, infra_error=str(exc))
            continue
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if pack.spec.telemetry:
                shutil.rmtree(site.source, ignore_errors=True)
        progress.run_finished(variant.name, result, log_dir)
        notes = result.notes + vet_artifacts(out_dir)
        results[variant.name] = RunArtifacts(variant.name, argv, out_dir, result, notes=notes, telemetry_path=telemetry_file)
    return results
