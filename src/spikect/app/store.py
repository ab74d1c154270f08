"""Studies in SQLite: one row per upload with its status, progress, summary and ``report.json``.

The database lives at ``$SPIKECT_HOME/spikect.db``; each study's files (upload, masks, report, overlay)
live in ``$SPIKECT_HOME/studies/<id>/``. The schema is created on open. A row is only marked ``done``
after all its files are written, so a crash can never leave a "done" study without its files. A study
found ``queued`` or ``running`` when the server starts was interrupted: :meth:`StudyStore.open` puts it
back in the queue when its upload is intact (:attr:`StudyStore.requeued`). One that was *running* when the
server died is re-queued once only, so a scan that kills the server cannot crash-loop it; after that, or
without its upload, it is marked ``failed`` with the reason rather than dropped silently.

One connection guarded by a lock: the worker thread and the request threads write rarely and briefly.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Status = Literal["queued", "running", "done", "failed"]
SCHEMA_VERSION = 2
INTERRUPTED = "interrupted by a server restart before it finished; upload the scan again"
REQUEUED = "re-queued after a server restart"
MAX_RESTARTS = 1  # times a study that was running when the server died is run again
_ID = re.compile(r"^[0-9a-f]{16}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,                 -- the uploaded file name(s), for display only
    created_at REAL NOT NULL,           -- unix time
    updated_at REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    error TEXT,
    stage TEXT NOT NULL DEFAULT '',     -- what the worker is doing, for the progress bar
    progress REAL NOT NULL DEFAULT 0,   -- 0..1
    n_files INTEGER NOT NULL DEFAULT 0,
    upload_bytes INTEGER NOT NULL DEFAULT 0,
    label TEXT,                         -- summary of the report, for the study list
    probability REAL,
    severity TEXT,
    infection_percent REAL,
    start_slice INTEGER,                -- the axial slice the viewer opens on
    report TEXT,                        -- report.json, verbatim
    input TEXT,                         -- the upload, relative to the study's folder (for a re-queue)
    restarts INTEGER NOT NULL DEFAULT 0 -- server deaths while this study was running
);
CREATE INDEX IF NOT EXISTS studies_created ON studies (created_at);
"""

_ADDED_IN_2 = (("input", "TEXT"), ("restarts", "INTEGER NOT NULL DEFAULT 0"))

_SUMMARY = (
    "id, name, created_at, updated_at, status, error, stage, progress, n_files, upload_bytes, label, "
    "probability, severity, infection_percent, start_slice"
)


@dataclass(frozen=True)
class Study:
    id: str
    name: str
    created_at: float
    updated_at: float
    status: Status
    error: str | None
    stage: str
    progress: float
    n_files: int
    upload_bytes: int
    label: str | None
    probability: float | None
    severity: str | None
    infection_percent: float | None
    start_slice: int | None
    report: dict[str, Any] | None = None


def new_study_id() -> str:
    return secrets.token_hex(8)


def valid_study_id(study_id: str) -> bool:
    """Ids are 16 hex digits; anything else (e.g. ``..``) never reaches the filesystem."""
    return bool(_ID.match(study_id))


class StudyStore:
    """SQLite access for studies plus the folder layout under ``studies_dir``."""

    def __init__(self, db_path: Path, studies_dir: Path) -> None:
        self.db_path = db_path
        self.studies_dir = studies_dir
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        # (id, input path, display name) of the interrupted studies put back in the queue, oldest first
        self.requeued: list[tuple[str, Path, str]] = []

    @classmethod
    def open(cls, db_path: Path, studies_dir: Path) -> StudyStore:
        """Create the schema if needed, fail interrupted studies and drop orphaned folders."""
        store = cls(db_path, studies_dir)
        studies_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the worker's writes
        db.execute("PRAGMA synchronous=FULL")  # a "done" row survives a power cut
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            db.close()
            raise RuntimeError(
                f"{db_path} was written by a newer spikect (schema {version} > {SCHEMA_VERSION})"
            )
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(studies)")}
        for column, kind in _ADDED_IN_2:  # a version-1 database: its table predates these columns
            if column not in columns:
                db.execute(f"ALTER TABLE studies ADD COLUMN {column} {kind}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        store._db = db
        store._recover()
        return store

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the study store is closed")
        return self._db

    def _recover(self) -> None:
        interrupted: set[str] = set()
        with self._lock:
            db = self._conn()
            rows = db.execute(
                "SELECT id, name, status, input, restarts FROM studies WHERE status IN ('queued', 'running') "
                "ORDER BY created_at"
            ).fetchall()
            now = time.time()
            for row in rows:
                path = self.studies_dir / row["id"] / row["input"] if row["input"] else None
                crashed = row["status"] == "running"
                if path is not None and path.exists() and (not crashed or row["restarts"] < MAX_RESTARTS):
                    db.execute(
                        "UPDATE studies SET status = 'queued', stage = ?, progress = 0, updated_at = ?, "
                        "restarts = restarts + ? WHERE id = ?",
                        (REQUEUED, now, int(crashed), row["id"]),
                    )
                    self.requeued.append((row["id"], path, row["name"]))
                else:
                    db.execute(
                        "UPDATE studies SET status = 'failed', error = ?, stage = '', updated_at = ? "
                        "WHERE id = ?",
                        (INTERRUPTED, now, row["id"]),
                    )
                    interrupted.add(row["id"])
            known = {row[0] for row in db.execute("SELECT id FROM studies")}
        for folder in self.studies_dir.iterdir():
            # an upload cut off before its row was written; only our own id-named folders are touched
            if folder.is_dir() and valid_study_id(folder.name) and folder.name not in known:
                shutil.rmtree(folder, ignore_errors=True)
        for study_id in interrupted:  # a failed study serves no files: drop its upload and partial output
            shutil.rmtree(self.studies_dir / study_id, ignore_errors=True)

    def folder(self, study_id: str) -> Path:
        if not valid_study_id(study_id):
            raise ValueError(f"invalid study id {study_id!r}")
        return self.studies_dir / study_id

    def add(self, study_id: str, name: str, n_files: int, upload_bytes: int, input_path: Path) -> None:
        now = time.time()
        rel = str(input_path.relative_to(self.folder(study_id)))
        with self._lock:
            self._conn().execute(
                "INSERT INTO studies (id, name, created_at, updated_at, status, stage, n_files, upload_bytes,"
                " input) VALUES (?, ?, ?, ?, 'queued', 'waiting in the queue', ?, ?, ?)",
                (study_id, name, now, now, n_files, upload_bytes, rel),
            )

    def get(self, study_id: str, with_report: bool = True) -> Study | None:
        columns = _SUMMARY + (", report" if with_report else "")
        with self._lock:
            row = self._conn().execute(f"SELECT {columns} FROM studies WHERE id = ?", (study_id,)).fetchone()
        return None if row is None else _study(row)

    def list(self) -> list[Study]:
        with self._lock:
            rows = self._conn().execute(f"SELECT {_SUMMARY} FROM studies ORDER BY created_at DESC").fetchall()
        return [_study(r) for r in rows]

    def exists(self, study_id: str) -> bool:
        with self._lock:
            return (
                self._conn().execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone() is not None
            )

    def set_progress(self, study_id: str, stage: str, progress: float, running: bool = True) -> None:
        with self._lock:
            self._conn().execute(
                "UPDATE studies SET status = CASE WHEN ? THEN 'running' ELSE status END, stage = ?, "
                "progress = ?, updated_at = ? WHERE id = ? AND status IN ('queued', 'running')",
                (running, stage, max(0.0, min(1.0, progress)), time.time(), study_id),
            )

    def finish(self, study_id: str, report: dict[str, Any], start_slice: int) -> None:
        with self._lock:
            self._conn().execute(
                "UPDATE studies SET status = 'done', error = NULL, stage = '', progress = 1, "
                "updated_at = ?, label = ?, probability = ?, severity = ?, infection_percent = ?, "
                "start_slice = ?, report = ? WHERE id = ?",
                (
                    time.time(),
                    report["classification"]["label"],
                    report["classification"]["probability"],
                    report["severity"],
                    report["infection_percent"],
                    start_slice,
                    json.dumps(report, allow_nan=False),
                    study_id,
                ),
            )

    def fail(self, study_id: str, error: str) -> None:
        with self._lock:
            self._conn().execute(
                "UPDATE studies SET status = 'failed', error = ?, stage = '', updated_at = ? WHERE id = ?",
                (error, time.time(), study_id),
            )

    def delete(self, study_id: str) -> bool:
        """Remove the row, then the files; returns whether the study existed."""
        with self._lock:
            cur = self._conn().execute("DELETE FROM studies WHERE id = ?", (study_id,))
        shutil.rmtree(self.folder(study_id), ignore_errors=True)
        return cur.rowcount > 0


def _study(row: sqlite3.Row) -> Study:
    data = dict(row)
    report = data.pop("report", None)
    return Study(**data, report=json.loads(report) if report else None)
