"""The embedded learning backend: Synth's learning API (``learning-api.md`` §3) served by FastAPI on loopback.

:func:`create_app` builds the app from a data directory and the :class:`Settings` the launcher loaded once at
start-up (upload limit, concurrent jobs, API key, torch threads). The routes live in
:mod:`learning_mcp.backend.routes`, one router per resource (files, jobs, models, inference, health), and reach the
shared :class:`~learning_mcp.backend.state.Backend` through a dependency. Store-touching routes are plain ``def``
(FastAPI's thread pool), so SQLite never blocks the event loop that also runs the inference batcher.

Errors are ``{"detail": "<message>", "error": {"code", "message", "param"}}`` with a proper status: every expected
failure is a :class:`~learning_mcp.tools.errors.LearningMCPError` (the routes' ``APIError``, the SFT contract's
``ContractError``, ``InferenceError``, ``ModelRefError``) and one handler turns it into that body. FastAPI's own
request validation answers 422 (``validation_error``), except the SFT contract's rules, which keep their status
(400) and name the field. Training runs in worker processes managed by :mod:`learning_mcp.backend.scheduler`; this
process never imports torch except to serve inference.
"""

from __future__ import annotations

import hmac
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from learning_mcp import __version__
from learning_mcp.backend import routes
from learning_mcp.backend.routes.common import APIError
from learning_mcp.backend.routes.health import PUBLIC_PATHS
from learning_mcp.backend.state import Backend
from learning_mcp.tools.errors import LearningMCPError
from learning_mcp.tools.settings import Settings
from learning_mcp.tools.sft_contract import error_from_details

__all__ = ["APIError", "Backend", "create_app"]

log = logging.getLogger(__name__)
_LOCATION_PARTS = ("body", "query", "path", "header")


def _error(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse(LearningMCPError(code, message).error_body(), status_code=status)


def create_app(data_dir: str | os.PathLike[str], *, settings: Settings | None = None, api_key: str | None = None,
               max_upload_bytes: int | None = None, max_concurrent_jobs: int | None = None,
               run_scheduler: bool = True) -> FastAPI:
    """Build the backend app over ``data_dir``.

    ``settings``: the start-up settings (default ``Settings()``: the documented defaults, no environment read).
    ``api_key`` (else ``settings.backend_key``) enables bearer auth on every route but health;
    ``max_upload_bytes`` / ``max_concurrent_jobs`` override the settings' values.
    """
    settings = settings or Settings()
    overrides = {"max_upload_bytes": max_upload_bytes, "max_concurrent_jobs": max_concurrent_jobs}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    api_key = api_key or settings.local_key
    backend = Backend(Path(data_dir), settings)

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
    _add_error_handlers(app)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and request.url.path not in PUBLIC_PATHS:
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return _error("invalid_api_key", "Invalid API key", 401)
        return await call_next(request)

    routes.mount(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LearningMCPError)
    async def _expected(_: Request, exc: LearningMCPError):
        return JSONResponse(exc.error_body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            return _error("invalid_json", "request body must be JSON", 422)
        contract = error_from_details(errors, strip=_LOCATION_PARTS)
        if errors and errors[0].get("type") == "sft_contract":  # an SFT contract rule: its own status and text
            return JSONResponse(contract.error_body(), status_code=contract.status)
        problems = []
        for err in errors:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in _LOCATION_PARTS)
            problems.append(f"{loc or 'request'}: {err.get('msg')}")
        body = LearningMCPError("validation_error", "; ".join(problems) or "invalid request",
                                param=contract.param).error_body()
        body["errors"] = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(code, str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        if isinstance(exc, ClientDisconnect):  # the caller went away (e.g. a cancelled eval): nothing to answer
            log.debug("client disconnected before the request was read")
            return _error("client_disconnected", "client disconnected", 499)
        log.exception("unhandled error")
        return _error("internal_error", f"internal error: {type(exc).__name__}", 500)
