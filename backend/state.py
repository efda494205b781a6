"""What every route of the embedded backend shares, and how a route gets it.

:class:`Backend` holds the store, the scheduler, the lazily created inference engine and the :class:`Settings` the
launcher built once at start-up (limits, worker environment). ``create_app`` puts one on ``app.state.backend``;
routes receive it through the :data:`BackendDep` dependency, never through a closure or a global, so each
resource's router (:mod:`learning_mcp.backend.routes`) is a plain module.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from learning_mcp.backend.modelref import set_torch_threads
from learning_mcp.backend.scheduler import Scheduler
from learning_mcp.backend.store import Store
from learning_mcp.tools.dataset import validate_jsonl
from learning_mcp.tools.settings import Settings

TORCH_THREADS_ENV = "LEARNING_MCP_TORCH_THREADS"


class Backend:
    """Everything the routes share: the store, the scheduler, the lazily created inference engine, the settings."""

    def __init__(self, data_dir: Path, settings: Settings):
        self.settings = settings
        self.store = Store(data_dir)
        self.scheduler = Scheduler(self.store, max_concurrent=settings.max_concurrent_jobs,
                                   worker_env=worker_environment(settings), ray_address=settings.ray_address)
        self.max_upload_bytes = settings.max_upload_bytes
        set_torch_threads(settings.torch_threads)
        self._engine = None
        self._engine_lock = threading.Lock()

    def engine(self):
        """The inference engine, created on first use (it imports torch). Blocking: call it off the event loop."""
        with self._engine_lock:
            if self._engine is None:
                from learning_mcp.backend.inference import InferenceEngine

                self._engine = InferenceEngine(self.store.paths.models,
                                               memory_budget_mb=self.settings.inference_memory_mb,
                                               idle_unload_s=self.settings.inference_idle_unload_s)
            return self._engine

    def validate_file_async(self, record: dict) -> None:
        threading.Thread(target=self._validate_file, args=(record,), daemon=True,
                         name=f"validate-{record['id']}").start()

    def _validate_file(self, record: dict) -> None:
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


def worker_environment(settings: Settings) -> dict[str, str] | None:
    """The environment a training worker starts with: the merged environment the settings were loaded from
    (process env + env files), with the settings the worker reads set explicitly. None when the settings were built without an environment (tests): the worker then
    inherits this process's environment."""
    if not settings.environ:
        return None
    env = dict(settings.environ)
    if settings.torch_threads:
        env[TORCH_THREADS_ENV] = str(settings.torch_threads)
    return env


def get_backend(request: Request) -> Backend:
    return request.app.state.backend


BackendDep = Annotated[Backend, Depends(get_backend)]
