"""What the dataset and job tools do: validate → upload → create/start → status, over a :class:`LearningClient`.

The MCP layer (``server/``) only registers these and turns :class:`ToolFailure` into ``ToolError``; the ReST-EM
loop calls the same functions, so an agent driving the tools by hand and the loop do exactly the same thing.
Small pure helpers (status summaries, progress extraction, failure kinds) sit next to thin async I/O functions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

import anyio
from tenacity import (AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, stop_any,
                      wait_exponential)

from learning_mcp.tools.client import (FILE_READY, TERMINAL_STATUSES, LearningAPIError, LearningClient, job_id_of,
                                       normalize_status)
from learning_mcp.tools.dataset import DatasetFileError, validate_jsonl, write_head
from learning_mcp.tools.errors import ToolFailure, api_failure
from learning_mcp.tools.model_checks import preflight
from learning_mcp.tools.http import retryable_status
from learning_mcp.tools.records import Event, Job
from learning_mcp.tools.sft_config import ConfigError, build_sft_plan

log = logging.getLogger("learning_mcp.tools.jobs")

MAX_EVENTS_PER_CALL = 30
MAX_EVENT_MESSAGE_CHARS = 300
ProgressFn = Callable[[float, float | None, str], Awaitable[None]]


# ----------------------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------------------
def validate_dataset_file(path: str | os.PathLike, *, min_messages: int = 2, max_errors: int = 20,
                          examples: int | None = None, max_images_per_message: int | None = None):
    """Run the validator; file-level problems become a ToolFailure."""
    try:
        return validate_jsonl(path, min_messages=min_messages, max_errors=max_errors, examples=examples,
                              max_images_per_message=max_images_per_message)
    except DatasetFileError as exc:
        raise ToolFailure(exc.code, str(exc)) from None


def invalid_dataset_failure(report, *, what: str = "dataset") -> ToolFailure:
    lines = [f"- line {e['line']}: [{e['code']}] {e['message']}" for e in report.errors[:10]]
    more = f"\n(and {report.error_total - len(lines)} more)" if report.error_total > len(lines) else ""
    return ToolFailure(
        "dataset_invalid",
        f"{what} {report.path} has {report.error_total} error(s) in {report.examples} examples; nothing was "
        f"uploaded. Fix these lines (or call validate_dataset for the full report) and retry:\n"
        + "\n".join(lines) + more,
        data={"errors": report.errors, "error_counts": report.error_counts},
    )


@dataclass
class UploadOutcome:
    file_id: str
    filename: str
    bytes: int
    sha256: str | None
    status: str
    purpose: str
    examples: int | None
    validation: dict | None = None
    warnings: list[str] = field(default_factory=list)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


async def upload_dataset(client: LearningClient, path: str | os.PathLike, *, purpose: str = "fine-tune",
                         examples: int | None = None, validate: bool = True, min_messages: int = 2,
                         max_images_per_message: int | None = None, progress: ProgressFn | None = None,
                         wait_ready_s: float = 10.0) -> UploadOutcome:
    """Validate (unless told not to), optionally cut to the first N records, stream-upload, wait for ready."""
    if "\x00" in os.fspath(path):
        raise ToolFailure("invalid_path", "the dataset path holds a NUL character (\\x00); pass the real path of a "
                                          ".jsonl file")
    source = Path(path).expanduser()
    if not source.is_absolute():
        source = Path.cwd() / source
    if source.is_dir():
        raise ToolFailure("is_directory", f"{source} is a directory; pass the path of a .jsonl file")
    if not source.exists():
        raise ToolFailure("file_not_found", f"Dataset not found: {source} (relative paths resolve against the "
                                            f"server's working directory {Path.cwd()}; pass an absolute path)")
    if not source.is_file():  # /dev/zero, a FIFO: an upload of it would never end
        raise ToolFailure("not_a_regular_file", f"{source} is not a regular file (a device, pipe or socket); write "
                                                "the data to a .jsonl file and upload that")
    warnings: list[str] = []
    subset_dir: Path | None = None
    upload_path = source
    try:
        if examples is not None:
            try:
                upload_path = await anyio.to_thread.run_sync(lambda: write_head(source, examples))
            except (ValueError, DatasetFileError) as exc:
                raise ToolFailure("invalid_examples", str(exc)) from None
            subset_dir = upload_path.parent
            warnings.append(f"uploading only the first {examples} records of {source.name}")
        report_dict = None
        if validate:
            report = await anyio.to_thread.run_sync(lambda: validate_dataset_file(
                upload_path, min_messages=min_messages, max_images_per_message=max_images_per_message))
            if not report.ok:
                raise invalid_dataset_failure(report)
            report_dict = {"ok": True, "examples": report.examples, "warnings": report.warnings}
            warnings.extend(report.warnings)
        size = upload_path.stat().st_size

        async def on_bytes(done: int, total: int) -> None:
            if progress is not None:
                await progress(done, total, f"uploaded {done / 1e6:.1f} of {total / 1e6:.1f} MB")

        try:
            record = await client.upload_file(upload_path, purpose=purpose, on_progress=on_bytes)
        except LearningAPIError as exc:
            hint = "The file is larger than the API accepts; split it." if exc.status == 413 else ""
            raise api_failure(exc, action=f"uploading {upload_path.name}", hint=hint) from None
        file_id = record["id"]
        status = str(record.get("status") or "ready").lower()
        if status not in FILE_READY and status != "error" and wait_ready_s > 0:
            try:
                record = await client.wait_for_file(file_id, timeout_s=wait_ready_s,
                                                    interval_s=0.5 if not client.target.is_synth else 2.0)
            except LearningAPIError as exc:
                raise api_failure(exc, action=f"checking file {file_id}") from None
            status = str(record.get("status") or "ready").lower()
        if status == "error":
            details = record.get("status_details") or {}
            raise ToolFailure("file_rejected", f"the learning API rejected {file_id}: "
                                               f"{details.get('summary') or details or 'invalid dataset'}")
        if status not in FILE_READY:
            warnings.append(f"file {file_id} is still '{status}'; job creation re-validates it, you can go on")
        sha = record.get("sha256") or await anyio.to_thread.run_sync(lambda: _sha256_of(upload_path))
        return UploadOutcome(file_id=file_id, filename=record.get("filename") or upload_path.name,
                             bytes=int(record.get("bytes") or size), sha256=sha, status=status, purpose=purpose,
                             examples=record.get("examples") or (report_dict or {}).get("examples"),
                             validation=report_dict, warnings=warnings)
    finally:
        if subset_dir is not None:
            shutil.rmtree(subset_dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# jobs
# ----------------------------------------------------------------------------------------------------------
@dataclass
class CreateOutcome:
    job_id: str | None
    status: str
    started: bool
    start_error: str | None
    payload: dict
    warnings: list[str]
    dropped_keys: list[str]
    model: str
    training_file_id: str | None
    validation_file_id: str | None
    dry_run: bool
    uploads: list[UploadOutcome]
    ignored_keys: list[str] = field(default_factory=list)


async def create_job_from_config(client: LearningClient, config: str | dict, *, dataset: str | None = None,
                                 training_file_id: str | None = None, validation_file_id: str | None = None,
                                 validation_dataset: str | None = None, model: str | None = None, start: bool = True,
                                 dry_run: bool = False, examples: int | None = None,
                                 idempotency_key: str | None = None, progress: ProgressFn | None = None,
                                 environ: Mapping[str, str] | None = None) -> CreateOutcome:
    """Build the payload from the TOML exactly as Synth's CLI does, upload what is needed, create and start.
    ``config``: a path or TOML text (one rule: :mod:`~learning_mcp.tools.config_source`) or the parsed table.
    ``environ``: the server's ``Settings.environ`` (``SDK_EXPERIMENTAL*``); None: the process environment."""
    if dataset and training_file_id:
        raise ToolFailure("conflicting_arguments", "pass either dataset (a local JSONL path) or training_file_id "
                                                   "(from upload_file), not both")
    target = "synth" if client.target.is_synth else "local"
    try:
        plan = await anyio.to_thread.run_sync(lambda: build_sft_plan(
            config, dataset=dataset, training_file_id=training_file_id, validation_file_id=validation_file_id,
            model=model, target=target, require_dataset_path=training_file_id is None, environ=environ))
    except ConfigError as exc:
        param = f" (field: {exc.param})" if getattr(exc, "param", None) else ""
        raise ToolFailure(f"config_{exc.code}" if not exc.code.startswith("config") else exc.code,
                          f"{exc.message}{param}") from None
    warnings = list(plan.warnings)
    uploads: list[UploadOutcome] = []
    max_images = getattr(plan, "max_images_per_message", None)
    val_path = Path(validation_dataset) if validation_dataset else plan.validation_path
    # images on a text-only model, LoRA target_modules that match nothing: refused before any upload
    await anyio.to_thread.run_sync(lambda: preflight(plan, dataset=plan.dataset_path, validation_dataset=val_path))
    if dry_run:
        for what, path in (("training", plan.dataset_path), ("validation", val_path)):
            if path is not None:
                report = await anyio.to_thread.run_sync(lambda p=path: validate_dataset_file(
                    p, max_images_per_message=max_images))
                if not report.ok:
                    raise invalid_dataset_failure(report, what=f"{what} dataset")
                warnings.append(f"{what} dataset {path}: {report.summary()}")
        for param, file_id in (("training_file_id", training_file_id), ("validation_file_id", validation_file_id)):
            if file_id:  # the ids a real run would send: a missing one is warned about (a read-only GET)
                try:
                    await client.get_file(file_id)
                except LearningAPIError as exc:
                    if exc.status != 404:
                        raise api_failure(exc, action=f"checking {param}") from None
                    warnings.append(f"{param} {file_id!r} does not exist on the learning API: a real create_job would "
                                    "be refused; upload the dataset with upload_file(path) and pass the file_id it "
                                    "returns (or pass dataset=<path>)")
        payload = plan.with_files(training_file_id or "<uploaded on a real run>", validation_file_id)
        return CreateOutcome(None, "dry_run", False, None, payload, warnings, plan.dropped_keys, plan.model,
                             training_file_id, validation_file_id, True, [], plan.ignored_keys)
    if training_file_id is None:
        if plan.dataset_path is None:
            raise ToolFailure("missing_dataset", "no dataset: pass dataset=<path to a JSONL>, training_file_id=<id "
                                                 "from upload_file>, or set [job].data in the config")
        up = await upload_dataset(client, plan.dataset_path, examples=examples, progress=progress,
                                  max_images_per_message=max_images)
        uploads.append(up)
        training_file_id = up.file_id
        warnings.extend(up.warnings)
    if validation_file_id is None and val_path is not None:
        try:
            vup = await upload_dataset(client, val_path, max_images_per_message=max_images)
            uploads.append(vup)
            validation_file_id = vup.file_id
        except LearningAPIError:
            raise
        except ToolFailure as exc:  # Synth: a failed validation upload is only a warning
            warnings.append(f"validation file not used: {exc.message}")
    payload = plan.with_files(training_file_id, validation_file_id)
    key = idempotency_key or f"learning-mcp-{uuid.uuid4().hex}"
    try:
        record = await client.create_job(payload, idempotency_key=key)
    except LearningAPIError as exc:
        raise api_failure(exc, action="creating the job",
                          hint="Fix the field named above (in the TOML, or the create_job argument of that name: "
                               "model, training_file_id, validation_file_id) and call create_job again.") from None
    job_id = job_id_of(record)
    if not job_id:
        raise ToolFailure("invalid_response", f"the learning API created a job but returned no id: {str(record)[:200]}")
    status = normalize_status(record.get("status")) or "queued"
    started, start_error = False, None
    if start:
        try:
            started_record = await client.start_job(job_id)
            status = normalize_status(started_record.get("status")) or status
            started = True
        except LearningAPIError as exc:
            start_error = f"start returned HTTP {exc.status}: {exc.detail}" if exc.status else exc.detail
    return CreateOutcome(job_id, status, started, start_error, payload, warnings, plan.dropped_keys, plan.model,
                         training_file_id, validation_file_id, False, uploads, plan.ignored_keys)


def error_dict(error: Any) -> dict | None:
    """A job record's ``error`` as ``{code?, message, ...}``: the embedded backend sends an object, other APIs
    may send a bare string (Synth documents the field loosely)."""
    if error is None or error == "" or isinstance(error, dict):
        return error or None
    return {"message": str(error)}


def time_text(value: Any) -> str | None:
    """A timestamp as text: ISO strings pass through; epoch seconds (OpenAI-style records) become ISO-8601 UTC."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
        except (OverflowError, OSError, ValueError):
            pass
    return str(value)


def failure_kind(status: str, error: dict | str | None) -> str | None:
    if status == "cancelled":
        return "cancelled"
    if status != "failed":
        return None
    code = (error_dict(error) or {}).get("code") or ""
    if code in {"invalid_training_file", "invalid_file", "file_not_found", "dataset_invalid", "no_trainable_examples",
                "invalid_dataset"}:
        return "validation"
    if code in {"worker_crashed", "backend_restarted", "internal_error", "out_of_memory"}:
        return "infrastructure"
    return "training"


def progress_from_events(events: list[Event]) -> dict | None:
    for event in reversed(events):
        if event.type == "sft.progress" and event.data:
            return {k: event.data.get(k) for k in ("step", "total_steps", "epoch", "loss")}
    return None


def fine_tuned_model_of(job: Job, events: list[Event]) -> str | None:
    if job.fine_tuned_model:
        return job.fine_tuned_model
    for event in reversed(events):
        if event.data.get("fine_tuned_model"):
            return event.data["fine_tuned_model"]
    return None


def compact_event(event: Event) -> dict:
    message = event.message
    if len(message) > MAX_EVENT_MESSAGE_CHARS:
        message = message[:MAX_EVENT_MESSAGE_CHARS] + "…"
    data = {k: v for k, v in event.data.items() if k != "traceback" and not isinstance(v, (dict, list)) or k == "error"}
    return {"seq": event.seq, "type": event.type, "level": event.level, "message": message, "data": data,
            "created_at": time_text(event.created_at)}


def next_poll_seconds(status: str, started: float | None = None) -> float | None:
    if status in TERMINAL_STATUSES:
        return None
    return 5.0 if status in {"queued", "validating_files"} else 3.0


@dataclass
class JobSnapshot:
    record: Job
    events: list[Event]
    next_since_seq: int
    progress: dict | None
    latest_metrics: dict
    more_events: bool


async def _fetch_snapshot(client: LearningClient, job_id: str, since_seq: int) -> JobSnapshot:
    record = await client.job(job_id)
    events = await client.events(job_id, since_seq=since_seq, limit=200)
    more = len(events) > MAX_EVENTS_PER_CALL
    shown = events[:MAX_EVENTS_PER_CALL]
    next_seq = max([since_seq] + [e.seq for e in shown])
    progress = progress_from_events(events)
    if progress is None:
        try:
            compact = await client.get_compact_status(job_id)
            progress = compact.get("progress") or None
        except LearningAPIError:
            progress = None
    latest = record.latest_metrics
    if not isinstance(latest, dict):
        latest = {}
        try:
            for point in await client.get_metrics(job_id, limit=1000):
                latest[point["name"]] = {"value": point.get("value"), "step": point.get("step")}
        except LearningAPIError:
            pass
    return JobSnapshot(record, shown, next_seq, progress, latest, more)


def wait_poll_seconds(client: LearningClient) -> float:
    """How often :func:`job_status` re-reads a job while it waits: 0.25 s against the embedded backend on
    loopback (so a job's end reaches the caller within ~0.5 s; tests/bench/bench_wait.py), 1 s elsewhere."""
    return 0.25 if client.target.kind == "local" else 1.0


async def job_status(client: LearningClient, job_id: str, *, since_seq: int = 0, wait_seconds: float = 0) -> JobSnapshot:
    """One status read; with ``wait_seconds`` it returns as soon as the status changes or new events arrive."""
    try:
        snap = await _fetch_snapshot(client, job_id, since_seq)
        deadline = time.monotonic() + max(0.0, min(wait_seconds, 50.0))
        first_status = snap.record.status
        while (not snap.events and snap.record.status == first_status
               and first_status not in TERMINAL_STATUSES and time.monotonic() < deadline):
            await anyio.sleep(min(wait_poll_seconds(client), max(0.05, deadline - time.monotonic())))
            snap = await _fetch_snapshot(client, job_id, since_seq)
        return snap
    except LearningAPIError as exc:
        if exc.status == 404:
            raise ToolFailure("unknown_job", f"Unknown job_id {job_id!r} on {client.target.api_base}; use the job_id "
                                             "returned by create_job, or call list_jobs") from None
        raise api_failure(exc, action=f"reading job {job_id}") from None


async def wait_for_job(client: LearningClient, job_id: str, *, timeout_s: float, poll_s: float = 2.0,
                       should_stop: Callable[[], bool] | None = None, outage_s: float = 600.0,
                       outage_max_wait_s: float = 30.0) -> Job:
    """Poll until terminal (for the loop; tools use the bounded :func:`job_status`).

    Durable through API outages (issue 10): a read that fails because the API is unreachable or answers a
    retryable status (408, 429, 5xx) is retried — after the client's own short retries — with capped
    exponential backoff (tenacity ``wait_exponential``, 1 s doubling to ``outage_max_wait_s``) for up to
    ``outage_s`` seconds of continuous outage, re-attaching to the same ``job_id`` (nothing is created here, so
    an outage can never duplicate a job). Each outage is logged once on stderr. ``should_stop`` ends the wait
    early, outage or not. Raises ``LearningAPIError`` when the outage outlasts ``outage_s``, ``ToolFailure``
    ``job_timeout`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s

    def stopping(_state: RetryCallState) -> bool:
        return should_stop is not None and should_stop()

    def before_sleep(state: RetryCallState) -> None:
        if state.attempt_number == 1:
            log.warning("job %s: the learning API is not answering (%s); retrying for up to %.0fs",
                        job_id, state.outcome.exception() if state.outcome else "?", outage_s)

    async def read(fn: Callable[[], Awaitable[Any]]) -> Any:
        retrying = AsyncRetrying(retry=retry_if_exception(_outage), reraise=True, before_sleep=before_sleep,
                                 wait=wait_exponential(multiplier=1, min=1, max=outage_max_wait_s),
                                 stop=stop_any(stop_after_delay(outage_s), stopping))
        async for attempt in retrying:
            with attempt:
                return await fn()

    while True:
        record = await read(lambda: client.job(job_id))
        if record.status in TERMINAL_STATUSES:
            if not record.fine_tuned_model and record.status == "succeeded":
                events = await read(lambda: client.events(job_id, since_seq=0, limit=1000))
                record.fine_tuned_model = fine_tuned_model_of(record, events)
            return record
        if time.monotonic() > deadline:
            raise ToolFailure("job_timeout", f"job {job_id} did not finish within {timeout_s:.0f}s "
                                             f"(status {record.status})")
        if should_stop is not None and should_stop():
            return record
        await anyio.sleep(poll_s)


def _outage(exc: BaseException) -> bool:
    """A failure an outage explains: unreachable, or 408/429/5xx (the HTTP layer's retryable statuses)."""
    return isinstance(exc, LearningAPIError) and (exc.status is None or retryable_status(exc.status))
