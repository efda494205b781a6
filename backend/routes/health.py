"""``GET /api/health`` (and ``/health``): liveness, version, data directory, running jobs. Never needs a key."""

from __future__ import annotations

from fastapi import APIRouter

from learning_mcp import __version__
from learning_mcp.backend.state import BackendDep

router = APIRouter(tags=["misc"])
PUBLIC_PATHS = frozenset({"/api/health", "/health"})


@router.get("/api/health")
@router.get("/health", include_in_schema=False)
def health(backend: BackendDep) -> dict:
    return {"status": "ok", "service": "learning-mcp-backend", "version": __version__,
            "data_dir": str(backend.store.paths.root), "running_jobs": backend.scheduler.running_job_ids}
