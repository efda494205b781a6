"""The embedded backend's durable state: one SQLite database (WAL) plus a file store, under one data directory.

Layout of ``<data_dir>``::

    backend.sqlite3        files, jobs, events, metrics, timeline
    files/<sha256>.jsonl   uploaded datasets, content-addressed (same bytes -> same file id)
    files/.incoming/       uploads in progress (a temp file renamed into place when complete)
    models/<job_id>/       fine-tuned models (written by the worker)
    logs/                  backend and worker logs

Several processes write here: the HTTP server and the training worker it spawns. SQLite in WAL mode with
``BEGIN IMMEDIATE`` transactions serialises them; every connection sets a busy timeout. Each public method is
one short transaction, so a crash at any point leaves the database consistent. Event ``seq`` numbers are
per-job, start at 1 and are allocated inside the insert transaction, so writers in different processes can
never hand out the same number.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE_STATUSES = frozenset({"validating_files", "running"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_details TEXT,
    examples INTEGER,
    created_at INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    training_type TEXT NOT NULL,
    training_file_id TEXT,
    validation_file_id TEXT,
    payload TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    fine_tuned_model TEXT,
    error TEXT,
    start_requested_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER,
    trained_tokens INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, start_requested_at);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    step INTEGER NOT NULL,
    epoch REAL,
    phase TEXT,
    data TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_job ON metrics(job_id, step);
CREATE TABLE IF NOT EXISTS timeline (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    phase TEXT NOT NULL,
    message TEXT,
    metadata TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS timeline_job ON timeline(job_id, id);
"""


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=False)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def new_job_id() -> str:
    return f"ftjob-{uuid.uuid4().hex[:20]}"


def file_id_for(sha256: str) -> str:
    return f"file-{sha256[:24]}"


@dataclass(frozen=True)
class StorePaths:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "backend.sqlite3"

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def incoming(self) -> Path:
        return self.root / "files" / ".incoming"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def file_path(self, sha256: str) -> Path:
        return self.files / f"{sha256}.jsonl"

    def model_dir(self, job_id: str) -> Path:
        return self.models / job_id

    def checkpoint_dir(self, job_id: str) -> Path:
        """Training checkpoints of a job with ``save_steps`` (``checkpoint-<step>/``), removed when it ends."""
        return self.models / ".checkpoints" / job_id

    def partial_dirs(self, job_id: str) -> list[Path]:
        """The trainer's staging folders for ``job_id`` (``.<job_id>.partial-<hex>``)."""
        return sorted(self.models.glob(f".{job_id}.partial-*"))


class Store:
    """Thread-safe access to the backend database. One connection per thread."""

    def __init__(self, root: Path):
        self.paths = StorePaths(Path(root))
        for folder in (self.paths.root, self.paths.files, self.paths.incoming, self.paths.models, self.paths.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)

    # -- connection handling -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.paths.db, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple | list = ()) -> list[sqlite3.Row]:
        return self._conn().execute(sql, params).fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- leftovers -----------------------------------------------------------------------------------
    def sweep_leftovers(self) -> dict[str, int]:
        """At start-up: remove ``.part`` uploads (a kill during an upload), and the ``.partial`` staging folders
        and checkpoints of jobs that are not active. Returns counts for the log."""
        import shutil

        counts = {"part_files": 0, "partial_dirs": 0, "checkpoint_dirs": 0}
        for part in self.paths.incoming.glob("*.part"):
            part.unlink(missing_ok=True)
            counts["part_files"] += 1
        for folder in self.paths.models.glob(".*.partial-*"):
            job = self.get_job(folder.name[1:].split(".partial-", 1)[0])
            if job is None or job["status"] not in ACTIVE_STATUSES:
                shutil.rmtree(folder, ignore_errors=True)
                counts["partial_dirs"] += 1
        checkpoints = self.paths.models / ".checkpoints"
        for folder in checkpoints.glob("*") if checkpoints.is_dir() else ():
            job = self.get_job(folder.name)
            if job is None or job["status"] in TERMINAL_STATUSES:
                shutil.rmtree(folder, ignore_errors=True)
                counts["checkpoint_dirs"] += 1
        return counts

    def remove_job_leftovers(self, job_id: str) -> None:
        """Remove a finished job's staging folders and checkpoints."""
        import shutil

        for folder in [*self.paths.partial_dirs(job_id), self.paths.checkpoint_dir(job_id)]:
            shutil.rmtree(folder, ignore_errors=True)

    def expire_unstarted_jobs(self, older_than_s: float) -> list[str]:
        """Ids of queued jobs never started (no ``/start``) created more than ``older_than_s`` seconds ago."""
        rows = self._query("SELECT id FROM jobs WHERE status = 'queued' AND start_requested_at IS NULL "
                           "AND created_at < ?", (time.time() - older_than_s,))
        return [r["id"] for r in rows]

    def requeue(self, job_id: str, message: str, data: dict) -> bool:
        """Put a job whose worker died back in the queue (it keeps its place: start time unchanged), with an
        ``sft.resuming`` event in the same transaction. False if the job already ended."""
        return self.set_job_status(job_id, "queued", events=[("sft.resuming", message, data, "warning")])

    def count_events(self, job_id: str, type: str) -> int:
        return self._query("SELECT COUNT(*) FROM events WHERE job_id = ? AND type = ?", (job_id, type))[0][0]

    # -- files ---------------------------------------------------------------------------------------
    def get_file_by_sha(self, sha256: str) -> dict | None:
        rows = self._query("SELECT * FROM files WHERE sha256 = ?", (sha256,))
        return _file_record(rows[0]) if rows else None

    def add_file(self, *, sha256: str, filename: str, purpose: str, size: int) -> tuple[dict, bool]:
        """Insert a file record (status ``processing``). Returns (record, created)."""
        now = int(time.time())
        with self._tx() as db:
            row = db.execute("SELECT * FROM files WHERE sha256 = ?", (sha256,)).fetchone()
            if row is not None:
                if row["deleted"]:
                    db.execute(
                        "UPDATE files SET deleted = 0, status = 'processing', status_details = NULL, filename = ?, "
                        "purpose = ?, created_at = ? WHERE sha256 = ?",
                        (filename, purpose, now, sha256),
                    )
                    row = db.execute("SELECT * FROM files WHERE sha256 = ?", (sha256,)).fetchone()
                    return _file_record(row), True
                return _file_record(row), False
            db.execute(
                "INSERT INTO files (id, sha256, filename, purpose, bytes, status, created_at) VALUES (?,?,?,?,?,?,?)",
                (file_id_for(sha256), sha256, filename, purpose, size, "processing", now),
            )
            row = db.execute("SELECT * FROM files WHERE sha256 = ?", (sha256,)).fetchone()
        return _file_record(row), True

    def set_file_status(self, file_id: str, status: str, *, details: dict | None = None, examples: int | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE files SET status = ?, status_details = ?, examples = COALESCE(?, examples) WHERE id = ?",
                (status, _dumps(details), examples, file_id),
            )

    def get_file(self, file_id: str) -> dict | None:
        rows = self._query("SELECT * FROM files WHERE id = ? AND deleted = 0", (file_id,))
        return _file_record(rows[0]) if rows else None

    def list_files(self, *, purpose: str | None = None, limit: int = 100) -> list[dict]:
        sql, params = "SELECT * FROM files WHERE deleted = 0", []
        if purpose:
            sql += " AND purpose = ?"
            params.append(purpose)
        sql += " ORDER BY created_at DESC, id LIMIT ?"
        params.append(limit)
        return [_file_record(r) for r in self._query(sql, params)]

    def delete_file(self, file_id: str) -> dict | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM files WHERE id = ? AND deleted = 0", (file_id,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE files SET deleted = 1 WHERE id = ?", (file_id,))
        return _file_record(row)

    def files_in_processing(self) -> list[dict]:
        return [_file_record(r) for r in self._query("SELECT * FROM files WHERE status = 'processing' AND deleted = 0")]

    def jobs_using_file(self, file_id: str, limit: int = 100) -> list[dict]:
        rows = self._query(
            "SELECT * FROM jobs WHERE training_file_id = ? OR validation_file_id = ? ORDER BY created_at DESC LIMIT ?",
            (file_id, file_id, limit),
        )
        return [_job_record(r) for r in rows]

    # -- jobs ----------------------------------------------------------------------------------------
    def create_job(self, *, payload: dict, model: str, training_type: str, training_file_id: str | None,
                   validation_file_id: str | None, idempotency_key: str | None) -> tuple[dict, bool]:
        """Insert a queued job. With an idempotency key already used, returns (that job, False)."""
        now = time.time()
        with self._tx() as db:
            if idempotency_key:
                row = db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if row is not None:
                    return _job_record(row), False
            job_id = new_job_id()
            db.execute(
                "INSERT INTO jobs (id, status, model, training_type, training_file_id, validation_file_id, payload, "
                "idempotency_key, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (job_id, "queued", model, training_type, training_file_id, validation_file_id, _dumps(payload),
                 idempotency_key, now, now),
            )
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_record(row), True

    def get_job_by_idempotency_key(self, key: str) -> dict | None:
        rows = self._query("SELECT * FROM jobs WHERE idempotency_key = ?", (key,))
        return _job_record(rows[0]) if rows else None

    def get_job(self, job_id: str) -> dict | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job_record(rows[0]) if rows else None

    def list_jobs(self, *, status: str | None = None, training_type: str | None = None,
                  created_after: float | None = None, limit: int = 50) -> list[dict]:
        sql, params = "SELECT * FROM jobs WHERE 1=1", []
        if status:
            sql += " AND status = ?"
            params.append(status)
        if training_type:
            sql += " AND training_type = ?"
            params.append(training_type)
        if created_after is not None:
            sql += " AND created_at > ?"
            params.append(created_after)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit)
        return [_job_record(r) for r in self._query(sql, params)]

    def request_start(self, job_id: str) -> dict | None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET start_requested_at = COALESCE(start_requested_at, ?), updated_at = ? WHERE id = ?",
                (time.time(), time.time(), job_id),
            )
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_record(row) if row else None

    def request_cancel(self, job_id: str) -> dict | None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?", (time.time(), job_id))
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_record(row) if row else None

    def cancel_requested(self, job_id: str) -> bool:
        rows = self._query("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0]["cancel_requested"])

    def next_startable_job(self) -> dict | None:
        rows = self._query(
            "SELECT * FROM jobs WHERE status = 'queued' AND start_requested_at IS NOT NULL "
            "ORDER BY start_requested_at, created_at LIMIT 1"
        )
        return _job_record(rows[0]) if rows else None

    def active_jobs(self) -> list[dict]:
        marks = ",".join("?" * len(ACTIVE_STATUSES))
        return [_job_record(r) for r in self._query(f"SELECT * FROM jobs WHERE status IN ({marks})", tuple(ACTIVE_STATUSES))]

    def set_job_status(self, job_id: str, status: str, *, error: dict | None = None, fine_tuned_model: str | None = None,
                       worker_pid: int | None = None, trained_tokens: int | None = None,
                       only_if_not_terminal: bool = True,
                       events: list[tuple[str, str, dict | None, str]] | None = None) -> bool:
        """Move a job to ``status``. Terminal states are final: returns False if the job already ended.

        ``events`` ((type, message, data, level) tuples) are written in the same transaction, so no reader ever
        sees a terminal status without its terminal events (or the other way round)."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT status, started_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or (only_if_not_terminal and row["status"] in TERMINAL_STATUSES):
                return False
            sets = ["status = ?", "updated_at = ?"]
            params: list[Any] = [status, now]
            if status == "running" and row["started_at"] is None:
                sets.append("started_at = ?")
                params.append(now)
            if status in TERMINAL_STATUSES:
                sets.append("finished_at = ?")
                params.append(now)
            if error is not None:
                sets.append("error = ?")
                params.append(_dumps(error))
            if fine_tuned_model is not None:
                sets.append("fine_tuned_model = ?")
                params.append(fine_tuned_model)
            if worker_pid is not None:
                sets.append("worker_pid = ?")
                params.append(worker_pid)
            if trained_tokens is not None:
                sets.append("trained_tokens = ?")
                params.append(trained_tokens)
            params.append(job_id)
            db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", params)
            db.execute(
                "INSERT INTO timeline (job_id, phase, message, metadata, created_at) VALUES (?,?,?,?,?)",
                (job_id, status, f"status -> {status}", _dumps({"error": error} if error else None), now),
            )
            for type_, message, data, level in events or []:
                self._insert_event(db, job_id, type_, message, data, level)
        return True

    @staticmethod
    def _insert_event(db: sqlite3.Connection, job_id: str, type: str, message: str, data: dict | None,
                      level: str) -> int:
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)).fetchone()[0]
        db.execute(
            "INSERT INTO events (job_id, seq, type, level, message, data, created_at) VALUES (?,?,?,?,?,?,?)",
            (job_id, seq, type, level, message, _dumps(data), time.time()),
        )
        return seq

    # -- events, metrics, timeline -------------------------------------------------------------------
    def add_event(self, job_id: str, type: str, message: str, data: dict | None = None, level: str = "info") -> int:
        with self._tx() as db:
            return self._insert_event(db, job_id, type, message, data, level)

    def list_events(self, job_id: str, *, since_seq: int = 0, limit: int = 200) -> list[dict]:
        rows = self._query(
            "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?", (job_id, since_seq, limit)
        )
        return [
            {"seq": r["seq"], "type": r["type"], "level": r["level"], "message": r["message"],
             "data": _loads(r["data"]) or {}, "created_at": _iso(r["created_at"]), "job_id": job_id}
            for r in rows
        ]

    def last_event_seq(self, job_id: str) -> int:
        return self._query("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?", (job_id,))[0][0]

    def add_metric(self, job_id: str, name: str, value: float, step: int, *, epoch: float | None = None,
                   phase: str | None = None, data: dict | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO metrics (job_id, name, value, step, epoch, phase, data, created_at) VALUES (?,?,?,?,?,?,?,?)",
                (job_id, name, float(value), int(step), epoch, phase, _dumps(data), time.time()),
            )

    def list_metrics(self, job_id: str, *, after_step: int = -1, limit: int = 500, name: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM metrics WHERE job_id = ? AND step > ?", [job_id, after_step]
        if name:
            sql += " AND name = ?"
            params.append(name)
        sql += " ORDER BY step, id LIMIT ?"
        params.append(limit)
        return [
            {"name": r["name"], "value": r["value"], "step": r["step"], "epoch": r["epoch"], "phase": r["phase"],
             "data": _loads(r["data"]) or {}, "created_at": _iso(r["created_at"])}
            for r in self._query(sql, params)
        ]

    def latest_metrics(self, job_id: str) -> dict[str, dict]:
        rows = self._query(
            "SELECT m.* FROM metrics m JOIN (SELECT name, MAX(id) AS id FROM metrics WHERE job_id = ? GROUP BY name) l "
            "ON m.id = l.id",
            (job_id,),
        )
        return {r["name"]: {"value": r["value"], "step": r["step"], "epoch": r["epoch"]} for r in rows}

    def add_timeline(self, job_id: str, phase: str, message: str, metadata: dict | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO timeline (job_id, phase, message, metadata, created_at) VALUES (?,?,?,?,?)",
                (job_id, phase, message, _dumps(metadata), time.time()),
            )

    def list_timeline(self, job_id: str, *, limit: int = 200) -> list[dict]:
        rows = self._query("SELECT * FROM timeline WHERE job_id = ? ORDER BY id LIMIT ?", (job_id, limit))
        return [
            {"phase": r["phase"], "message": r["message"], "metadata": _loads(r["metadata"]) or {},
             "created_at": _iso(r["created_at"])}
            for r in rows
        ]

    def list_models(self) -> list[dict]:
        rows = self._query(
            "SELECT * FROM jobs WHERE fine_tuned_model IS NOT NULL AND status = 'succeeded' ORDER BY finished_at DESC"
        )
        return [
            {"id": r["fine_tuned_model"], "object": "model", "base_model": r["model"], "job_id": r["id"],
             "status": "ready", "created_at": _iso(r["finished_at"]), "owned_by": "learning-mcp"}
            for r in rows
        ]


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def _file_record(row: sqlite3.Row) -> dict:
    details = _loads(row["status_details"])
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
        "status_details": details,
        "sha256": row["sha256"],
        "examples": row["examples"],
    }


def _job_record(row: sqlite3.Row) -> dict:
    payload = _loads(row["payload"]) or {}
    return {
        "id": row["id"],
        "job_id": row["id"],
        "object": "learning.job",
        "status": row["status"],
        "model": row["model"],
        "training_type": row["training_type"],
        "training_file_id": row["training_file_id"],
        "validation_file_id": row["validation_file_id"],
        "hyperparameters": payload.get("hyperparameters", {}),
        "metadata": payload.get("metadata", {}),
        "fine_tuned_model": row["fine_tuned_model"],
        "error": _loads(row["error"]),
        "trained_tokens": row["trained_tokens"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "started_at": _iso(row["started_at"]),
        "finished_at": _iso(row["finished_at"]),
        "start_requested": row["start_requested_at"] is not None,
        "cancel_requested": bool(row["cancel_requested"]),
        "idempotency_key": row["idempotency_key"],
        "_payload": payload,
        "_worker_pid": row["worker_pid"],
    }


# --------------------------------------------------------------------------------------------------------
# terminal job states (status and Synth's terminal event pair in one transaction)
# --------------------------------------------------------------------------------------------------------
def finish_failed(store: Store, job_id: str, code: str, message: str, *, data: dict | None = None) -> None:
    """Mark a job failed with Synth's terminal event pair."""
    error = {"code": code, "message": message, "param": None}
    store.set_job_status(job_id, "failed", error=error, events=[
        ("sft.job.failed", message, {"error": error, **(data or {})}, "error"),
        ("workflow.failed", message, {"error": error}, "error")])


def finish_cancelled(store: Store, job_id: str, message: str = "job cancelled") -> None:
    store.set_job_status(job_id, "cancelled", error={"code": "cancelled", "message": message, "param": None},
                         events=[("sft.job.cancelled", message, {}, "warning"),
                                 ("workflow.cancelled", message, {}, "warning")])
