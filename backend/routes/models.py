"""Models: the fine-tuned models this backend has trained (``GET /models``, ``GET /models/{id}``), and
:func:`openai_model_list`, the OpenAI-shaped list served at ``/v1/models`` (routes/inference.py)."""

from __future__ import annotations

import calendar
import time

from fastapi import APIRouter

from learning_mcp.backend.routes.common import not_found
from learning_mcp.backend.state import Backend, BackendDep

router = APIRouter(prefix="/models", tags=["models"])


@router.get("")
def list_models(backend: BackendDep) -> dict:
    models = backend.store.list_models()
    return {"object": "list", "data": models, "models": models}


@router.get("/{model_id:path}")
def get_model(model_id: str, backend: BackendDep) -> dict:
    for model in backend.store.list_models():
        if model["id"] == model_id:
            return model
    raise not_found("model", model_id, "call list_jobs for the fine_tuned_model of a succeeded job "
                                       "(GET /api/learning/models lists them)")


def openai_model_list(backend: Backend, *, max_jobs: int = 1000) -> list[dict]:
    """OpenAI ``Model`` objects (``id``, ``object="model"``, ``created`` in Unix seconds, ``owned_by``) for every
    model a chat completion here accepts by name: each fine-tuned ``ft:`` model (``owned_by="learning-mcp"``, with
    ``base_model`` and ``job_id``), the LoRA adapters loaded at run time (``owned_by="lora"``, ``root`` = the folder,
    ``parent`` = the base, as vLLM lists them), then the base models of the backend's jobs (what create_job and the ReST-EM loop
    trained from) and the models the inference engine has in memory (``owned_by="base"``). Newest first, no
    duplicates. Local paths and Hub ids are listed as the jobs named them."""
    out: dict[str, dict] = {}
    for model in backend.store.list_models():
        out.setdefault(model["id"], {"id": model["id"], "object": "model", "created": _unix(model.get("created_at")),
                                     "owned_by": "learning-mcp", "base_model": model.get("base_model"),
                                     "job_id": model.get("job_id")})
    for adapter in backend.adapters.all():  # loaded at run time (load_lora_adapter), listed as vLLM lists them
        out.setdefault(adapter.name, {"id": adapter.name, "object": "model", "created": int(time.time()),
                                      "owned_by": "lora", "root": adapter.path, "parent": adapter.base_model})
    bases = [(job.get("model"), job.get("created_at")) for job in backend.store.list_jobs(limit=max_jobs)]
    engine = backend._engine  # only if already created: listing models must not import torch
    if engine is not None:
        bases += [(name, None) for name in engine.loaded_models()]
    for name, created in bases:
        if isinstance(name, str) and name and name not in out:
            out[name] = {"id": name, "object": "model", "created": _unix(created), "owned_by": "base"}
    return list(out.values())


def _unix(value) -> int:
    """Unix seconds from an ISO time (``…Z``), a number, or now."""
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        try:
            return calendar.timegm(time.strptime(value[:19], "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            pass
    return int(time.time())
