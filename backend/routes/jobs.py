"""Jobs: create (``Idempotency-Key`` honoured), start, get, compact status, events (JSON and SSE), metrics,
timeline, config, cancel, list (``learning-api.md`` §3.3–§3.8).

The create body is the SFT contract's :class:`SFTJobPayload` (``tools/sft_contract.py``): FastAPI validates it, so
the OpenAPI spec shows its schema and anything the trainer cannot run is refused here with the field named, never
first inside the worker. Routes are plain ``def`` (thread pool: SQLite stays off the event loop); the SSE stream
reads the store through ``anyio.to_thread``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, Body, Header, Query, Request
from starlette.responses import StreamingResponse

from learning_mcp.backend.modelref import ModelRefError, check_loadable
from learning_mcp.backend.preflight import check_new_job
from learning_mcp.backend.routes.common import MAX_CURSOR, APIError, not_found, public_job
from learning_mcp.backend.state import Backend, BackendDep
from learning_mcp.backend.store import TERMINAL_STATUSES, finish_cancelled
from learning_mcp.tools.sft_contract import SFTJobPayload

router = APIRouter(prefix="/jobs", tags=["jobs"])
TERMINAL_EVENT_TYPES = frozenset({"sft.job.completed", "sft.job.failed", "sft.job.cancelled", "workflow.completed",
                                  "workflow.failed", "workflow.cancelled"})


def _job_or_404(backend: Backend, job_id: str) -> dict:
    job = backend.store.get_job(job_id)
    if job is None:
        raise not_found("job", job_id, "call list_jobs for the job ids (GET /api/learning/jobs)")
    return job


def _check_files(backend: Backend, spec: SFTJobPayload) -> None:
    for param, file_id in (("training_file_id", spec.training_file_id), ("validation_file", spec.validation_file_id)):
        if file_id is None:
            continue
        record = backend.store.get_file(file_id)
        if record is None:
            raise APIError(400, "file_not_found",
                           f"{param} {file_id!r} does not exist on this backend; upload the dataset with "
                           "upload_file(path=...) (POST /api/learning/files) and pass the returned file_id", param=param)
        if record["status"] == "error":
            details = record.get("status_details") or {}
            raise APIError(400, "invalid_file",
                           f"{param} {file_id!r} failed validation: {details.get('summary', 'invalid dataset')}",
                           param=param)


def _check_model(backend: Backend, model: str, request: Request) -> None:
    try:
        backend.guard_model(model, request)  # local paths outside the data dir: only with the key (limits.py)
        check_loadable(model, backend.store.paths.models)
    except ModelRefError as exc:
        raise APIError(400, "model_not_loadable", exc.message, param="model") from None


@router.post("")
def create_job(spec: Annotated[SFTJobPayload, Body()], backend: BackendDep, request: Request,
               idempotency_key: str | None = Header(None, alias="Idempotency-Key")) -> dict:
    """Create a queued SFT job (start it with ``POST /jobs/{job_id}/start``); the same ``Idempotency-Key`` returns
    the job created first. Errors: 400 naming the field (contract, unknown or invalid file, model not loadable),
    422 when the body is not a JSON object."""
    store = backend.store
    if idempotency_key and (existing := store.get_job_by_idempotency_key(idempotency_key)) is not None:
        return public_job(existing)
    _check_files(backend, spec)
    _check_model(backend, spec.model, request)
    check_new_job(spec, store)  # images on a text-only model, LoRA target_modules (backend/preflight.py)
    job, created = store.create_job(payload=spec.body, model=spec.model, training_type=spec.training_type,
                                    training_file_id=spec.training_file_id,
                                    validation_file_id=spec.validation_file_id, idempotency_key=idempotency_key)
    if created:
        store.add_event(job["id"], "sft.created", "job created", {"model": spec.model,
                                                                  "training_file_id": spec.training_file_id})
        store.add_timeline(job["id"], "queued", "job created")
    return public_job(job)


@router.post("/{job_id}/start")
def start_job(job_id: str, backend: BackendDep) -> dict:
    store = backend.store
    job = _job_or_404(backend, job_id)
    if job["status"] == "queued" and not job["start_requested"]:
        job = store.request_start(job_id)
        store.add_event(job_id, "sft.status", "start requested; waiting for a worker", {"status": "queued"})
        backend.scheduler.wake()
    return public_job(job)


def _parse_time(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise APIError(422, "invalid_created_after", "created_after must be an ISO time or epoch seconds",
                       param="created_after") from None


@router.get("")
def list_jobs(backend: BackendDep, status: str | None = None, type: str | None = None,
              created_after: str | None = None, limit: int = Query(50, ge=1, le=500)) -> dict:
    after = _parse_time(created_after) if created_after else None
    if status in {"canceled"}:
        status = "cancelled"
    jobs = [public_job(j) for j in backend.store.list_jobs(status=status, training_type=type, created_after=after,
                                                           limit=limit)]
    return {"object": "list", "jobs": jobs, "data": jobs}


@router.get("/{job_id}")
def get_job(job_id: str, backend: BackendDep, include_metadata: bool = True) -> dict:
    record = public_job(_job_or_404(backend, job_id))
    record["latest_metrics"] = backend.store.latest_metrics(job_id)
    record["last_event_seq"] = backend.store.last_event_seq(job_id)
    return record


@router.get("/{job_id}/status")
def job_status(job_id: str, backend: BackendDep) -> dict:
    job = _job_or_404(backend, job_id)
    events = backend.store.list_events(job_id, since_seq=0, limit=100000)
    progress = [e for e in events if e["type"] == "sft.progress"]
    last = progress[-1]["data"] if progress else {}
    return {"job_id": job_id, "status": job["status"], "progress": last, "updated_at": job["updated_at"],
            "fine_tuned_model": job["fine_tuned_model"]}


@router.get("/{job_id}/events")
def job_events(job_id: str, backend: BackendDep, since_seq: int = Query(0, ge=0, le=MAX_CURSOR),
               limit: int = Query(200, ge=1, le=1000)) -> dict:
    _job_or_404(backend, job_id)
    events = backend.store.list_events(job_id, since_seq=since_seq, limit=limit)
    next_seq = events[-1]["seq"] if events else since_seq
    return {"job_id": job_id, "events": events, "next_seq": next_seq,
            "has_more": bool(events) and next_seq < backend.store.last_event_seq(job_id)}


@router.get("/{job_id}/events/stream", include_in_schema=False)
async def job_events_stream(job_id: str, backend: BackendDep, since_seq: int = Query(0, ge=0, le=MAX_CURSOR)):
    """Server-sent events: one ``data: <event JSON>`` block per event, ending after the terminal event
    (the stream ``synth-ai train`` 0.3.5+ reads; polling ``/events`` is the primary contract)."""
    store = backend.store
    await anyio.to_thread.run_sync(_job_or_404, backend, job_id)

    def finished(cursor: int) -> bool:
        job = store.get_job(job_id)
        return job is None or (job["status"] in TERMINAL_STATUSES and cursor >= store.last_event_seq(job_id))

    async def stream():
        cursor, idle = since_seq, 0.0
        yield ": connected\n\n"
        while True:
            events = await anyio.to_thread.run_sync(lambda: store.list_events(job_id, since_seq=cursor, limit=200))
            for event in events:
                cursor = event["seq"]
                yield f"data: {json.dumps(event)}\n\n"
                if event["type"] in TERMINAL_EVENT_TYPES:
                    return
            if not events:
                if await anyio.to_thread.run_sync(finished, cursor):
                    return
                await anyio.sleep(0.5)
                idle += 0.5
                if idle >= 15:
                    idle = 0.0
                    yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{job_id}/metrics")
def job_metrics(job_id: str, backend: BackendDep, after_step: int = Query(-1, ge=-1, le=MAX_CURSOR),
                limit: int = Query(500, ge=1, le=5000), name: str | None = None, run_id: str | None = None) -> dict:
    _job_or_404(backend, job_id)
    return {"job_id": job_id,
            "points": backend.store.list_metrics(job_id, after_step=after_step, limit=limit, name=name)}


@router.get("/{job_id}/timeline")
def job_timeline(job_id: str, backend: BackendDep, limit: int = Query(200, ge=1, le=1000)) -> dict:
    _job_or_404(backend, job_id)
    rows = backend.store.list_timeline(job_id, limit=limit)
    return {"job_id": job_id, "events": rows, "timeline": rows}


@router.get("/{job_id}/config")
def job_config(job_id: str, backend: BackendDep) -> dict:
    return _job_or_404(backend, job_id)["_payload"]


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, backend: BackendDep) -> dict:
    store = backend.store
    job = _job_or_404(backend, job_id)
    if job["status"] in TERMINAL_STATUSES:
        record = public_job(job)
        record["message"] = f"job already {job['status']}; nothing to cancel"
        return record
    store.request_cancel(job_id)
    if job["status"] == "queued":
        finish_cancelled(store, job_id, "cancelled before it started")
        message = "job cancelled"
    else:
        store.add_event(job_id, "sft.status", "cancel requested; stopping the worker", {"status": job["status"]},
                        level="warning")
        message = "cancel requested; the job stops within seconds"
    backend.scheduler.wake()
    record = public_job(store.get_job(job_id))
    record["message"] = message
    return record
