"""Names, limits and defaults in one place."""

from pathlib import Path

from sandbox.cache import CACHE_ENV, cache_root  # noqa: F401 - one rule for the grader and the sandbox

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_TASKS = REPO_ROOT / "tasks"
RUBRICS_DIR = REPO_ROOT / "rubrics"
REPORTS_DIR = REPO_ROOT / "reports"

TASKS_ENV = "TUNEGRADE_TASKS"
TASK_FILE = "task.yaml"
CHECKS_FILE = "checks.py"
TASK_MARKER = ".tunegrade-task"  # written by `export`, lets `check .` find its task
MANIFEST_FILE = "manifest.json"
RESULT_FILE = "result.json"
REPORT_FILE = "report.html"
COHORT_FILE = "index.html"
SCRATCH_DIR = ".scratch"
SUBMISSION_DIR = "submission"  # the submitted files as graded, kept with the result
OUTPUT_MARKER = ".tunegrade-output"  # in every result folder: intake leaves such folders out of a submission
EXEC_FILE = "exec.json"  # per run: the sandbox's full outcome, what `rescore` re-reads
RUNS_DIR = "runs"

DEFAULT_SEED = 1234
DEFAULT_BACKEND = "local"
DEFAULT_BASE_MODEL = "tiny"

# In-sandbox layout; backends that cannot remap paths show the host paths instead.
SANDBOX_WORK = "/sandbox/work"
SANDBOX_OUT = "/sandbox/out"
SANDBOX_IN = "/sandbox/in"

# Submission intake caps: a submission is code and small files, never weights or data dumps.
MAX_SUBMISSION_FILES = 2_000
MAX_SUBMISSION_BYTES = 50 * 1024 * 1024
MAX_SUBMISSION_FILE_BYTES = 20 * 1024 * 1024
MAX_ARCHIVE_BYTES = 100 * 1024 * 1024

# Artifacts the candidate's run leaves for the checks.
MAX_ARTIFACT_BYTES = 2 * 1024 * 1024 * 1024

# Verdict thresholds on the 0-100 score.
VERDICT_STRONG = 85.0
VERDICT_MEETS = 70.0
VERDICT_BORDERLINE = 50.0
MIN_LEVEL_COVERAGE = 0.5
"""A level score is the level's only when checks assessed at least this share of its weight;
below it the roll-up shows the score over what was assessed, with its coverage, and no level score."""
