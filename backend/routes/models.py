"""Models: the fine-tuned models this backend has trained (``GET /models``, ``GET /models/{id}``)."""

from __future__ import annotations

from fastapi import APIRouter

from learning_mcp.backend.routes.common import not_found
from learning_mcp.backend.state import BackendDep

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
    raise not_found("model", model_id, "list models with GET /api/learning/models")
