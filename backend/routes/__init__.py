"""The embedded backend's HTTP routes, one ``APIRouter`` per resource.

* :mod:`.files`, :mod:`.jobs`, :mod:`.models` — the learning API; together :data:`learning_router`, mounted once
  under ``/api/learning`` (in the spec) and once under ``/api/v1/learning`` (the prefix ``synth-ai status`` uses,
  learning-api.md §9.15, hidden from the spec); files are also served under ``/api/files``.
* :mod:`.inference` — chat completions under ``/api/inference/v1`` (and the ``/api/v1``, ``/v1`` aliases).
* :mod:`.health` — ``/api/health`` and ``/health``.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from learning_mcp.backend.routes import files, health, inference, jobs, models

learning_router = APIRouter()
for _resource in (files, jobs, models):
    learning_router.include_router(_resource.router)


def mount(app: FastAPI) -> None:
    """Add every route to ``app`` (paths as listed in the module docstring)."""
    app.include_router(health.router)
    app.include_router(learning_router, prefix="/api/learning")
    app.include_router(files.router, prefix="/api")
    app.include_router(learning_router, prefix="/api/v1/learning", include_in_schema=False)
    app.include_router(inference.router, prefix="/api/inference/v1")
    for alias in ("/api/v1", "/v1"):
        app.include_router(inference.router, prefix=alias, include_in_schema=False)
