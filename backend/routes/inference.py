"""Inference: OpenAI chat completions and the model list for base and ``ft:`` models (``learning-api.md`` §3.10).

Mounted at ``/api/inference/v1`` (in the spec) and at ``/api/v1`` and ``/v1`` (aliases OpenAI-style clients use:
``OpenAI(base_url="http://127.0.0.1:8765/v1", api_key=<backend key or any string>)``).
:class:`ChatCompletionRequest` publishes the body's schema; the engine's :func:`parse_chat_request` stays the one
place that checks it (its errors name the field, 400 for a bad value, 422 for a wrong type), so the model declares
types for the spec without validating them (``SkipValidation``). The route is ``async``: the engine batches
concurrent requests on the event loop; creating the engine (importing torch) runs in a worker thread.

``stream=true`` answers ``text/event-stream`` in OpenAI's format: ``data: {chat.completion.chunk}`` lines (a role
delta, content deltas, a ``finish_reason`` chunk per choice, a usage chunk when ``stream_options.include_usage``)
and ``data: [DONE]``. The engine batches whole generations, so the completion is generated first and then sent as
chunks: a bad request still gets a normal JSON error with its status, and the chunks arrive together at the end of
generation rather than token by token.

``POST …/load_lora_adapter {"lora_name", "lora_path"}`` and ``POST …/unload_lora_adapter {"lora_name"}`` are vLLM's
runtime LoRA API (:mod:`learning_mcp.backend.adapters`: same bodies, statuses and plain-text success answers): a
loaded adapter is then served under ``lora_name``. A ``lora_path`` outside the data dir and
``LEARNING_MCP_MODEL_ROOTS`` needs the key (as a local model path does).
"""

from __future__ import annotations

import json
import re
from typing import Any, AsyncIterator

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, SkipValidation

from learning_mcp.backend.inference import InferenceError
from learning_mcp.backend.routes.models import openai_model_list
from learning_mcp.backend.state import BackendDep

router = APIRouter(tags=["inference"])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(description="system, user, assistant or tool")
    content: str | list[dict[str, Any]] | None = Field(None, description="text, or OpenAI content parts")
    tool_calls: list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat-completions body. Unknown fields are accepted and ignored."""

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
    stream: SkipValidation[bool | None] = Field(None, description="true: server-sent chat.completion.chunk events, "
                                                                  "then data: [DONE]")
    stream_options: SkipValidation[dict[str, Any] | None] = Field(
        None, description="with stream: {\"include_usage\": true} adds a final usage chunk")


@router.post("/chat/completions", response_model=None)
async def chat_completions(request: ChatCompletionRequest, backend: BackendDep,
                           raw: Request) -> dict | StreamingResponse:
    body = {name: getattr(request, name) for name in request.model_fields_set}
    body.update(request.model_extra or {})
    stream = body.pop("stream", None)
    stream_options = body.pop("stream_options", None)
    if stream not in (None, False, True):
        raise InferenceError(422, "invalid_type", "stream must be true or false", "stream")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise InferenceError(422, "invalid_type", "stream_options must be an object, e.g. {\"include_usage\": true}",
                             "stream_options")
    backend.guard_model(body.get("model"), raw)  # local paths outside the data dir: only with the key
    engine = await anyio.to_thread.run_sync(backend.engine)
    # a caller that disconnects (or times out) leaves the queue and its rows stop decoding
    completion = await engine.chat_completion(body, is_disconnected=raw.is_disconnected)
    if not stream:
        return completion
    include_usage = bool((stream_options or {}).get("include_usage"))
    return StreamingResponse(_sse(completion_chunks(completion, include_usage=include_usage)),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class LoadLoRAAdapterRequest(BaseModel):
    """vLLM's ``LoadLoRAAdapterRequest``: the served name and the adapter folder on this machine."""

    model_config = ConfigDict(extra="allow")

    lora_name: SkipValidation[str | None] = Field(None, description="the model name requests will use")
    lora_path: SkipValidation[str | None] = Field(None, description="a PEFT adapter folder (adapter_config.json)")


class UnloadLoRAAdapterRequest(BaseModel):
    """vLLM's ``UnloadLoRAAdapterRequest``."""

    model_config = ConfigDict(extra="allow")

    lora_name: SkipValidation[str | None] = Field(None, description="a name given to load_lora_adapter")


@router.post("/load_lora_adapter", response_class=PlainTextResponse)
async def load_lora_adapter(request: LoadLoRAAdapterRequest, backend: BackendDep, raw: Request) -> str:
    """Serve a LoRA adapter under ``lora_name`` (vLLM's route; 400 missing field or name taken, 404 no adapter)."""
    body = request.model_dump()
    if isinstance(body.get("lora_path"), str) and body["lora_path"].strip():
        backend.guard_model(body["lora_path"].strip(), raw)
    adapter = await anyio.to_thread.run_sync(backend.adapters.load, body)
    return f"Success: LoRA adapter '{adapter.name}' added successfully."


@router.post("/unload_lora_adapter", response_class=PlainTextResponse)
async def unload_lora_adapter(request: UnloadLoRAAdapterRequest, backend: BackendDep) -> str:
    """Stop serving ``lora_name`` (vLLM's route; 404 for a name not loaded) and drop it from the engine's cache."""
    adapter = backend.adapters.unload(request.model_dump())
    engine = backend.engine_if_created()
    if engine is not None:
        await anyio.to_thread.run_sync(engine.forget, adapter.name)
    return f"Success: LoRA adapter '{adapter.name}' removed successfully."


@router.get("/models")
def list_models(backend: BackendDep) -> dict:
    """OpenAI's model list: the fine-tuned models this backend trained (``ft:`` ids), their base models, and the
    base models of every job and loaded model it knows (``owned_by``: ``learning-mcp`` / ``base``)."""
    return {"object": "list", "data": openai_model_list(backend)}


_PIECE = re.compile(r"\s*\S+|\s+")


def completion_chunks(completion: dict, *, include_usage: bool = False) -> list[dict]:
    """A ``chat.completion`` dict as OpenAI's ``chat.completion.chunk`` sequence (without ``[DONE]``): per choice a
    role delta, content deltas (word by word), then a chunk with ``finish_reason``; a usage chunk last when asked."""
    base = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"], "system_fingerprint": None}
    chunks: list[dict] = []
    for choice in completion["choices"]:
        index = choice["index"]
        text = choice["message"].get("content") or ""

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        chunks.append(chunk({"role": "assistant", "content": ""}))
        chunks.extend(chunk({"content": piece}) for piece in _PIECE.findall(text))
        chunks.append(chunk({}, choice.get("finish_reason") or "stop"))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion.get("usage")})
    return chunks


async def _sse(chunks: list[dict]) -> AsyncIterator[bytes]:
    for item in chunks:
        yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n".encode()
    yield b"data: [DONE]\n\n"
