"""Datasets: ``POST /datasets/preview`` — what a job would train on, rendered by the trainer's own code.

Read-only (no job, no write). The dataset is a ``path`` on this machine or the ``file_id`` of an uploaded file;
the model's tokenizer (or processor, for a vision-language model) renders it exactly as the trainer will
(:mod:`learning_mcp.backend.preview`). Blocking (tokenizer load, rendering), so a plain ``def`` route: FastAPI runs
it in its thread pool, off the event loop. The scan stops after a time budget and says so (``totals.complete``),
so the MCP tool that calls this answers within its time limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body

from learning_mcp.backend.preview import preview_dataset
from learning_mcp.backend.routes.common import APIError
from learning_mcp.backend.state import BackendDep
from learning_mcp.tools.preview import PreviewRequest

router = APIRouter(prefix="/datasets", tags=["datasets"])
ROUTE_TIME_BUDGET_S = 30.0


@router.post("/preview")
def preview(request: Annotated[PreviewRequest, Body()], backend: BackendDep) -> dict:
    """Render a JSONL SFT dataset through ``model``'s chat template as the trainer will: per example the rendered
    text, the trained text, token counts, truncation; totals over the file. Errors: 400 naming the field
    (``path``/``file_id``, ``model``, ``hyperparameters``), 404 for an unknown ``file_id``."""
    if (request.path is None) == (request.file_id is None):
        raise APIError(400, "invalid_request", "pass exactly one of path (a JSONL file on the backend's machine) "
                       "or file_id (an uploaded file)", param="path")
    if request.file_id is not None:
        record = backend.store.get_file(request.file_id)
        if record is None:
            raise APIError(404, "file_not_found", f"file {request.file_id!r} not found; upload it first",
                           param="file_id")
        path = backend.store.paths.file_path(record["sha256"])
    else:
        path = Path(request.path).expanduser()
        if not path.is_absolute() or not path.is_file():
            raise APIError(400, "file_not_found", f"dataset file not found on the backend's machine: {request.path} "
                           "(pass an absolute path, or upload the file and pass its file_id)", param="path")
    result = preview_dataset(path, request.model, examples=request.examples, sequence_length=request.sequence_length,
                             config=request.hyperparameters, models_dir=backend.store.paths.models,
                             time_budget_s=ROUTE_TIME_BUDGET_S)
    return result.model_dump()
