"""Inference: OpenAI chat completions for base and ``ft:`` models (``learning-api.md`` §3.10).

Mounted at ``/api/inference/v1`` (in the spec) and at ``/api/v1`` and ``/v1`` (aliases OpenAI-style clients use).
:class:`ChatCompletionRequest` publishes the body's schema; the engine's :func:`parse_chat_request` stays the one
place that checks it (its errors name the field, 400 for a bad value, 422 for a wrong type), so the model declares
types for the spec without validating them (``SkipValidation``). The route is ``async``: the engine batches
concurrent requests on the event loop; creating the engine (importing torch) runs in a worker thread.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, SkipValidation

from learning_mcp.backend.state import BackendDep

router = APIRouter(tags=["inference"])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(description="system, user, assistant or tool")
    content: str | list[dict[str, Any]] | None = Field(None, description="text, or OpenAI content parts")
    tool_calls: list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat-completions body. Unknown fields are accepted and ignored; ``stream`` must be false."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"required": ["model", "messages"]})

    model: SkipValidation[str | None] = Field(None, description="a base model id, a local model path or an ft: id")
    messages: SkipValidation[list[ChatMessage] | None] = Field(None, description="the conversation, oldest first")
    tools: SkipValidation[list[dict[str, Any]] | None] = None
    n: SkipValidation[int | None] = Field(None, description="completions per request, 1..128 (default 1)")
    temperature: SkipValidation[float | None] = Field(None, description="0..2 (default 1; 0 = greedy)")
    top_p: SkipValidation[float | None] = Field(None, description="(0, 1] (default 1)")
    top_k: SkipValidation[int | None] = Field(None, description=">= 0 (default 0 = off)")
    max_tokens: SkipValidation[int | None] = Field(None, description="1..32768 (default 256)")
    max_completion_tokens: SkipValidation[int | None] = Field(None, description="alias of max_tokens")
    stop: SkipValidation[str | list[str] | None] = Field(None, description="up to 16 stop strings")
    seed: SkipValidation[int | None] = None
    stream: SkipValidation[bool | None] = Field(None, description="must be false or absent")


@router.post("/chat/completions")
async def chat_completions(request: ChatCompletionRequest, backend: BackendDep) -> dict:
    body = {name: getattr(request, name) for name in request.model_fields_set}
    body.update(request.model_extra or {})
    engine = await anyio.to_thread.run_sync(backend.engine)
    return await engine.chat_completion(body)
