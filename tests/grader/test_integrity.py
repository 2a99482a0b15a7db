"""Similar-code flags (grader/integrity.py): a disguised copy is flagged, honest different solutions and the
starter are not, and the code reaches the side-by-side page only as escaped text."""

from __future__ import annotations

import re
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from grader.integrity import (
    SIMILARITY_THRESHOLD,
    Submission,
    boilerplate,
    code_files,
    compare,
    fingerprints,
    segments,
    similar_pairs,
)
from grader.report import render_all
from grader.result import load_result
from grader.tasks import discover

PACKS = discover([])
STARTERS = {task_id: pack.dir / "starter" for task_id, pack in PACKS.items()}
RESULT = Path(__file__).resolve().parents[1] / "fixtures" / "results" / "data-prep-good.json"


def near_copy(text: str) -> str:
    """What a copier does to hide a copy: rename identifiers, reword every comment, swap two imports."""
    for old, new in (("tokenizer", "tok"), ("records", "examples"), ("rows", "items"), ("path", "fpath"),
                     ("args", "opts"), ("model", "net")):
        text = re.sub(rf"\b{old}\b", new, text)
    text = re.sub(r"#[^\n]*", "# my own note", text)
    lines = text.splitlines()
    imports = [i for i, line in enumerate(lines) if line.startswith("import ")]
    lines[imports[0]], lines[imports[-1]] = lines[imports[-1]], lines[imports[0]]
    return "\n".join(lines) + "\n"


def submission(tmp_path: Path, key: str, task: str, files: dict[str, str]) -> Submission:
    folder = tmp_path / key
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return Submission(key=key, task=task, folder=folder)


def test_a_near_copy_is_flagged(tmp_path: Path) -> None:
    good = PACKS["lora-sft"].dir / "solutions" / "good"
    copy = submission(tmp_path, "copier", "lora-sft", {n: near_copy(t) for n, t in code_files(good).items()})
    pairs = similar_pairs([Submission("author", "lora-sft", good), copy], STARTERS)
    assert [(p.left, p.right) for p in pairs] == [("author", "copier")]
    assert pairs[0].similarity >= SIMILARITY_THRESHOLD and min(pairs[0].shares) > 0.9
    match = pairs[0].files[0]
    assert (match.left, match.right) == ("train.py", "train.py")
    assert "".join(s.text for s in match.right_segments) == (copy.folder / "train.py").read_text()
    assert any(s.copied and "opts" in s.text for s in match.right_segments)  # renamed, still found


@pytest.mark.parametrize("task", sorted(PACKS))
def test_different_good_solutions_are_not_flagged(task: str) -> None:
    goods = sorted((PACKS[task].dir / "solutions").glob("good*"))
    subs = [Submission(g.name, task, g) for g in goods]
    assert similar_pairs(subs, STARTERS) == []
    if task == "lora-sft":  # the calibration's closest honest pair: below the threshold, but not by chance
        starter = boilerplate(STARTERS[task])
        fps = [fingerprints(s.folder, starter) for s in subs]
        for (a, fa), (b, fb) in combinations(zip(subs, fps), 2):
            assert 0.3 < compare(task, a.key, b.key, (fa, fb)).similarity < SIMILARITY_THRESHOLD


def test_starter_code_is_not_evidence(tmp_path: Path) -> None:
    starter = code_files(STARTERS["lora-sft"])
    tweaked = {n: t.replace("def main", "# left as given\ndef main") for n, t in starter.items()}
    subs = [submission(tmp_path, "a", "lora-sft", starter), submission(tmp_path, "b", "lora-sft", tweaked)]
    assert similar_pairs(subs, STARTERS) == []
    assert compare("lora-sft", "a", "b", tuple(fingerprints(s.folder, boilerplate(STARTERS["lora-sft"]))
                                                for s in subs)).similarity == 0  # type: ignore[arg-type]


def test_only_submissions_of_the_same_task_are_compared(tmp_path: Path) -> None:
    good = PACKS["lora-sft"].dir / "solutions" / "good"
    other = submission(tmp_path, "other", "sft-dpo", code_files(good))
    assert similar_pairs([Submission("author", "lora-sft", good), other], STARTERS) == []


def test_only_code_files_are_read(tmp_path: Path) -> None:
    sub = submission(tmp_path, "s", "lora-sft", {"a.py": "x = 1\n", "notes.txt": "hi", "run.sh": "echo\n"})
    (sub.folder / "__pycache__").mkdir()
    (sub.folder / "__pycache__" / "a.py").write_text("y = 2\n")
    (sub.folder / "link.py").symlink_to(sub.folder / "a.py")
    assert sorted(code_files(sub.folder)) == ["a.py", "run.sh"]


def test_segments_cover_the_text_in_order() -> None:
    parts = segments("abcdefghij", np.array([[6, 2, 7], [8, 4, 12]]))
    assert [(s.text, s.copied) for s in parts] == [("ab", False), ("cd", True), ("ef", False), ("ghij", True)]


def test_hostile_code_is_escaped_on_the_side_by_side_page(tmp_path: Path) -> None:
    good = PACKS["data-prep"].dir / "solutions" / "good"
    code = code_files(good)["prepare.py"]
    hostile = code.replace('"""Turn', '"""</pre><script>alert(1)</script><img src=x onerror=alert(2)> Turn', 1)
    assert hostile != code
    result = load_result(RESULT)
    results, folders = [], []
    for name, text in (("ada", hostile), ("bob", near_copy(hostile))):
        folder = tmp_path / "results" / name
        (folder / "submission").mkdir(parents=True)
        (folder / "submission" / "prepare.py").write_text(text)
        results.append(result.model_copy(update={"candidate": f"{name}<script>"}))
        folders.append(folder)
    written = render_all(results, tmp_path / "out", folders=folders, starters=STARTERS)
    page = next(p for p in written if p.name.startswith("similar-"))
    assert page.name == "similar-ada-script--data-prep-bob-script--data-prep.html"
    html = page.read_text()
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert "<script" not in html and "<img" not in html and "<mark>" in html
    index = (tmp_path / "out" / "index.html").read_text()
    assert 'href="similar-ada-script--data-prep-bob-script--data-prep.html"' in index
    assert index.count("<script") == 1 and "ada&lt;script&gt;" in index


def test_folders_missing_code_are_named_not_compared(tmp_path: Path) -> None:
    result = load_result(RESULT)
    results = [result.model_copy(update={"candidate": n}) for n in ("ada", "bob")]
    render_all(results, tmp_path / "out", folders=[tmp_path / "none", None], starters=STARTERS)
    index = (tmp_path / "out" / "index.html").read_text()
    assert "not compared" in index and "ada-data-prep, bob-data-prep" in index
    shutil.rmtree(tmp_path / "out")
    render_all(results, tmp_path / "out")
    assert "the result folders were not given" in (tmp_path / "out" / "index.html").read_text()
