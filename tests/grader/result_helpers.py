"""Stored grades for the panel and review tests, built from one real data-prep result.json."""

from __future__ import annotations

from pathlib import Path

from grader.constants import RUBRICS_DIR
from grader.result import CheckRecord, Evidence, Ref, Result, load_result
from grader.rubric import load_rubrics
from grader.scoring import rollup
from grader.tasks import discover

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "results" / "panel-data-prep.json"


def data_prep() -> Result:
    """alice's llm-engineer grade of data-prep's good solution, every check passed (junior level)."""
    return load_result(FIXTURE)


def as_task(result: Result, task: str, status: str = "pass") -> Result:
    """The data-prep grade dressed as a grade of ``task`` (model tasks take minutes to grade): its level,
    its task.yaml's checks at ``status`` (pass or fail), and the roll-up of that level. The two checks whose
    evidence the report's alignment section reads are left out: the section needs real measurements."""
    spec = discover([])[task].spec
    checks = [CheckRecord(id=c.id, title=c.title, status=status, score=1.0 if status == "pass" else 0.0,
                          weight=c.weight, critical=c.critical, evidence=Evidence(message=f"{status} (test)"))
              for c in spec.checks if c.id not in ("preference-accuracy", "dpo-from-sft")]
    roll = rollup(load_rubrics(RUBRICS_DIR)[result.role], spec.level, task, checks)
    return result.model_copy(update={"task": Ref(id=task, version=spec.version), "task_title": spec.title,
                                     "level": spec.level, "checks": checks, "rollup": roll})
