"""The batch's record of what is graded: a SQLite database (WAL) in the batch's output folder.

A row is written when a grade begins ("running") and replaced when it ends, in one transaction
each, so a batch killed at any instant (SIGKILL included) leaves every finished grade recorded
and at most the grades in flight marked "running": those, and only those, are graded again on
resume. ``attempts`` counts how often a submission was started, which is how the tests prove
that nothing finished is graded twice. Each start gets a fresh ``token`` and only the grade holding
the current token can finish the row: a result that arrives twice, or from a grade a restarted
coordinator already gave up on, is recorded once.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from grader.errors import BadInput, GraderFault

DB_FILE = "batch.sqlite"
LOCK_FILE = "batch.lock"
Status = Literal["running", "graded", "bad-input", "error"]
FINISHED: tuple[Status, ...] = ("graded", "bad-input")
"""Never graded again without --regrade. "error" (the grader's own fault) is retried on resume."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS grades (
    candidate   TEXT PRIMARY KEY,
    task        TEXT,
    source      TEXT NOT NULL,
    status      TEXT NOT NULL,
    verdict     TEXT,
    score       REAL,
    message     TEXT,
    result      TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    seconds     REAL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    token       TEXT
)
"""
MIGRATIONS = {"token": "ALTER TABLE grades ADD COLUMN token TEXT"}
"""Columns added since the first release, for batch folders made before them."""


class GradeRow(BaseModel):
    candidate: str
    task: str | None
    source: str
    status: Status
    verdict: str | None = None
    score: float | None = None
    message: str | None = None
    result: str | None = None
    """The result folder, relative to the batch folder."""
    started_at: str
    finished_at: str | None = None
    seconds: float | None = None
    attempts: int = 0
    token: str | None = None


def _rows(db: sqlite3.Connection) -> dict[str, GradeRow]:
    cursor = db.execute("SELECT * FROM grades ORDER BY candidate")
    names = [d[0] for d in cursor.description]
    return {row[0]: GradeRow(**dict(zip(names, row))) for row in cursor.fetchall()}


def read_rows(folder: Path) -> dict[str, GradeRow]:
    """What a batch folder has recorded, read-only and without its lock: usable while the batch runs
    (WAL readers never block the writer). Empty before the batch has created its table."""
    path = folder / DB_FILE
    if not path.exists():
        return {}
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return _rows(db)
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class BatchStore:
    """One batch folder's database, held exclusively (a lock file) while a batch runs in it."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._mutex = threading.Lock()  # one connection, shared by the batch's grading threads
        self._lock = (folder / LOCK_FILE).open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise BadInput(f"another batch is running in {folder}; wait for it or choose another --out") from None
        try:
            self._db = sqlite3.connect(folder / DB_FILE, isolation_level=None, check_same_thread=False,
                                       timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(grades)")}
            for column, sql in MIGRATIONS.items():
                if column not in columns:
                    self._db.execute(sql)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise BadInput(f"{folder / DB_FILE} is not a batch database ({exc})") from None

    def close(self) -> None:
        if hasattr(self, "_db"):
            self._db.close()
        self._lock.close()

    def rows(self) -> dict[str, GradeRow]:
        with self._mutex:
            return _rows(self._db)

    def start(self, candidate: str, task: str | None, source: str) -> str:
        """Mark a grade as begun, counting the attempt; returns the token that may finish it."""
        token = uuid.uuid4().hex
        self._write(
            "INSERT INTO grades (candidate, task, source, status, started_at, attempts, token) "
            "VALUES (?, ?, ?, 'running', ?, 1, ?) "
            "ON CONFLICT(candidate) DO UPDATE SET task=excluded.task, source=excluded.source, status='running', "
            "verdict=NULL, score=NULL, message=NULL, result=NULL, started_at=excluded.started_at, finished_at=NULL, "
            "seconds=NULL, attempts=grades.attempts+1, token=excluded.token",
            (candidate, task, source, _now(), token),
        )
        return token

    def finish(self, candidate: str, token: str, status: Status, *, seconds: float, verdict: str | None = None,
               score: float | None = None, message: str | None = None, result: str | None = None) -> bool:
        """Record the end of the grade started with ``token``; False (nothing written) when that grade
        is already recorded or was superseded by a later start."""
        return self._write(
            "UPDATE grades SET status=?, verdict=?, score=?, message=?, result=?, finished_at=?, seconds=? "
            "WHERE candidate=? AND token=? AND status='running'",
            (status, verdict, score, message, result, _now(), round(seconds, 3), candidate, token),
        ) == 1

    def rescored(self, candidate: str, verdict: str, score: float | None) -> None:
        """A recorded grade was re-scored offline: its verdict and score change, nothing else."""
        self._write("UPDATE grades SET verdict=?, score=? WHERE candidate=?", (verdict, score, candidate))

    def _write(self, sql: str, params: tuple) -> int:
        """Run one statement in its own transaction; returns the rows it changed."""
        try:
            with self._mutex, self._db:
                self._db.execute("BEGIN IMMEDIATE")
                return self._db.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise GraderFault(f"batch database: {exc}") from None

