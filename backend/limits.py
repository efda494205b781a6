"""Request-size limits enforced while the body streams, and who counts as a trusted caller.

:class:`BodyLimitMiddleware` is a plain ASGI middleware (outermost, before FastAPI reads anything). For each
request it picks a byte limit: ``Settings.max_upload_bytes`` plus :data:`MULTIPART_SLACK` for ``POST …/files``
(multipart headers, boundary and the ``purpose`` field), ``Settings.max_request_bytes`` for every other body.

* ``Content-Length`` over the limit: 413 at once, the body is never read.
* no or a smaller ``Content-Length`` (chunked uploads, a lying client): the bytes are counted as they arrive; the
  chunk that passes the limit is not handed on, a 413 goes out, and the application sees ``http.disconnect``, so
  the multipart parser stops spooling. At most the limit plus one ASGI chunk (uvicorn reads 64 KiB at a time) is
  ever written to disk. Whatever the application answers afterwards is dropped.

The 413 body is the backend's error body (``{"detail", "error": {code, message, param}}``) with code
``file_too_large`` (uploads) or ``request_too_large`` (JSON bodies).

:func:`caller_trusted` decides whether a request may name arbitrary local paths as models: a caller that
presented the configured key, or, with no key configured, a loopback client (the launcher refuses to listen
elsewhere without a key). Anyone else may only name directories under the data dir or ``Settings.model_roots``.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Callable

from learning_mcp.tools.errors import LearningMCPError

MULTIPART_SLACK = 64 * 1024
UPLOAD_SUFFIX = "/files"


def _too_large(code: str, size: int, limit: int, what: str, hint: str) -> dict:
    message = (f"{what} too large: {size} bytes exceeds this backend's limit of {limit} bytes "
               f"({limit / 1024**2:.1f} MiB); {hint}")
    return LearningMCPError(code, message, param="file" if code == "file_too_large" else None).error_body()


class BodyLimitMiddleware:
    """ASGI middleware: refuse bodies over the limit while they stream (see the module docstring)."""

    def __init__(self, app: Any, *, upload_limit: Callable[[], int], request_limit: Callable[[], int]) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.request_limit = request_limit

    def _limits(self, scope: dict) -> tuple[int, int, str, str, str]:
        """(hard byte limit, nominal limit, code, what, hint) for this request."""
        if scope.get("method") == "POST" and scope.get("path", "").rstrip("/").endswith(UPLOAD_SUFFIX):
            limit = self.upload_limit()
            return (limit + MULTIPART_SLACK, limit, "file_too_large", "file",
                    "split the dataset or raise LEARNING_MCP_MAX_UPLOAD_BYTES")
        limit = self.request_limit()
        return limit, limit, "request_too_large", "request body", \
            "send less (e.g. shorter metadata or prompts) or raise LEARNING_MCP_MAX_REQUEST_BYTES"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        hard, nominal, code, what, hint = self._limits(scope)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1").strip()
        if length.isdigit() and int(length) > hard:
            await _send_json(send, 413, _too_large(code, int(length), nominal, what, hint))
            return

        state = {"seen": 0, "refused": False, "started": False}

        async def limited_receive() -> dict:
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > hard:
                    state["refused"] = True
                    if not state["started"]:
                        state["started"] = True
                        await _send_json(send, 413, _too_large(code, state["seen"], nominal, what, hint))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            if state["refused"]:
                return  # the 413 already went out
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["refused"]:
                raise  # a refused body's ClientDisconnect (or what follows from it) is expected


async def _send_json(send: Callable, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def caller_trusted(client_host: str | None, *, key_configured: bool) -> bool:
    """True when a caller may name any local path as a model: the key is configured (the auth middleware let
    the request through, so it presented the key) or no key is configured and the client is on loopback."""
    return key_configured or is_loopback(client_host)
