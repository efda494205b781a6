"""The trace store: every sampled completion of a loop, with its reward, in one SQLite file.

Synth's ``eval`` writes v3 session traces and its ``filter`` reads ``outcome_rewards.total_reward``, which eval never
writes (learning-api.md §9 item 18). learning-mcp instead stores **one row per sample with its reward next to it**,
so the filter step is a plain query:

``samples(id INTEGER PK, run_id, iteration, phase, problem_id, split, model, sample_index, prompt (JSON messages),
completion, reward, finish_reason, metadata (JSON), created_at (epoch seconds))``, indexed on
``(run_id, iteration, phase)`` and ``problem_id``. ``phase`` is ``train_eval`` / ``val_eval`` / ``base_eval`` / ...
A sample whose ``finish_reason`` is ``"length"`` (cut off at ``max_tokens``) is *truncated*
(:attr:`TraceSample.truncated`); the filter does not train on those unless asked to.

Design:

* WAL journal, ``synchronous=NORMAL``: readers (another process running ``filter``) never block the writer.
* One connection shared by all threads behind a re-entrant lock – enough for one writer plus readers, and it makes
  ``":memory:"`` stores work in tests.
* :meth:`TraceStore.add_samples` inserts a batch in one transaction: an eval writes each problem's N samples as one
  batch, so a problem never has a partial sample set, and a failing batch leaves nothing behind.
* Summaries are computed by the pure :func:`summarize_rewards`, shared with ``evaluate``.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TRUNCATED_FINISH_REASONS", "TraceSample", "TraceStore", "summarize_rewards"]

# finish reasons that mean "cut off at max_tokens" (OpenAI/vLLM "length"); the filter drops these by default
TRUNCATED_FINISH_REASONS = frozenset({"length"})

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    iteration INTEGER NOT NULL,
    phase TEXT NOT NULL,
    problem_id TEXT NOT NULL,
    split TEXT,
    model TEXT,
    sample_index INTEGER NOT NULL DEFAULT 0,
    prompt TEXT NOT NULL,
    completion TEXT NOT NULL,
    reward REAL,
    finish_reason TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_run_iteration_phase ON samples (run_id, iteration, phase);
CREATE INDEX IF NOT EXISTS samples_problem ON samples (problem_id);
"""
_COLUMNS = (
    "run_id",
    "iteration",
    "phase",
    "problem_id",
    "split",
    "model",
    "sample_index",
    "prompt",
    "completion",
    "reward",
    "finish_reason",
    "metadata",
    "created_at",
)


@dataclass
class TraceSample:
    """One sampled completion. ``prompt`` is the chat messages sent; ``id`` is set once stored."""

    run_id: str
    iteration: int
    phase: str
    problem_id: str
    completion: str
    reward: float | None
    prompt: list[dict] = field(default_factory=list)
    split: str | None = None
    model: str | None = None
    sample_index: int = 0
    finish_reason: str | None = None
    metadata: dict = field(default_factory=dict)
    created_at: float | None = None
    id: int | None = None

    @property
    def truncated(self) -> bool:
        """True when generation was cut off at ``max_tokens`` (``finish_reason`` ``"length"``)."""
        return self.finish_reason in TRUNCATED_FINISH_REASONS

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "iteration": self.iteration,
            "phase": self.phase,
            "problem_id": self.problem_id,
            "split": self.split,
            "model": self.model,
            "sample_index": self.sample_index,
            "prompt": self.prompt,
            "completion": self.completion,
            "reward": self.reward,
            "finish_reason": self.finish_reason,
            "truncated": self.truncated,
            "metadata": self.metadata,
            "created_at": self.created_at,
        }


def summarize_rewards(rewards_by_problem: Mapping[str, Sequence[float | None]], *, threshold: float = 1.0) -> dict:
    """Pure: per-problem reward lists (in sample order) → the eval summary numbers.

    A sample is *correct* when ``reward >= threshold`` (binary rewards: reward == 1). ``pass_at_1`` is the mean over
    problems of each problem's share of correct samples – the unbiased pass@1 estimate, and with one greedy sample
    simply "first sample correct". ``pass_at_n`` is the share of problems with at least one correct sample.
    Problems with no samples count as unsolved. ``mean_reward`` is the mean raw reward over all samples.
    """
    problems = len(rewards_by_problem)
    samples = correct = solved_any = 0
    reward_sum = 0.0
    share_sum = 0.0
    for rewards in rewards_by_problem.values():
        values = [float(r) if r is not None else 0.0 for r in rewards]
        hits = sum(1 for r in values if r >= threshold)
        samples += len(values)
        correct += hits
        reward_sum += sum(values)
        if values:
            share_sum += hits / len(values)
        if hits:
            solved_any += 1
    return {
        "problems": problems,
        "samples": samples,
        "correct": correct,
        "solved_any": solved_any,
        "pass_at_1": share_sum / problems if problems else 0.0,
        "pass_at_n": solved_any / problems if problems else 0.0,
        "mean_reward": reward_sum / samples if samples else 0.0,
    }


def _as_list(value: Any) -> list | None:
    if value is None:
        return None
    if isinstance(value, (str, int)):
        return [value]
    values = list(value)
    return values or None


def _to_row(sample: TraceSample | Mapping[str, Any], now: float) -> tuple:
    data = sample.to_dict() if isinstance(sample, TraceSample) else dict(sample)
    missing = [key for key in ("run_id", "iteration", "phase", "problem_id") if data.get(key) is None]
    if missing:
        raise ValueError(f"sample is missing {', '.join(missing)}")
    prompt = data.get("prompt") or []
    metadata = data.get("metadata") or {}
    reward = data.get("reward")
    if reward is not None:
        reward = float(reward)
        if math.isnan(reward):
            raise ValueError(f"sample of problem {data['problem_id']!r} has a NaN reward")
    completion = data.get("completion")
    return (
        str(data["run_id"]),
        int(data["iteration"]),
        str(data["phase"]),
        str(data["problem_id"]),
        data.get("split"),
        data.get("model"),
        int(data.get("sample_index") or 0),
        prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False),
        "" if completion is None else str(completion),
        reward,
        data.get("finish_reason"),
        metadata if isinstance(metadata, str) else json.dumps(metadata, ensure_ascii=False, default=str),
        float(data["created_at"]) if data.get("created_at") is not None else now,
    )


def _from_row(row: sqlite3.Row) -> TraceSample:
    return TraceSample(
        id=row["id"],
        run_id=row["run_id"],
        iteration=row["iteration"],
        phase=row["phase"],
        problem_id=row["problem_id"],
        split=row["split"],
        model=row["model"],
        sample_index=row["sample_index"],
        prompt=json.loads(row["prompt"]) if row["prompt"] else [],
        completion=row["completion"],
        reward=row["reward"],
        finish_reason=row["finish_reason"],
        metadata=json.loads(row["metadata"]) if row["metadata"] else {},
        created_at=row["created_at"],
    )


def _where(
    *,
    run_id: str | None = None,
    iterations: int | Iterable[int] | None = None,
    phases: str | Iterable[str] | None = None,
    problem_ids: str | Iterable[str] | None = None,
    splits: str | Iterable[str] | None = None,
    models: str | Iterable[str] | None = None,
    min_reward: float | None = None,
    max_reward: float | None = None,
    min_created_at: float | None = None,
    max_created_at: float | None = None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if run_id is not None:
        clauses.append("run_id = ?")
        params.append(run_id)
    for column, values, cast in (
        ("iteration", iterations, int),
        ("phase", phases, str),
        ("problem_id", problem_ids, str),
        ("split", splits, str),
        ("model", models, str),
    ):
        listed = _as_list(values)
        if listed:
            clauses.append(f"{column} IN ({', '.join('?' for _ in listed)})")
            params.extend(cast(v) for v in listed)
    for column, op, value in (
        ("reward", ">=", min_reward),
        ("reward", "<=", max_reward),
        ("created_at", ">=", min_created_at),
        ("created_at", "<=", max_created_at),
    ):
        if value is not None:
            clauses.append(f"{column} {op} ?")
            params.append(float(value))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class TraceStore:
    """SQLite-backed sample store. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = str(path)
        if self.path != ":memory:":
            file_path = Path(self.path).expanduser()
            file_path.parent.mkdir(parents=True, exist_ok=True)
            self.path = str(file_path)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA busy_timeout = 30000")
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def journal_mode(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    # -- writes ----------------------------------------------------------------------------------------------------
    def add_samples(self, rows: Iterable[TraceSample | Mapping[str, Any]]) -> int:
        """Insert a batch in one transaction (all or nothing). Returns how many rows were inserted."""
        now = time.time()
        values = [_to_row(row, now) for row in rows]
        if not values:
            return 0
        sql = f"INSERT INTO samples ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(sql, values)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return len(values)

    def delete(self, run_id: str, *, iteration: int | None = None, phase: str | None = None) -> int:
        """Delete a run's rows (optionally one iteration / phase), e.g. before re-running an interrupted eval."""
        where, params = _where(run_id=run_id, iterations=iteration, phases=phase)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._conn.execute(f"DELETE FROM samples{where}", params)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return cursor.rowcount

    # -- reads -----------------------------------------------------------------------------------------------------
    def query(
        self,
        *,
        run_id: str | None = None,
        iterations: int | Iterable[int] | None = None,
        phases: str | Iterable[str] | None = None,
        problem_ids: str | Iterable[str] | None = None,
        splits: str | Iterable[str] | None = None,
        models: str | Iterable[str] | None = None,
        min_reward: float | None = None,
        max_reward: float | None = None,
        min_created_at: float | None = None,
        max_created_at: float | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[TraceSample]:
        """Samples matching every given selector (lists mean "any of"), in insertion order (``id``)."""
        where, params = _where(
            run_id=run_id,
            iterations=iterations,
            phases=phases,
            problem_ids=problem_ids,
            splits=splits,
            models=models,
            min_reward=min_reward,
            max_reward=max_reward,
            min_created_at=min_created_at,
            max_created_at=max_created_at,
        )
        sql = f"SELECT * FROM samples{where} ORDER BY id"
        if limit is not None or offset is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [-1 if limit is None else int(limit), int(offset or 0)]
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_from_row(row) for row in rows]

    def count(self, **selectors: Any) -> int:
        """How many samples match the :meth:`query` selectors (no limit/offset)."""
        where, params = _where(**selectors)
        with self._lock:
            return int(self._conn.execute(f"SELECT COUNT(*) FROM samples{where}", params).fetchone()[0])

    def summary(self, run_id: str, iteration: int, phase: str, *, threshold: float = 1.0) -> dict:
        """``{problems, samples, correct, solved_any, pass_at_1, pass_at_n, mean_reward}`` of one eval's rows."""
        where, params = _where(run_id=run_id, iterations=iteration, phases=phase)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT problem_id, reward FROM samples{where} ORDER BY id", params
            ).fetchall()
        by_problem: dict[str, list[float | None]] = {}
        for row in rows:
            by_problem.setdefault(row["problem_id"], []).append(row["reward"])
        return summarize_rewards(by_problem, threshold=threshold)
