"""The embedded learning backend: Synth's learning API (``learning-api.md`` §3) served by FastAPI on loopback.

Routes (all under ``/api``; the learning routes are also served under ``/api/v1`` for ``synth-ai status``):

* files — ``POST /learning/files`` and ``POST /files`` (multipart ``file`` + ``purpose``), ``GET`` one / list,
  ``DELETE``, ``GET /files/{id}/jobs``. Content-addressed: the same bytes give the same id. A file is
  ``processing`` while the dataset validator runs in the background, then ``ready`` or ``error``.
* jobs — create (``Idempotency-Key`` honoured), start, get, compact status, events, metrics, timeline, config,
  cancel, list; fine-tuned models; ``GET /health``.
* inference — ``POST /inference/v1/chat/completions`` (OpenAI shape) for base and ``ft:`` models.

Errors are ``{"detail": "<message>", "error": {"code", "message", "param"}}`` with a proper status. Training
runs in worker processes managed by :mod:`learning_mcp.backend.scheduler`; this process never imports torch
except to serve inference.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from learning_mcp import __version__
from learning_mcp.backend.payload import PayloadError, parse_job_payload
from learning_mcp.backend.scheduler import Scheduler, finish_cancelled
from learning_mcp.backend.store import TERMINAL_STATUSES, Store

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 4 * 1024**3
MAX_CURSOR = 2**63 - 1  # SQLite INTEGER range
TERMINAL_EVENT_TYPES = frozenset({"sft.job.completed", "sft.job.failed", "sft.job.cancelled", "workflow.completed",
                                  "workflow.failed", "workflow.cancelled"})
PUBLIC_JOB_KEYS = ("id", "job_id", "object", "status", "fine_tuned_model", "model", "training_type", "training_file_id",
                   "validation_file_id", "hyperparameters", "metadata", "error", "trained_tokens",
                   "created_at", "updated_at", "started_at", "finished_at", "start_requested", "cancel_requested")


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


def error_body(code: str, message: str, param: str | None = None) -> dict:
    return {"detail": message, "error": {"code": code, "message": message, "param": param}}


def public_job(job: dict) -> dict:
    return {key: job[key] for key in PUBLIC_JOB_KEYS}


def _not_found(kind: str, ident: str, hint: str) -> APIError:
    return APIError(404, f"{kind}_not_found", f"{kind} {ident!r} not found; {hint}", param=f"{kind}_id")


def _is_loopback(host: str) -> bool:
    return host in {"127.0.0.1", "localhost", "::1"} or host.startswith("127.")


class Backend:
    """Everything the routes share: the store, the scheduler, the lazily created inference engine."""

    def __init__(self, data_dir: Path, *, max_upload_bytes: int, max_concurrent_jobs: int):
        self.store = Store(data_dir)
        self.scheduler = Scheduler(self.store, max_concurrent=max_concurrent_jobs)
        self.max_upload_bytes = max_upload_bytes
        self._engine = None
        self._engine_lock = threading.Lock()

    def engine(self):
        with self._engine_lock:
            if self._engine is None:
                from learning_mcp.backend.inference import InferenceEngine

                self._engine = InferenceEngine(self.store.paths.models)
            return self._engine

    def validate_file_async(self, record: dict) -> None:
        threading.Thread(target=self._validate_file, args=(record,), daemon=True,
                         name=f"validate-{record['id']}").start()

    def _validate_file(self, record: dict) -> None:
        from learning_mcp.tools.dataset import validate_jsonl

        path = self.store.paths.file_path(record["sha256"])
        try:
            report = validate_jsonl(path, min_messages=1, max_errors=20)
        except Exception as exc:  # unreadable file: record it on the file
            self.store.set_file_status(record["id"], "error", details={"summary": f"unreadable: {exc}"})
            return
        details = {"summary": report.summary(), "errors": report.errors, "error_total": report.error_total,
                   "warnings": report.warnings[:20]}
        self.store.set_file_status(record["id"], "ready" if report.ok else "error", details=details,
                                   examples=report.examples)

    def resume_file_validation(self) -> None:
        for record in self.store.files_in_processing():
            self.validate_file_async(record)

    def close(self) -> None:
        self.scheduler.stop()
        if self._engine is not None:
            self._engine.close()


def create_app(data_dir: str | os.PathLike[str], *, api_key: str | None = None,
               max_upload_bytes: int | None = None, max_concurrent_jobs: int | None = None,
               run_scheduler: bool = True) -> FastAPI:
    """Build the backend app over ``data_dir``. ``api_key`` enables bearer auth on every route but health."""
    max_upload_bytes = max_upload_bytes or int(os.environ.get("LEARNING_MCP_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES))
    max_jobs = max_concurrent_jobs or int(os.environ.get("LEARNING_MCP_MAX_CONCURRENT_JOBS", "1"))
    backend = Backend(Path(data_dir), max_upload_bytes=max_upload_bytes, max_concurrent_jobs=max_jobs)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        backend.resume_file_validation()
        if run_scheduler:
            backend.scheduler.start()
        yield
        backend.close()
        for hook in app.state.shutdown_hooks:  # e.g. remove backend.json (uvicorn re-raises SIGTERM afterwards)
            hook()

    app = FastAPI(title="learning-mcp embedded learning backend", version=__version__, lifespan=lifespan,
                  description="Synth's learning API (files, SFT jobs, events, metrics, models, inference), "
                              "served locally and training with transformers + TRL + PEFT.")
    app.state.backend = backend
    from learning_mcp.backend.export import export_router

    app.include_router(export_router(backend.store.paths.models))  # POST /api/learning/models/{model}/export
    app.state.shutdown_hooks = []

    # -- errors ----------------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSONResponse(error_body(exc.code, exc.message, exc.param), status_code=exc.status)

    @app.exception_handler(PayloadError)
    async def _payload_error(_: Request, exc: PayloadError):
        return JSONResponse(error_body(exc.code, exc.message, exc.param), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
            problems.append(f"{loc or 'request'}: {err.get('msg')}")
        message = "; ".join(problems) or "invalid request"
        first_loc = exc.errors()[0].get("loc", ()) if exc.errors() else ()
        param = ".".join(str(p) for p in first_loc if p not in ("body", "query", "path", "header")) or None
        body = error_body("validation_error", message, param)
        body["errors"] = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        from starlette.requests import ClientDisconnect

        if isinstance(exc, ClientDisconnect):  # the caller went away (e.g. a cancelled eval): nothing to answer
            log.debug("client disconnected before the request was read")
            return JSONResponse(error_body("client_disconnected", "client disconnected"), status_code=499)
        log.exception("unhandled error")
        return JSONResponse(error_body("internal_error", f"internal error: {type(exc).__name__}"), status_code=500)

    # -- auth ------------------------------------------------------------------------------------------
    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and request.url.path not in ("/api/health", "/health"):
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return JSONResponse(error_body("invalid_api_key", "Invalid API key"), status_code=401)
        return await call_next(request)

    register_routes(app, backend)
    return app


def register_routes(app: FastAPI, backend: Backend) -> None:
    store = backend.store

    @app.get("/api/health", tags=["misc"])
    @app.get("/health", include_in_schema=False)
    async def health() -> dict:
        return {"status": "ok", "service": "learning-mcp-backend", "version": __version__,
                "data_dir": str(store.paths.root), "running_jobs": backend.scheduler.running_job_ids}

    # -- files -----------------------------------------------------------------------------------------
    async def upload(request: Request, file: UploadFile, purpose: str) -> JSONResponse:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > backend.max_upload_bytes + 1024 * 1024:
            raise _too_large(backend.max_upload_bytes, int(length))
        if purpose not in {"fine-tune", "validation", "fine_tune", "training"}:
            raise APIError(400, "invalid_purpose", f"purpose {purpose!r} is not supported; use 'fine-tune'",
                           param="purpose")
        tmp = store.paths.incoming / f"{uuid.uuid4().hex}.part"
        digest, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as out:
                while chunk := await file.read(1024 * 1024):
                    size += len(chunk)
                    if size > backend.max_upload_bytes:
                        raise _too_large(backend.max_upload_bytes, size)
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size == 0:
                raise APIError(400, "empty_file", "the uploaded file is empty", param="file")
            sha = digest.hexdigest()
            final = store.paths.file_path(sha)
            if final.exists():
                tmp.unlink()
            else:
                os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        record, created = store.add_file(sha256=sha, filename=Path(file.filename or "dataset.jsonl").name,
                                         purpose=purpose, size=size)
        if created:
            backend.validate_file_async(record)
        return JSONResponse(record, status_code=200)

    @app.post("/api/learning/files", tags=["files"])
    @app.post("/api/files", tags=["files"])
    @app.post("/api/v1/learning/files", include_in_schema=False)
    async def upload_file(request: Request, file: UploadFile = File(...), purpose: str = Form("fine-tune")):
        return await upload(request, file, purpose)

    @app.get("/api/learning/files", tags=["files"])
    @app.get("/api/files", tags=["files"])
    async def list_files(purpose: str | None = None, limit: int = Query(100, ge=1, le=1000)) -> dict:
        files = store.list_files(purpose=purpose, limit=limit)
        return {"object": "list", "data": files, "files": files}

    @app.get("/api/learning/files/{file_id}", tags=["files"])
    @app.get("/api/files/{file_id}", tags=["files"])
    async def get_file(file_id: str) -> dict:
        record = store.get_file(file_id)
        if record is None:
            raise _not_found("file", file_id, "upload it with POST /api/learning/files")
        return record

    @app.delete("/api/learning/files/{file_id}", tags=["files"])
    @app.delete("/api/files/{file_id}", tags=["files"])
    async def delete_file(file_id: str) -> dict:
        record = store.delete_file(file_id)
        if record is None:
            raise _not_found("file", file_id, "list files with GET /api/files")
        return {"id": file_id, "object": "file", "deleted": True}

    @app.get("/api/files/{file_id}/jobs", tags=["files"])
    async def file_jobs(file_id: str, limit: int = Query(100, ge=1, le=1000)) -> dict:
        if store.get_file(file_id) is None:
            raise _not_found("file", file_id, "list files with GET /api/files")
        jobs = [public_job(j) for j in store.jobs_using_file(file_id, limit)]
        return {"object": "list", "data": jobs, "jobs": jobs}

    # -- jobs ------------------------------------------------------------------------------------------
    def get_job_or_404(job_id: str) -> dict:
        job = store.get_job(job_id)
        if job is None:
            raise _not_found("job", job_id, "list jobs with GET /api/learning/jobs")
        return job

    @app.post("/api/learning/jobs", tags=["jobs"])
    async def create_job(request: Request, idempotency_key: str | None = Header(None, alias="Idempotency-Key")):
        try:
            body = await request.json()
        except ValueError:
            raise APIError(422, "invalid_json", "request body must be JSON") from None
        if idempotency_key and (existing := store.get_job_by_idempotency_key(idempotency_key)) is not None:
            return JSONResponse(public_job(existing), status_code=200)
        spec = parse_job_payload(body)
        for param, file_id in (("training_file_id", spec.training_file_id),
                               ("validation_file", spec.validation_file_id)):
            if file_id is None:
                continue
            record = store.get_file(file_id)
            if record is None:
                raise APIError(400, "file_not_found",
                               f"{param} {file_id!r} does not exist on this backend; upload it with "
                               "POST /api/learning/files and use the returned id", param=param)
            if record["status"] == "error":
                details = record.get("status_details") or {}
                raise APIError(400, "invalid_file",
                               f"{param} {file_id!r} failed validation: {details.get('summary', 'invalid dataset')}",
                               param=param)
        await _check_model(backend, spec.model)
        job, created = store.create_job(payload=body, model=spec.model, training_type=spec.training_type,
                                        training_file_id=spec.training_file_id,
                                        validation_file_id=spec.validation_file_id, idempotency_key=idempotency_key)
        if created:
            store.add_event(job["id"], "sft.created", "job created", {"model": spec.model,
                                                                      "training_file_id": spec.training_file_id})
            store.add_timeline(job["id"], "queued", "job created")
        return JSONResponse(public_job(job), status_code=200)

    @app.post("/api/learning/jobs/{job_id}/start", tags=["jobs"])
    async def start_job(job_id: str) -> dict:
        job = get_job_or_404(job_id)
        if job["status"] == "queued" and not job["start_requested"]:
            job = store.request_start(job_id)
            store.add_event(job_id, "sft.status", "start requested; waiting for a worker", {"status": "queued"})
            backend.scheduler.wake()
        return public_job(job)

    @app.get("/api/learning/jobs", tags=["jobs"])
    async def list_jobs(status: str | None = None, type: str | None = None, created_after: str | None = None,
                        limit: int = Query(50, ge=1, le=500)) -> dict:
        after = _parse_time(created_after) if created_after else None
        if status in {"canceled"}:
            status = "cancelled"
        jobs = [public_job(j) for j in store.list_jobs(status=status, training_type=type, created_after=after,
                                                       limit=limit)]
        return {"object": "list", "jobs": jobs, "data": jobs}

    @app.get("/api/learning/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str, include_metadata: bool = True) -> dict:
        job = get_job_or_404(job_id)
        record = public_job(job)
        record["latest_metrics"] = store.latest_metrics(job_id)
        record["last_event_seq"] = store.last_event_seq(job_id)
        return record

    @app.get("/api/learning/jobs/{job_id}/status", tags=["jobs"])
    async def job_status(job_id: str) -> dict:
        job = get_job_or_404(job_id)
        progress = [e for e in store.list_events(job_id, since_seq=0, limit=100000) if e["type"] == "sft.progress"]
        last = progress[-1]["data"] if progress else {}
        return {"job_id": job_id, "status": job["status"], "progress": last, "updated_at": job["updated_at"],
                "fine_tuned_model": job["fine_tuned_model"]}

    @app.get("/api/learning/jobs/{job_id}/events", tags=["jobs"])
    async def job_events(job_id: str, since_seq: int = Query(0, ge=0, le=MAX_CURSOR),
                         limit: int = Query(200, ge=1, le=1000)) -> dict:
        get_job_or_404(job_id)
        events = store.list_events(job_id, since_seq=since_seq, limit=limit)
        next_seq = events[-1]["seq"] if events else since_seq
        return {"job_id": job_id, "events": events, "next_seq": next_seq,
                "has_more": bool(events) and next_seq < store.last_event_seq(job_id)}

    @app.get("/api/learning/jobs/{job_id}/events/stream", include_in_schema=False)
    async def job_events_stream(job_id: str, since_seq: int = Query(0, ge=0, le=MAX_CURSOR)):
        """Server-sent events: one ``data: <event JSON>`` block per event, ending after the terminal event
        (the stream ``synth-ai train`` 0.3.5+ reads; polling ``/events`` is the primary contract)."""
        import anyio
        from starlette.responses import StreamingResponse

        get_job_or_404(job_id)

        async def stream():
            cursor, idle = since_seq, 0.0
            yield ": connected\n\n"
            while True:
                events = store.list_events(job_id, since_seq=cursor, limit=200)
                for event in events:
                    cursor = event["seq"]
                    yield f"data: {json.dumps(event)}\n\n"
                    if event["type"] in TERMINAL_EVENT_TYPES:
                        return
                if not events:
                    job = store.get_job(job_id)
                    if job is None or (job["status"] in TERMINAL_STATUSES
                                       and cursor >= store.last_event_seq(job_id)):
                        return
                    await anyio.sleep(0.5)
                    idle += 0.5
                    if idle >= 15:
                        idle = 0.0
                        yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/api/learning/jobs/{job_id}/metrics", tags=["jobs"])
    async def job_metrics(job_id: str, after_step: int = Query(-1, ge=-1, le=MAX_CURSOR),
                          limit: int = Query(500, ge=1, le=5000),
                          name: str | None = None, run_id: str | None = None) -> dict:
        get_job_or_404(job_id)
        return {"job_id": job_id, "points": store.list_metrics(job_id, after_step=after_step, limit=limit, name=name)}

    @app.get("/api/learning/jobs/{job_id}/timeline", tags=["jobs"])
    async def job_timeline(job_id: str, limit: int = Query(200, ge=1, le=1000)) -> dict:
        get_job_or_404(job_id)
        rows = store.list_timeline(job_id, limit=limit)
        return {"job_id": job_id, "events": rows, "timeline": rows}

    @app.get("/api/learning/jobs/{job_id}/config", tags=["jobs"])
    async def job_config(job_id: str) -> dict:
        return get_job_or_404(job_id)["_payload"]

    @app.post("/api/learning/jobs/{job_id}/cancel", tags=["jobs"])
    async def cancel_job(job_id: str) -> dict:
        job = get_job_or_404(job_id)
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

    # -- models ----------------------------------------------------------------------------------------
    @app.get("/api/learning/models", tags=["models"])
    async def list_models() -> dict:
        models = store.list_models()
        return {"object": "list", "data": models, "models": models}

    @app.get("/api/learning/models/{model_id:path}", tags=["models"])
    async def get_model(model_id: str) -> dict:
        for model in store.list_models():
            if model["id"] == model_id:
                return model
        raise _not_found("model", model_id, "list models with GET /api/learning/models")

    # -- inference ---------------------------------------------------------------------------------------
    @app.post("/api/inference/v1/chat/completions", tags=["inference"])
    @app.post("/api/v1/chat/completions", include_in_schema=False)
    @app.post("/v1/chat/completions", include_in_schema=False)
    async def chat_completions(request: Request):
        from learning_mcp.backend.inference import InferenceError

        try:
            body = await request.json()
        except ValueError:
            raise APIError(422, "invalid_json", "request body must be JSON") from None
        if not isinstance(body, dict):
            raise APIError(422, "invalid_request", "request body must be a JSON object")
        try:
            return await backend.engine().chat_completion(body)
        except InferenceError as exc:
            raise APIError(exc.status, exc.code, exc.message, exc.param) from None

    # /api/v1/learning/... aliases for `synth-ai status` (learning-api.md §9.15)
    for route in list(app.routes):
        path = getattr(route, "path", "")
        if path.startswith("/api/learning/") and hasattr(route, "endpoint"):
            app.add_api_route("/api/v1" + path[len("/api"):], route.endpoint, methods=list(route.methods),
                              include_in_schema=False)


def _too_large(limit: int, size: int) -> APIError:
    return APIError(413, "file_too_large",
                    f"file too large: {size} bytes exceeds this backend's limit of {limit} bytes "
                    f"({limit / 1024**2:.0f} MiB); split the dataset or raise LEARNING_MCP_MAX_UPLOAD_BYTES",
                    param="file")


def _parse_time(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise APIError(422, "invalid_created_after", "created_after must be an ISO time or epoch seconds",
                       param="created_after") from None


async def _check_model(backend: Backend, model: str) -> None:
    import anyio

    from learning_mcp.backend.modelref import ModelNotFoundError, ModelNotLoadableError, check_loadable

    try:
        await anyio.to_thread.run_sync(lambda: check_loadable(model, backend.store.paths.models))
    except (ModelNotLoadableError, ModelNotFoundError) as exc:
        raise APIError(400, "model_not_loadable", getattr(exc, "message", str(exc)), param="model") from None
