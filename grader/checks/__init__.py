"""The checks library: the check API, loading a task's checks, and checks shared by tasks."""

from grader.checks.base import (
    Artifacts,
    CandidateFault,
    CheckContext,
    InfraFault,
    Outcome,
    RunArtifacts,
    check,
    failed,
    graded,
    parse_json,
    passed,
    read_json,
    read_jsonl,
    sibling_module,
)

__all__ = [
    "Artifacts",
    "CandidateFault",
    "CheckContext",
    "InfraFault",
    "Outcome",
    "RunArtifacts",
    "check",
    "failed",
    "graded",
    "parse_json",
    "passed",
    "read_json",
    "read_jsonl",
    "sibling_module",
]
