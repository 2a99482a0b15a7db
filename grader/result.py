"""result.json: the versioned record of one grade. Reports are rendered from it alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from grader.checks.base import Status
from grader.schema import Strict, load_model
from grader.telemetry import Telemetry
from sandbox.base import Isolation

RESULT_SCHEMA_VERSION = 1
Verdict = Literal["strong", "meets", "borderline", "below", "incomplete", "error"]


class Ref(Strict):
    id: str
    version: str


class Evidence(Strict):
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class CheckRecord(Strict):
    id: str
    title: str
    status: Status
    score: float = Field(ge=0, le=1)
    weight: float = Field(ge=0)
    critical: bool = False
    self_report: bool = Field(False, description="Copied from the task's check: the check compares the submission's "
                                                 "self-reported numbers with the grader's.")
    evidence: Evidence


class RunRecord(Strict):
    """One execution of the candidate's entry command."""

    name: str
    argv: list[str]
    returncode: int | None
    timed_out: bool
    oom_killed: bool
    disk_exceeded: bool = False
    duration_s: float
    cpu_s: float | None = Field(None, description="CPU-seconds of every process of the run, as the sandbox measured them.")
    max_rss_mb: float | None
    stdout_truncated: bool
    stderr_truncated: bool
    log_dir: str = Field(description="Relative to the result folder: stdout.txt, stderr.txt and out/.")
    infra_error: str | None = None
    notes: list[str] = Field(default_factory=list, description="What the grader removed from the outputs, and why.")


class CompetencyRecord(Strict):
    """A rubric competency of the graded level, and what this grade says about it."""

    id: str
    title: str
    quote: str
    weight: float
    kind: Literal["checks", "panel"]
    status: Literal["assessed", "not-covered", "awaiting-panel", "panel-scored", "error"]
    score: float | None = Field(None, ge=0, le=1)
    checks: list[str] = Field(default_factory=list)
    note: str | None = None


class LevelRollup(Strict):
    role: str
    level: str
    score: float | None = Field(description="The level's score, 0-100: None unless the checks assessed at least "
                                            "half the level's weight (MIN_LEVEL_COVERAGE).")
    assessed_score: float | None = Field(None, description="0-100 over the assessed competencies only; None if none.")
    assessed_weight: float
    total_weight: float
    assessed_competencies: int = 0
    total_competencies: int = 0
    pass_score: float
    competencies: list[CompetencyRecord]


PANEL_SCALE: dict[int, str] = {0: "not shown", 1: "below", 2: "approaching", 3: "meets", 4: "exceeds"}
"""The panel's 0-4 ordinal scale; a competency's panel score is the raters' mean over 4, so 3 ("meets") is 0.75."""
PANEL_MAX = max(PANEL_SCALE)


class PanelScore(Strict):
    """One rater's score of one panel competency, as merged from a scoresheet (`tunegrade panel-merge`)."""

    rater: str = Field(min_length=1)
    time: str = Field(description="When the sheet was merged (UTC, ISO 8601).")
    competency: str
    score: int = Field(ge=0, le=PANEL_MAX, description="0-4 on PANEL_SCALE.")
    comment: str | None = None

    @property
    def label(self) -> str:
        return PANEL_SCALE[self.score]


class PanelAgreement(Strict):
    """How far two or more raters agree: stored with the scores, so the report renders from result.json alone."""

    raters: list[str]
    alpha: float | None = Field(description="Krippendorff's alpha (ordinal, raters x competencies); None if undefined.")
    alpha_undefined: str | None = Field(None, description="Why alpha is undefined, e.g. every score the same.")
    disagreements: list[str] = Field(default_factory=list,
                                     description="Competencies whose raters' scores differ by more than one point.")


class Rescore(Strict):
    """One offline re-scoring (`tunegrade rescore`): the checks re-run on the stored run artifacts."""

    at: str = Field(description="When (UTC, ISO 8601).")
    tool_version: str
    checks_s: float
    previous_score: float | None
    previous_verdict: str


class Timings(Strict):
    intake_s: float = 0
    inputs_s: float = 0
    runs_s: float = 0
    checks_s: float = 0
    total_s: float = 0


class Result(Strict):
    schema_version: int = RESULT_SCHEMA_VERSION
    tool_version: str
    created_at: str
    task: Ref
    task_title: str
    rubric: Ref
    role: str
    level: str
    candidate: str
    submission_sha256: str
    submission_source: str = Field(description="What was submitted: directory, archive or git ref (name only).")
    hidden_variant: str = Field(description="Identifies the hidden input set without revealing its seed.")
    backend: str
    isolation: Isolation
    base_model: dict[str, Any] | None = Field(None, description="The base model the task ran on: name, sha256, parameters.")
    device: str = Field("cpu", description="Where the grader's own evaluation ran.")
    limits_scale: dict[str, float] = Field(default_factory=lambda: {"time": 1.0, "memory": 1.0},
                                           description="Factors applied to the task's time and memory limits and budget.")
    environment: dict[str, str | None]
    seed: int
    timings: Timings
    resources: dict[str, float | None]
    runs: list[RunRecord]
    telemetry: dict[str, Telemetry] = Field(default_factory=dict, description="Per run: what the hooks inside it recorded.")
    checks: list[CheckRecord]
    rollup: LevelRollup
    score: float | None = Field(ge=0, le=100, description="Weighted check score; None when the grade is incomplete "
                                                           "(a check or run errored) or nothing was assessed.")
    verdict: Verdict
    errors: list[str] = Field(default_factory=list, description="Grader or infrastructure faults, never the candidate's.")
    panel: list[PanelScore] = Field(default_factory=list, description="Panel raters' scores of the level's panel "
                                                                        "competencies, one per rater and competency.")
    panel_agreement: PanelAgreement | None = Field(None, description="Set once two or more raters have scored.")
    rescores: list[Rescore] = Field(default_factory=list, description="Re-scorings since the grade, oldest first; "
                                                                      "timings and environment stay the run's.")

    @property
    def error_checks(self) -> list[CheckRecord]:
        return [c for c in self.checks if c.status == "error"]


def load_result(path: Path) -> Result:
    return load_model(Result, path, RESULT_SCHEMA_VERSION)


def save_result(result: Result, path: Path) -> None:
    path.write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
