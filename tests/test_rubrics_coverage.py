"""The rubrics against their sources: the seed level descriptions and the task packs.

* Each level's ``description`` is the seed text for that role and level, character for character.
* The competency quotes of a level cover its whole description (see ``uncovered`` below).
* Every ``checks`` entry ``task/check`` names a check declared in ``tasks/<task>/task.yaml``.

Phrases. A description is split into sentences (at ". "), and each sentence into clauses at
``:``, ``,``, ``;`` and the word ``and``; those clauses are the phrases. A phrase's *content
words* are its runs of letters and digits, lower-cased, less a short stopword list (articles,
prepositions, ``and``/``or``/``vs``). A phrase is covered when every one of its content words
lies inside the span of some competency quote of that level (quotes are verbatim substrings of
the description, so each occurrence has a position). This is stricter than "the word appears in
some quote": "fine-tuning" quoted in one sentence does not cover "fine-tuning" in another.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from grader.rubric import Rubric, RubricLevel, load_rubrics
from grader.taskspec import LEVELS

REPO = Path(__file__).resolve().parents[1]
SEED = Path(__file__).resolve().parents[2] / "shared/seed/level-descriptions.txt"
ROLE_NAMES = {"Data Scientist": "data-scientist", "LLM Engineer": "llm-engineer"}
FLAG_CELLS = {"required", "optional", ""}
STOPWORDS = frozenset(
    "a an and are as at be by for from in into is of on or the their through to under using via vs with".split()
)
WORD = re.compile(r"[A-Za-z0-9]+")
SEPARATOR = re.compile(r"\.(?=\s|$)|[:;,]|\band\b")


def parse_seed(text: str) -> dict[str, list[str]]:
    """{role: [junior, middle, senior, lead, principal descriptions]} from the seed's tables.

    Only table rows count (lines starting with ``|``); header and ``|---|`` rows are skipped.
    The Data Scientist rows put the description in the second column and leave the last empty,
    the LLM Engineer rows have ``Required`` before it: the description is the one cell of the row,
    besides the role, that is neither empty nor a Required/Optional flag.
    """
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        role = ROLE_NAMES.get(cells[0])
        if role is None:  # the "| Role | Required | Description |" header or a |---| rule
            continue
        texts = [c for c in cells[1:] if c.lower() not in FLAG_CELLS]
        assert len(texts) == 1, f"cannot tell the description column in seed row: {line}"
        out.setdefault(role, []).append(texts[0])
    return out


def phrases(description: str) -> list[tuple[int, int]]:
    """(start, end) of each phrase of ``description`` that has a content word."""
    spans, start = [], 0
    for sep in [*SEPARATOR.finditer(description), None]:
        end = sep.start() if sep else len(description)
        if any(w.group().lower() not in STOPWORDS for w in WORD.finditer(description, start, end)):
            spans.append((start, end))
        start = sep.end() if sep else end
    return spans


def uncovered(level: RubricLevel) -> list[str]:
    """One line per phrase with content words outside every quote of the level; [] when covered."""
    text = level.description
    covered = [False] * len(text)
    for comp in level.competencies:
        for m in re.finditer(re.escape(comp.quote), text):
            covered[m.start() : m.end()] = [True] * (m.end() - m.start())
    problems = []
    for start, end in phrases(text):
        missing = [
            w.group()
            for w in WORD.finditer(text, start, end)
            if w.group().lower() not in STOPWORDS and not all(covered[w.start() : w.end()])
        ]
        if missing:
            problems.append(f"{level.level}: {text[start:end].strip()!r} not covered: {', '.join(missing)}")
    return problems


@pytest.fixture(scope="module")
def seed() -> dict[str, list[str]]:
    assert SEED.is_file(), f"seed level descriptions missing: {SEED}"
    return parse_seed(SEED.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rubrics() -> dict[str, Rubric]:
    return load_rubrics(REPO / "rubrics")


# --- the helpers themselves ------------------------------------------------------------------


def test_parse_seed_reads_both_column_layouts() -> None:
    text = (
        "Roles\n2\n| Role | Required | Description |\n|---|---|---|\n"
        "| Data Scientist | Does A, and B. | |\n"
        "| LLM Engineer | Required | Does C: D. |\n"
    )
    assert parse_seed(text) == {"data-scientist": ["Does A, and B."], "llm-engineer": ["Does C: D."]}


def test_phrases_split_sentences_and_clauses() -> None:
    text = "Knows basics: full vs LoRA, data format. Runs cost and speed tests."
    assert [text[s:e].strip() for s, e in phrases(text)] == [
        "Knows basics",
        "full vs LoRA",
        "data format",
        "Runs cost",
        "speed tests",
    ]


def test_uncovered_reports_missing_words_by_position() -> None:
    level = RubricLevel.model_validate(
        {
            "level": "junior",
            "description": "Tunes models. Evaluates models and tunes prompts.",
            "pass_score": 70,
            "competencies": [
                {"id": "a", "title": "A", "quote": "Tunes models", "panel": True, "note": "n"},
                {"id": "b", "title": "B", "quote": "Evaluates", "panel": True, "note": "n"},
            ],
        }
    )
    # "models" and "tunes" are quoted in the first sentence, which does not cover the second.
    assert uncovered(level) == [
        "junior: 'Evaluates models' not covered: models",
        "junior: 'tunes prompts' not covered: tunes, prompts",
    ]


# --- the rubrics against the seed ------------------------------------------------------------


def test_seed_has_five_levels_per_role(seed: dict[str, list[str]]) -> None:
    assert sorted(seed) == sorted(ROLE_NAMES.values())
    assert all(len(descs) == len(LEVELS) for descs in seed.values())


def test_a_rubric_per_role(rubrics: dict[str, Rubric], seed: dict[str, list[str]]) -> None:
    assert sorted(rubrics) == sorted(seed)


@pytest.mark.parametrize("role", sorted(ROLE_NAMES.values()))
def test_descriptions_match_the_seed(role: str, rubrics: dict[str, Rubric], seed: dict[str, list[str]]) -> None:
    for level, expected in zip(rubrics[role].levels, seed[role], strict=True):
        assert level.description == expected, f"{role} {level.level}: description differs from the seed"


@pytest.mark.parametrize("role", sorted(ROLE_NAMES.values()))
def test_every_phrase_is_covered(role: str, rubrics: dict[str, Rubric]) -> None:
    problems = [p for level in rubrics[role].levels for p in uncovered(level)]
    assert not problems, f"{role}:\n" + "\n".join(problems)


@pytest.mark.parametrize("role", sorted(ROLE_NAMES.values()))
def test_weights_positive_and_levels_not_empty(role: str, rubrics: dict[str, Rubric]) -> None:
    for level in rubrics[role].levels:
        assert level.competencies, f"{role} {level.level}: no competencies"
        assert all(c.weight > 0 for c in level.competencies), f"{role} {level.level}: non-positive weight"
        assert 0 <= level.pass_score <= 100


@pytest.mark.parametrize("role", sorted(ROLE_NAMES.values()))
def test_panel_competencies_say_what_to_look_for(role: str, rubrics: dict[str, Rubric]) -> None:
    for level in rubrics[role].levels:
        for comp in level.competencies:
            assert comp.panel != bool(comp.checks), f"{role} {comp.id}: needs exactly one kind of evidence"
            if comp.panel:
                assert comp.note and comp.note.strip(), f"{role} {comp.id}: panel competency without a note"


# --- the rubrics against the task packs ------------------------------------------------------


def declared_checks(tasks: Path, task: str) -> list[str] | None:
    """Check ids declared in <tasks>/<task>/task.yaml, or None when that task pack does not exist."""
    path = tasks / task / "task.yaml"
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return [c["id"] for c in data.get("checks") or [] if isinstance(c, dict) and "id" in c]


def missing_checks(rubric: Rubric, tasks: Path) -> list[str]:
    """One line per `task/check` reference of ``rubric`` that no task pack under ``tasks`` declares."""
    problems = []
    for comp_id, task, check in rubric.check_refs():
        ids = declared_checks(tasks, task)
        if ids is None:
            problems.append(f"{comp_id}: {task}/{check}: no task pack tasks/{task}/task.yaml")
        elif check not in ids:
            problems.append(f"{comp_id}: {task}/{check}: tasks/{task}/task.yaml declares no check {check!r}")
    return problems


def test_missing_checks_reads_task_yaml(tmp_path: Path, rubrics: dict[str, Rubric]) -> None:
    rubric = rubrics["llm-engineer"]
    refs = rubric.check_refs()
    comp_id, first_task, first = refs[0]
    for task in {t for _, t, _ in refs}:
        (tmp_path / task).mkdir()
        declared = [{"id": c, "title": c} for _, t, c in refs if t == task and (t, c) != (first_task, first)]
        (tmp_path / task / "task.yaml").write_text(yaml.safe_dump({"id": task, "checks": declared}), encoding="utf-8")
    assert missing_checks(rubric, tmp_path) == [
        f"{comp_id}: {first_task}/{first}: tasks/{first_task}/task.yaml declares no check {first!r}"
    ]
    assert missing_checks(rubric, tmp_path / "none")[0] == (
        f"{comp_id}: {first_task}/{first}: no task pack tasks/{first_task}/task.yaml"
    )


@pytest.mark.parametrize("role", sorted(ROLE_NAMES.values()))
def test_check_references_exist(role: str, rubrics: dict[str, Rubric]) -> None:
    problems = missing_checks(rubrics[role], REPO / "tasks")
    assert not problems, f"{role}:\n" + "\n".join(problems)
