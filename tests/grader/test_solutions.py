"""Reference solutions stored as patches (grader/solutions.py) and `tunegrade solutions`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from grader.cli import main
from grader.errors import BadInput
from grader.solutions import FLAW_FILE, PATCH_FILE, list_solutions, materialise
from grader.tasks import discover

PACKS = discover([])
FLAWS = [(task, sol.name) for task, pack in sorted(PACKS.items()) for sol in list_solutions(pack) if sol.check]
FIXTURE_TASKS = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Each file under root: its bytes and permission bits."""
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777)
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def _changed_lines(patch: str) -> list[str]:
    """The lines a unified diff removes and adds, without headers, hunk positions or blob ids."""
    return [line for line in patch.splitlines() if line[:1] in "+-" and not line.startswith(("+++ ", "--- "))]


def _git_diff(old: Path, new: Path, scratch: Path) -> str:
    """`git diff --no-index` of two solution folders, written as a flaw.patch is (a/x.py, b/x.py)."""
    for side, src in (("a", old), ("b", new)):
        shutil.copytree(src, scratch / side, ignore=shutil.ignore_patterns("__pycache__", FLAW_FILE))
    proc = subprocess.run(["git", "diff", "--no-index", "--src-prefix=", "--dst-prefix=", "a", "b"],
                          capture_output=True, text=True, cwd=scratch, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout


@pytest.mark.parametrize("case", FLAWS, ids="/".join)
def test_flaw_patch_applies_and_changes_good_only_as_it_says(case: tuple[str, str], tmp_path: Path) -> None:
    task, name = case
    pack = PACKS[task]
    flaw, good = pack.dir / "solutions" / name, pack.dir / "solutions" / "good"
    assert sorted(p.name for p in flaw.iterdir()) == [FLAW_FILE, PATCH_FILE]
    out = materialise(pack, name, tmp_path / "sub")
    patch = (flaw / PATCH_FILE).read_text(encoding="utf-8")
    touched = {line.split(" b/", 1)[1] for line in patch.splitlines() if line.startswith("diff --git ")}
    before, after = _files(good), _files(out)
    assert after.pop(FLAW_FILE)[0] == (flaw / FLAW_FILE).read_bytes()
    assert {f: v for f, v in after.items() if f not in touched} == {f: v for f, v in before.items() if f not in touched}
    assert all(after.get(f) != before.get(f) for f in touched)
    fresh = _git_diff(good, out, tmp_path / "diff")
    assert _changed_lines(fresh) == _changed_lines(patch), "flaw.patch is not the minimal diff from good/"


def test_every_flaw_names_one_of_its_tasks_checks() -> None:
    for task, name in FLAWS:
        sol = next(s for s in list_solutions(PACKS[task]) if s.name == name)
        assert sol.check in {c.id for c in PACKS[task].spec.checks}, (task, name, sol.check)


def test_good_materialises_as_a_copy(tmp_path: Path) -> None:
    pack = PACKS["data-prep"]
    out = materialise(pack, "good", tmp_path / "good")
    assert _files(out) == _files(pack.dir / "solutions" / "good")


@pytest.fixture
def echo_pack(tmp_path: Path):
    """A copy of the echo fixture pack, to which a test adds flaws."""
    root = tmp_path / "tasks"
    shutil.copytree(FIXTURE_TASKS / "echo", root / "echo")

    def add_flaw(name: str, flaw_md: str, patch: str | None) -> Path:
        folder = root / "echo" / "solutions" / name
        folder.mkdir()
        (folder / FLAW_FILE).write_text(flaw_md, encoding="utf-8")
        if patch is not None:
            (folder / PATCH_FILE).write_text(patch, encoding="utf-8")
        return folder

    return root, add_flaw


def test_patch_that_does_not_apply_is_a_clear_error_and_leaves_nothing(echo_pack, tmp_path: Path) -> None:
    root, add_flaw = echo_pack
    add_flaw("flawed-stale", "check: echoed\n", "--- a/main.py\n+++ b/main.py\n@@ -1,1 +1,1 @@\n-no such line\n+x\n")
    pack = discover([root])["echo"]
    with pytest.raises(BadInput, match=r"flawed-stale/flaw.patch does not apply to good/: .*main.py"):
        materialise(pack, "flawed-stale", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_patch_cannot_write_outside_the_submission(echo_pack, tmp_path: Path) -> None:
    root, add_flaw = echo_pack
    add_flaw("flawed-escape", "check: echoed\n", "--- /dev/null\n+++ b/../escaped.py\n@@ -0,0 +1 @@\n+x\n")
    with pytest.raises(BadInput, match="does not apply"):
        materialise(discover([root])["echo"], "flawed-escape", tmp_path / "out")
    assert not (tmp_path / "escaped.py").exists()


def test_patch_ignores_git_config_and_repositories_around_it(echo_pack, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`apply.whitespace = fix` in a user's config would strip the trailing space the patch adds."""
    root, add_flaw = echo_pack
    good = (root / "echo" / "solutions" / "good" / "main.py").read_text(encoding="utf-8").splitlines()
    patch = f"--- a/main.py\n+++ b/main.py\n@@ -1 +1,2 @@\n+# trailing space \n {good[0]}\n"
    add_flaw("flawed-space", "check: echoed\n", patch)
    config = tmp_path / "gitconfig"
    config.write_text("[apply]\n\twhitespace = fix\n", encoding="utf-8")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # a repository above the destination
    out = materialise(discover([root])["echo"], "flawed-space", tmp_path / "in-repo" / "out")
    assert (out / "main.py").read_text(encoding="utf-8").splitlines()[:2] == ["# trailing space ", good[0]]


def test_flaw_folder_needs_a_patch_and_a_check_line(echo_pack) -> None:
    root, add_flaw = echo_pack
    add_flaw("flawed-nopatch", "check: echoed\n", None)
    with pytest.raises(BadInput, match="flawed-nopatch: a flawed solution is FLAW.md and flaw.patch; flaw.patch is missing"):
        list_solutions(discover([root])["echo"])
    shutil.rmtree(root / "echo" / "solutions" / "flawed-nopatch")
    add_flaw("flawed-noline", "Forgets the check line.\n", "")
    with pytest.raises(BadInput, match="FLAW.md: the first line must be 'check: <id>'"):
        list_solutions(discover([root])["echo"])


def test_a_flaw_may_name_the_cohort_that_shows_it(echo_pack, capsys) -> None:
    root, add_flaw = echo_pack
    add_flaw("flawed-only-some", "check: echoed\ncohort: fixture-b\n\nOnly cohort b's input shows it.\n", "")
    add_flaw("flawed-everywhere", "check: echoed\n\ncohort: is prose here, not the second line.\n", "")
    flaws = {s.name: s for s in list_solutions(discover([root])["echo"]) if s.check}
    assert (flaws["flawed-only-some"].cohort, flaws["flawed-everywhere"].cohort) == ("fixture-b", None)
    code, out, _ = run(capsys, "solutions", "ab-and-cost")
    assert code == 0 and "ab-decision (on a cohort like corpus-cohort-b)" in out


def test_unknown_solution_and_busy_destination(tmp_path: Path) -> None:
    pack = PACKS["data-prep"]
    with pytest.raises(BadInput, match=r"task data-prep has no solution 'flawed-nope' \(known: good, flawed-html, "):
        materialise(pack, "flawed-nope", tmp_path / "a")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(BadInput, match="busy exists and is not an empty folder"):
        materialise(pack, "flawed-html", tmp_path / "busy")
    assert os.listdir(tmp_path / "busy") == ["keep.txt"]


# -- the command line --------------------------------------------------------------------------

def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_solutions_lists_each_flaw_with_its_check(capsys) -> None:
    code, out, _ = run(capsys, "solutions", "data-prep")
    assert code == 0
    rows = [[cell.strip() for cell in line.split("│")] for line in out.splitlines()[2:]]
    assert rows[0] == ["good", "good", ""]
    assert ["flawed-html", "flawed", "html-stripped"] in rows
    assert ["flawed-lying-stats", "flawed", "stats-accurate"] in rows
    assert [r[0] for r in rows] == [s.name for s in list_solutions(PACKS["data-prep"])]


def test_solutions_writes_the_full_submission(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "solutions", "data-prep", "flawed-html", str(tmp_path / "sub"))
    assert code == 0, err
    assert err.strip() == f"wrote data-prep solution flawed-html to {tmp_path / 'sub'}"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [FLAW_FILE, "prepare.py"]


def test_solutions_errors_are_one_line(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "solutions", "data-prep", "flawed-html")
    assert code == 2 and err.strip() == ("tunegrade: error: DEST is required with NAME "
                                         "(the folder to write the submission into)")
    code, _, err = run(capsys, "solutions", "data-prep", "flawed-nope", str(tmp_path / "x"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "has no solution 'flawed-nope'" in err


@pytest.mark.parametrize("command", ["grade", "check"])
def test_grading_a_patch_folder_points_at_solutions(command: str, capsys, tmp_path: Path) -> None:
    flaw = PACKS["data-prep"].dir / "solutions" / "flawed-html"
    code, out, err = run(capsys, command, str(flaw), "--task", "data-prep", "--out", str(tmp_path / "o"))
    assert code == 2 and not out
    assert err.strip() == (f"tunegrade: error: {flaw} holds a flaw as a patch against ../good, not a submission; "
                           "write the submission with `tunegrade solutions data-prep flawed-html DEST` and grade DEST")
    assert not (tmp_path / "o").exists()
