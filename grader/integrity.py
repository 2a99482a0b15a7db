"""Integrity flags for a cohort: pairs of submissions of one task whose code is suspiciously alike.

Code is compared by winnowing fingerprints (copydetect): identifiers, strings and comments are
normalised away before fingerprinting, so renaming variables or rewording comments does not hide a copy,
and fingerprints of the task's starter code are discarded, so what every candidate was given is never
evidence. The code is hostile input: everything here is plain text, escaped only when rendered.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:  # copydetect imports matplotlib (1.5 s): loaded only when code is compared
    from copydetect import CodeFingerprint

CODE_SUFFIXES = (".py", ".sh", ".yaml", ".yml")
MAX_FILE_BYTES = 256 * 1024
"""Larger files are not code a candidate wrote by hand (and would slow the comparison); they are skipped."""
NOISE = 25
"""copydetect's noise threshold: matches shorter than this many normalised characters are ignored."""
WINDOW = 1
"""copydetect's winnowing window (guarantee threshold - noise + 1, its defaults): every k-gram is kept."""
SIMILARITY_THRESHOLD = 0.85
"""A pair is flagged when at least this share of either submission's own code (beyond the starter) is found
in the other. Calibrated on the tasks' reference solutions, whose good ones are different solutions of one
task written from the same starter by one author: they share at most 0.73 (lora-sft good-trl in good; 0.60
sft-dpo, 0.26 qlora-tune). A copy of good with identifiers renamed, comments reworded and imports swapped
keeps 0.98-1.00; with docstrings and comments removed, every function moved and junk lines inserted, 0.96-0.99
(0.89 or more both ways)."""
MIN_COPIED = 200
"""Fewer copied normalised characters than this are never a flag, whatever the share: a submission that
adds a few lines to the starter shares them with anyone who wrote the obvious lines."""


class Segment(BaseModel):
    """A run of a file's text, copied (found in the other file of the pair) or not."""

    text: str
    copied: bool


class FileMatch(BaseModel):
    """The best-matching files of a flagged pair, with their similar passages marked."""

    left: str
    right: str
    similarity: tuple[float, float]
    left_segments: list[Segment]
    right_segments: list[Segment]


class SimilarPair(BaseModel):
    """Two submissions of one task and the share of each one's own code found in the other."""

    task: str
    left: str
    right: str
    similarity: float
    shares: tuple[float, float]
    files: list[FileMatch]


@dataclass(frozen=True)
class Submission:
    """A submission's code: ``key`` names it on the page, ``folder`` holds the submitted files."""

    key: str
    task: str
    folder: Path


def code_files(folder: Path) -> dict[str, str]:
    """The folder's code files (by relative path) that are worth comparing; symlinks are not followed."""
    files: dict[str, str] = {}
    if not folder.is_dir():
        return files
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if (path.is_symlink() or not path.is_file() or path.suffix not in CODE_SUFFIXES
                or any(part.startswith(".") or part == "__pycache__" for part in rel.parts)
                or path.stat().st_size > MAX_FILE_BYTES):
            continue
        files[rel.as_posix()] = path.read_bytes().decode("utf-8", errors="replace")
    return files


def _fingerprint(name: str, code: str, starter: frozenset[int] = frozenset()) -> CodeFingerprint:
    """copydetect's fingerprint of one file without the starter's hashes. They are removed here, as a set
    difference, because copydetect's own boilerplate filter (np.intersect1d with assume_unique) also drops
    fingerprints that merely occur twice in the file."""
    from copydetect import CodeFingerprint
    from copydetect.utils import get_token_coverage

    fp = CodeFingerprint(name, NOISE, WINDOW, fp=io.StringIO(code))
    if starter:
        fp.hashes -= starter
        fp.hash_idx = {h: i for h, i in fp.hash_idx.items() if h not in starter}
        fp.token_coverage = get_token_coverage(fp.hash_idx, NOISE, len(fp.filtered_code))
    return fp


def boilerplate(starter: Path) -> frozenset[int]:
    """Fingerprints of a task's starter code: what every candidate was given."""
    return frozenset(h for name, code in code_files(starter).items() for h in _fingerprint(name, code).hashes)


def fingerprints(folder: Path, starter: frozenset[int] = frozenset()) -> dict[str, CodeFingerprint]:
    """Each code file's fingerprint, by relative path, beyond the starter's."""
    return {name: _fingerprint(name, code, starter) for name, code in code_files(folder).items()}


def segments(text: str, slices: Any) -> list[Segment]:
    """``text`` cut at copydetect's copied slices (a 2xN array of starts and ends), in order."""
    out: list[Segment] = []
    pos = 0
    for start, end in sorted(zip(slices[0].tolist(), slices[1].tolist())):
        start, end = max(int(start), pos), min(int(end), len(text))
        if start >= end:
            continue
        if start > pos:
            out.append(Segment(text=text[pos:start], copied=False))
        if out and out[-1].copied and start == pos:  # overlapping or touching slices: one passage
            out[-1] = Segment(text=out[-1].text + text[start:end], copied=True)
        else:
            out.append(Segment(text=text[start:end], copied=True))
        pos = end
    if pos < len(text):
        out.append(Segment(text=text[pos:], copied=False))
    return out


def compare(task: str, left: str, right: str,
            fps: tuple[dict[str, CodeFingerprint], dict[str, CodeFingerprint]]) -> SimilarPair:
    """How much of each submission's own code is found in the other: for each of its files, the copied
    characters of its best-matching file in the other, summed, over all its fingerprinted characters;
    with each left file and its best match cut into copied and other passages."""
    from copydetect import compare_files

    copied, covered = [0, 0], [0.0, 0.0]
    files = []
    for side, (mine, theirs) in enumerate((fps, fps[::-1])):
        for name, fp in mine.items():
            covered[side] += fp.token_coverage
            matches = [(compare_files(fp, other), other_name) for other_name, other in theirs.items()]
            (overlap, sims, slices), other_name = max(matches, key=lambda m: m[0][0], default=((0, (0, 0), None), ""))
            copied[side] += int(overlap)
            if side == 0 and overlap:
                files.append(FileMatch(left=name, right=other_name,
                                       similarity=(round(float(sims[0]), 3), round(float(sims[1]), 3)),
                                       left_segments=segments(fp.raw_code, slices[0]),
                                       right_segments=segments(theirs[other_name].raw_code, slices[1])))
    shares = (round(copied[0] / covered[0], 3) if covered[0] else 0.0,
              round(copied[1] / covered[1], 3) if covered[1] else 0.0)
    similarity = max(shares) if min(copied) >= MIN_COPIED else 0.0
    return SimilarPair(task=task, left=left, right=right, similarity=similarity, shares=shares,
                       files=sorted(files, key=lambda f: -max(f.similarity)))


def similar_pairs(submissions: list[Submission], starters: dict[str, Path],
                  threshold: float = SIMILARITY_THRESHOLD) -> list[SimilarPair]:
    """Flagged pairs, most similar first. Only submissions of the same task are compared, each beyond that
    task's starter (``starters`` by task id; a task without one has no boilerplate)."""
    flagged = []
    for task in sorted({s.task for s in submissions}):
        starter = boilerplate(starters[task]) if task in starters else frozenset()
        group = sorted((s for s in submissions if s.task == task), key=lambda s: s.key)
        fps = {s.key: fingerprints(s.folder, starter) for s in group}
        pairs = (compare(task, a.key, b.key, (fps[a.key], fps[b.key])) for a, b in combinations(group, 2))
        flagged += [pair for pair in pairs if pair.similarity >= threshold]
    return sorted(flagged, key=lambda p: -p.similarity)
