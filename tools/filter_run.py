"""The ``filter_traces`` tool: pick the database (explicit, the loop's, or the server's), merge a Synth filter
config with the call's overrides, run :func:`~learning_mcp.tools.filtering.filter_traces` in a worker thread and
validate what it wrote.

It never deletes or empties a file it did not create in the same call (issue 10): the pipeline writes to a
temporary file next to the output, which replaces the output only when at least one example was written (and
only with ``overwrite=true`` when the output already exists); with no match the output is left exactly as it
was and the temporary file, created by this call, is removed."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, Field

from learning_mcp.tools.errors import ToolFailure
from learning_mcp.tools.filtering import FilterConfigError, FilterSpec, load_filter_config
from learning_mcp.tools.filtering import filter_traces as run_filter
from learning_mcp.tools.jobs import validate_dataset_file
from learning_mcp.tools.traces import TraceStore


class FilterResult(BaseModel):
    output: str
    counts: dict[str, int] = Field(description="records left after each stage, in order")
    problems: int
    written: int
    truncated_dropped: int = Field(0, description="rewarded samples dropped as cut off at max_tokens "
                                                  "(finish_reason = length; keep them with keep_truncated = true)")
    valid: bool = Field(description="the output passes validate_dataset")
    message: str
    next_step: str


async def filter_traces_call(*, loops_root: Path, traces_db: Path, config: str | None, run_id: str | None,
                             db: str | None, output: str | None, reward_threshold: float | None,
                             max_per_problem: int | None, dedupe: bool | None, limit: int | None,
                             overwrite: bool) -> tuple[FilterResult, str]:
    """What the ``filter_traces`` tool does; returns ``(result, one-line summary)``. Raises ``ToolFailure``
    (invalid_filter_config, db_not_found, invalid_db, unknown_run, output_exists)."""
    base: dict[str, Any] = {}
    if config:
        try:
            base = dict(vars(load_filter_config(config)))
        except (FilterConfigError, ValueError, OSError) as exc:
            raise ToolFailure("invalid_filter_config", str(exc)) from None
    db_path = db or base.get("db")
    if not db_path and run_id:
        loop_db = loops_root / run_id / "traces.sqlite"
        db_path = str(loop_db if loop_db.is_file() else traces_db)
    db_path = db_path or str(traces_db)
    if not Path(db_path).is_file():
        raise ToolFailure("db_not_found", f"trace database not found: {db_path}; run eval or a loop first")
    overrides = {"run_id": run_id, "reward_threshold": reward_threshold, "max_per_problem": max_per_problem,
                 "dedupe": dedupe, "limit": limit}
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["db"] = db_path
    base["output"] = output or base.get("output") or str(
        Path(db_path).parent / f"filtered-{run_id or 'all'}-{int(time.time())}.jsonl")
    try:
        spec = FilterSpec(**base)
    except (FilterConfigError, TypeError, ValueError) as exc:
        raise ToolFailure("invalid_filter_config", str(exc)) from None
    out_path = Path(spec.output).expanduser().resolve()
    if out_path.exists() and not overwrite:
        raise ToolFailure("output_exists", f"{out_path} already exists; pass overwrite=true to replace it, or "
                                           "choose another output path")
    if out_path.exists() and not out_path.is_file():
        raise ToolFailure("output_exists", f"{out_path} exists and is not a regular file; choose another output path")
    staged = out_path.with_name(f".{out_path.stem}.{uuid.uuid4().hex[:12]}.filtering{out_path.suffix}")  # ours

    def work():
        try:
            store = TraceStore(db_path)
        except sqlite3.DatabaseError as exc:
            raise ToolFailure("invalid_db", f"{db_path} is not a trace database ({exc})") from None
        try:
            if spec.run_id is not None and not store.count(run_id=spec.run_id):  # before anything is written
                raise ToolFailure("unknown_run", f"no traces for run_id {spec.run_id!r} in {db_path}; eval returns "
                                                 "an eval_id, run_sft_loop a loop_id (list_loops lists them): pass "
                                                 "one of those as run_id, or leave run_id out to filter every run")
            report = run_filter(dataclasses.replace(spec, output=str(staged)), store)
        except sqlite3.DatabaseError as exc:
            raise ToolFailure("invalid_db", f"{db_path} is not a trace database ({exc})") from None
        finally:
            store.close()
        if report.counts.get("written"):
            os.replace(staged, out_path)  # atomic; replaces an existing output only with overwrite=true (above)
        message = (report.message or "").replace(str(staged), str(out_path))
        return dataclasses.replace(report, output=str(out_path), message=message)

    try:
        report = await anyio.to_thread.run_sync(work)
    finally:
        staged.unlink(missing_ok=True)  # nothing matched (or a failure): only our own temporary file goes
    valid = False
    if report.counts.get("written"):
        valid = (await anyio.to_thread.run_sync(lambda: validate_dataset_file(report.output))).ok
    written = report.counts.get("written", 0)
    out = FilterResult(output=report.output, counts=report.counts, problems=report.problems, written=written,
                       truncated_dropped=report.truncated_dropped, valid=valid, message=getattr(report, "message", "") or f"wrote {written} examples",
                       next_step=(f"upload_file(path={report.output!r}) then create_job(...)" if written else
                                  "Nothing matched: loosen the filter or sample more (eval with n > 1)."))
    return out, f"wrote {written} examples -> {report.output}"
