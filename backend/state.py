"""What every route of the embedded backend shares, and how a route gets it.

:class:`Backend` holds the store, the scheduler, the lazily created inference engine (transformers or vLLM:
:func:`~learning_mcp.backend.vllm_engine.select_engine`), the LoRA adapters loaded at run time
(:class:`~learning_mcp.backend.adapters.AdapterRegistry`) and the :class:`Settings` the launcher built once at
start-up (limits, worker environment). ``create_app`` puts one on ``app.state.backend``;
routes receive it through the :data:`BackendDep` dependency, never through a closure or a global, so each
resource's router (:mod:`learning_mcp.backend.routes`) is a plain module.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from learning_mcp.backend.adapters import AdapterRegistry
from learning_mcp.backend.limits import caller_trusted
from learning_mcp.backend.modelref import check_under_roots, set_torch_threads
from learning_mcp.backend.scheduler import Scheduler
from learning_mcp.backend.store import Store
from learning_mcp.backend.vllm_engine import EngineChoice, probe_vllm, select_engine
from learning_mcp.tools.dataset import validate_jsonl
from learning_mcp.tools.settings import Settings

TORCH_THREADS_ENV = "LEARNING_MCP_TORCH_THREADS"
logger = logging.getLogger(__name__)


class Backend:
    """Everything the routes share: the store, the scheduler, the lazily created inference engine, the settings."""

    def __init__(self, data_dir: Path, settings: Settings):
        """Raises :class:`~learning_mcp.backend.vllm_engine.EngineUnavailableError` (``vllm_unavailable``) when
        ``settings.inference_engine == "vllm"`` and vLLM or a CUDA GPU is missing: the backend does not start."""
        self.settings = settings
        # "auto" decides when the engine is first needed (probing imports torch); "vllm" is checked now
        self.engine_choice: EngineChoice | None = self._choose_engine() if settings.inference_engine == "vllm" \
            else None
        self.store = Store(data_dir)
        self.scheduler = Scheduler(self.store, max_concurrent=settings.max_concurrent_jobs,
                                   worker_env=worker_environment(settings), ray_address=settings.ray_address,
                                   start_expiry_s=settings.job_start_expiry_s)
        self.max_upload_bytes = settings.max_upload_bytes
        set_torch_threads(settings.torch_threads)
        self.adapters = AdapterRegistry(self.store.paths.models)
        self._engine = None
        self._engine_lock = threading.Lock()

    def _choose_engine(self) -> EngineChoice:
        if self.settings.inference_engine == "transformers":  # no probe: nothing to import
            return select_engine("transformers", vllm_importable=False, cuda_available=False)
        importable, cuda, why = probe_vllm()
        return select_engine(self.settings.inference_engine, vllm_importable=importable, cuda_available=cuda,
                             import_error=why)

    def engine(self):
        """The inference engine, created on first use (it imports torch): vLLM's or transformers', as
        :attr:`engine_choice` says. Blocking: call it off the event loop."""
        with self._engine_lock:
            if self._engine is None:
                if self.engine_choice is None:
                    self.engine_choice = self._choose_engine()
                choice = self.engine_choice
                logger.info("inference engine: %s (%s)", choice.engine, choice.reason)
                if choice.engine == "vllm":
                    from learning_mcp.backend.vllm_engine import VLLMEngine

                    self._engine = VLLMEngine(self.store.paths.models, fallback=self._transformers_engine,
                                              adapters=self.adapters,
                                              gpu_memory_utilization=self.settings.vllm_gpu_memory_utilization,
                                              max_lora_rank=self.settings.vllm_max_lora_rank)
                else:
                    self._engine = self._transformers_engine()
            return self._engine

    def _transformers_engine(self):
        from learning_mcp.backend.inference import InferenceEngine

        return InferenceEngine(self.store.paths.models, memory_budget_mb=self.settings.inference_memory_mb,
                               idle_unload_s=self.settings.inference_idle_unload_s, adapters=self.adapters)

    def engine_if_created(self):
        """The inference engine if a request created it, else None (never imports torch)."""
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

    def model_roots(self) -> list[Path]:
        """Where a caller without the key may point a local model path: the data dir and Settings.model_roots."""
        extra = [Path(p) for p in self.settings.model_roots.split(os.pathsep) if p.strip()]
        return [self.store.paths.root, *extra]

    def guard_model(self, model: object, request: Request) -> None:
        """Refuse (ModelNotLoadableError, 400) a local model path outside :meth:`model_roots` from a caller who
        is not trusted (backend/limits.py: the key, or loopback when no key is configured)."""
        key_configured = bool(getattr(request.app.state, "api_key", None))
        client = request.client.host if request.client else None
        if not caller_trusted(client, key_configured=key_configured):
            check_under_roots(model, self.model_roots())

    def sweep_at_start(self) -> None:
        """Remove what a kill left behind: ``.part`` uploads and ``.partial`` model folders of jobs not running."""
        self.store.sweep_leftovers()

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
