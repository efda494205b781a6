"""Telling an external OpenAI-compatible server which fine-tuned model to serve: vLLM's runtime LoRA API.

A vLLM server started with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` answers
``POST <base>/v1/load_lora_adapter {"lora_name", "lora_path"}`` and ``POST <base>/v1/unload_lora_adapter
{"lora_name"}`` (vLLM ``docs/features/lora.md``, "Dynamically serving LoRA Adapters"; statuses and messages in
``vllm/entrypoints/openai/serving_models.py``); the embedded backend serves the same two routes
(``backend/adapters.py``). After a load, a chat completion whose ``model`` is ``lora_name`` samples from the
adapter. The ReST-EM loop (``[eval] load_lora_adapters = true``) loads each M-step's adapter under its ``ft:`` id.

``lora_path`` is read by the SERVER: the adapter folder must be on a file system the server sees (the loop
exports it next to its state, ``<loop dir>/adapters/<job_id>``).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import httpx

from .errors import ToolFailure
from .sampling import normalize_chat_url
from .settings import redact, redact_url

ALREADY_LOADED = "already been loaded"  # vLLM's 400 message for a name in use (and the embedded backend's)


def adapter_api_url(chat_url: str, route: str) -> str:
    """``<base>/<route>`` for the chat-completions URL ``chat_url`` (any form :func:`normalize_chat_url` accepts):
    ``http://host:8000/v1`` → ``http://host:8000/v1/load_lora_adapter``. Raises ``ChatEndpointError``."""
    parts = urlsplit(normalize_chat_url(chat_url))
    base = parts.path[: -len("/chat/completions")]
    return urlunsplit(parts._replace(path=f"{base}/{route}"))


def _failure(action: str, url: str, response: httpx.Response, api_key: str | None) -> ToolFailure:
    text = redact(response.text[:1000].strip(), [api_key])
    hint = (" The server does not offer vLLM's runtime LoRA API: start vLLM with --enable-lora and "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (or point chat_url at an embedded backend)."
            if response.status_code in (404, 405) and "adapter" not in text.lower() else "")
    return ToolFailure("adapter_load_failed", f"{action} at {redact_url(url)} answered HTTP {response.status_code}: {text}.{hint}")


async def load_lora_adapter(chat_url: str, name: str, path: str, *, api_key: str | None = None,
                            timeout_s: float = 300.0) -> bool:
    """Ask the server behind ``chat_url`` to serve the adapter folder ``path`` as model ``name``. True when it
    loaded it, False when ``name`` was already loaded (vLLM's 400 ``… has already been loaded.``, kept as is: a
    resumed loop loads again). Raises ``ToolFailure`` ``adapter_load_failed`` for any other answer and
    ``adapter_server_unreachable`` when the server cannot be reached."""
    url = adapter_api_url(chat_url, "load_lora_adapter")
    response = await _post(url, {"lora_name": name, "lora_path": path}, api_key, timeout_s)
    if response.status_code == 200:
        return True
    if response.status_code == 400 and ALREADY_LOADED in response.text:
        return False
    raise _failure(f"loading LoRA adapter {path} as {name!r}", url, response, api_key)


async def unload_lora_adapter(chat_url: str, name: str, *, api_key: str | None = None,
                              timeout_s: float = 60.0) -> bool:
    """Ask the server behind ``chat_url`` to stop serving ``name``. True when it did, False when it did not have
    it (404). Raises ``ToolFailure`` like :func:`load_lora_adapter`."""
    url = adapter_api_url(chat_url, "unload_lora_adapter")
    response = await _post(url, {"lora_name": name}, api_key, timeout_s)
    if response.status_code == 200:
        return True
    if response.status_code == 404 and "adapter" in response.text.lower():
        return False
    raise _failure(f"unloading LoRA adapter {name!r}", url, response, api_key)


async def _post(url: str, body: dict, api_key: str | None, timeout_s: float) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            return await http.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise ToolFailure("adapter_server_unreachable", f"cannot reach {redact_url(url)}: {type(exc).__name__}: "
                                                        f"{redact(str(exc), [api_key])}") from None
