"""``GET /api/health`` (and ``/health``): liveness. Never needs a key.

Without the key (when one is configured) it says only ``{"status": "ok"}``; with the key, or when no key is
configured (the launcher then listens on loopback only), it adds version, data directory, running jobs and which
inference engine serves chat completions (``inference_engine``: the setting, ``transformers`` or ``vllm`` once
chosen, and why).
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request

from learning_mcp import __version__
from learning_mcp.backend.state import BackendDep

router = APIRouter(tags=["misc"])
PUBLIC_PATHS = frozenset({"/api/health", "/health"})


def has_key(request: Request, key: str | None) -> bool:
    """True when no key is configured or the request's ``Authorization: Bearer`` carries it (constant time)."""
    if not key:
        return True
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else ""
    return hmac.compare_digest(token.encode(), key.encode())


@router.get("/api/health")
@router.get("/health", include_in_schema=False)
def health(request: Request, backend: BackendDep) -> dict:
    if not has_key(request, getattr(request.app.state, "api_key", None)):
        return {"status": "ok"}
    body = {"status": "ok", "service": "learning-mcp-backend", "version": __version__,
            "data_dir": str(backend.store.paths.root), "running_jobs": backend.scheduler.running_job_ids}
    choice = backend.engine_choice  # decided at start ("vllm") or when the first request created the engine
    body["inference_engine"] = {"setting": backend.settings.inference_engine,
                                "engine": choice.engine if choice else None,
                                "reason": choice.reason if choice else "decided on the first inference request"}
    engine = backend.engine_if_created()
    if engine is not None:  # generation counters (decode steps, abandoned requests) and queue length
        body["inference"] = {**engine.stats, "queued": engine.queued()}
    return body
