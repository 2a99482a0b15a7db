"""grader/rubric.py: the rubric loader accepts the shipped rubrics and rejects bad ones with one line."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from grader.errors import BadInput
from grader.rubric import RUBRIC_SCHEMA_VERSION, Rubric, load_rubric, load_rubrics
from grader.taskspec import LEVELS

RUBRICS = Path(__file__).resolve().parents[1] / "rubrics"
ROLES = ("data-scientist", "llm-engineer")


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    """The shipped data-scientist rubric as plain data, to mutate one key at a time."""
    return yaml.safe_load((RUBRICS / "data-scientist.yaml").read_text(encoding="utf-8"))


def write(tmp_path: Path, data: dict[str, Any], name: str = "data-scientist") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def rejects(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(BadInput) as info:
        load_rubric(path)
    assert str(info.value) == f"{path}: {message}"
    assert "\n" not in str(info.value)


# --- the shipped rubrics ---------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_shipped_rubric_loads(role: str) -> None:
    rubric = load_rubric(RUBRICS / f"{role}.yaml")
    assert rubric.schema_version == RUBRIC_SCHEMA_VERSION
    assert rubric.id == role and rubric.role == role
    assert [lv.level for lv in rubric.levels] == list(LEVELS)
    assert rubric.version


def test_load_rubrics_keys_by_role() -> None:
    rubrics = load_rubrics(RUBRICS)
    assert sorted(rubrics) == sorted(ROLES)
    assert all(isinstance(r, Rubric) and r.role == role for role, r in rubrics.items())


def test_schema_version_is_the_first_field() -> None:
    assert next(iter(Rubric.model_fields)) == "schema_version"


def test_level_lookup_and_check_refs() -> None:
    rubric = load_rubric(RUBRICS / "llm-engineer.yaml")
    assert rubric.level("senior").level == "senior"
    with pytest.raises(KeyError):
        rubric.level("intern")
    refs = rubric.check_refs()
    assert ("instruction-data-format", "data-prep", "schema-chat") in refs
    assert all(len(r) == 3 for r in refs)


def test_round_trip_of_unchanged_data(tmp_path: Path, base: dict[str, Any]) -> None:
    assert load_rubric(write(tmp_path, base)) == load_rubric(RUBRICS / "data-scientist.yaml")


# --- rejections, each with its exact one-line message ------------------------------------------


def test_rejects_quote_not_in_description(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["levels"][2]["competencies"][1]["quote"] = "Applies PPO for model alignment"
    rejects(tmp_path, data, "levels[2].competencies[1].quote: not found in the senior description")


def test_quote_match_is_exact(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["levels"][0]["competencies"][1]["quote"] = "uses Hugging Face API"  # wrong case
    rejects(tmp_path, data, "levels[0].competencies[1].quote: not found in the junior description")


def test_rejects_both_checks_and_panel(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["levels"][0]["competencies"][3]["panel"] = True
    rejects(
        tmp_path,
        data,
        "levels[0].competencies[3]: give exactly one of `checks: [task-id/check-id, ...]` or `panel: true`",
    )


def test_rejects_neither_checks_nor_panel(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    del data["levels"][2]["competencies"][0]["panel"]
    rejects(
        tmp_path,
        data,
        "levels[2].competencies[0]: give exactly one of `checks: [task-id/check-id, ...]` or `panel: true`",
    )


def test_rejects_empty_checks_without_panel(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["levels"][0]["competencies"][3]["checks"] = []
    rejects(
        tmp_path,
        data,
        "levels[0].competencies[3]: give exactly one of `checks: [task-id/check-id, ...]` or `panel: true`",
    )


def test_rejects_panel_without_note(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    del data["levels"][3]["competencies"][3]["note"]
    rejects(
        tmp_path,
        data,
        "levels[3].competencies[3].note: a panel competency needs a `note` naming the evidence the panel looks for",
    )


def test_rejects_duplicate_competency_ids(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["levels"][4]["competencies"][1]["id"] = "fine-tuning-concepts"
    rejects(
        tmp_path,
        data,
        "levels[4].competencies[1].id: duplicate competency id 'fine-tuning-concepts' (first at levels[0].competencies[0])",
    )


def test_rejects_duplicate_check_reference(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["levels"][0]["competencies"][3]["checks"].append("data-prep/runs")
    rejects(tmp_path, data, "levels[0].competencies[3].checks[4]: duplicate check reference 'data-prep/runs'")


def test_rejects_malformed_check_reference(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["levels"][0]["competencies"][3]["checks"][0] = "data-prep.runs"
    path = write(tmp_path, data)
    with pytest.raises(BadInput, match=r"levels\[0\]\.competencies\[3\]\.checks\[0\]: String should match pattern"):
        load_rubric(path)


def test_rejects_non_kebab_competency_id(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["levels"][0]["competencies"][0]["id"] = "Fine_Tuning"
    path = write(tmp_path, data)
    with pytest.raises(BadInput, match=r"levels\[0\]\.competencies\[0\]\.id: String should match pattern"):
        load_rubric(path)


@pytest.mark.parametrize(
    ("where", "key"),
    [((), "owner"), (("levels", 0), "weight"), (("levels", 0, "competencies", 0), "evidence")],
)
def test_rejects_unknown_keys(tmp_path: Path, base: dict[str, Any], where: tuple[Any, ...], key: str) -> None:
    data = copy.deepcopy(base)
    node: Any = data
    for part in where:
        node = node[part]
    node[key] = "x"
    loc = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(where + (key,)))
    rejects(tmp_path, data, f"{loc}: Extra inputs are not permitted")


def test_rejects_newer_schema_version(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["schema_version"] = RUBRIC_SCHEMA_VERSION + 1
    rejects(
        tmp_path,
        data,
        f"schema_version {RUBRIC_SCHEMA_VERSION + 1} is newer than this tunegrade understands "
        f"({RUBRIC_SCHEMA_VERSION}); upgrade tunegrade",
    )


def test_rejects_wrong_level_order(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["levels"][1], data["levels"][2] = data["levels"][2], data["levels"][1]
    rejects(
        tmp_path,
        data,
        "levels: expected junior, middle, senior, lead, principal in that order, "
        "got junior, senior, middle, lead, principal",
    )


def test_rejects_missing_level(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    del data["levels"][4]
    rejects(
        tmp_path,
        data,
        "levels: expected junior, middle, senior, lead, principal in that order, got junior, middle, senior, lead",
    )


def test_rejects_unknown_level(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["levels"][0]["level"] = "intern"
    path = write(tmp_path, data)
    with pytest.raises(BadInput, match=r"levels\[0\]\.level: Input should be 'junior', "):
        load_rubric(path)


@pytest.mark.parametrize(("value", "message"), [(0, "greater than 0"), (-1, "greater than 0")])
def test_rejects_non_positive_weight(tmp_path: Path, base: dict[str, Any], value: float, message: str) -> None:
    data = copy.deepcopy(base)
    data["levels"][0]["competencies"][0]["weight"] = value
    rejects(tmp_path, data, f"levels[0].competencies[0].weight: Input should be {message}")


def test_rejects_pass_score_out_of_range(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["levels"][0]["pass_score"] = 101
    rejects(tmp_path, data, "levels[0].pass_score: Input should be less than or equal to 100")


def test_rejects_level_without_competencies(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["levels"][3]["competencies"] = []
    rejects(tmp_path, data, "levels[3].competencies: List should have at least 1 item after validation, not 0")


def test_rejects_id_not_matching_file_name(tmp_path: Path, base: dict[str, Any]) -> None:
    path = write(tmp_path, base, name="ds")
    with pytest.raises(BadInput) as info:
        load_rubric(path)
    assert str(info.value) == f"{path}: id: 'data-scientist' does not match the file name (expected 'ds')"


def test_rejects_non_mapping_file(tmp_path: Path) -> None:
    path = tmp_path / "data-scientist.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(BadInput) as info:
        load_rubric(path)
    assert str(info.value) == f"{path}: expected a mapping at the top level"


def test_load_rubrics_rejects_two_rubrics_for_one_role(tmp_path: Path, base: dict[str, Any]) -> None:
    first = write(tmp_path, base)
    other = copy.deepcopy(base)
    other["id"] = "ds-extra"
    second = write(tmp_path, other, name="ds-extra")  # sorts after data-scientist.yaml
    with pytest.raises(BadInput) as info:
        load_rubrics(tmp_path)
    assert str(info.value) == f"{second}: role: 'data-scientist' already has a rubric ({first})"


def test_load_rubrics_rejects_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as info:
        load_rubrics(tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: no such rubrics folder"
    with pytest.raises(BadInput) as info:
        load_rubrics(tmp_path)
    assert str(info.value) == f"{tmp_path}: no rubrics (*.yaml) found"
