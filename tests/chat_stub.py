"""A real OpenAI-compatible chat-completions server for tests, served by uvicorn on loopback.

It stands in for vLLM / OpenAI (an external service) so that ``learning_mcp.tools.evaluate`` is exercised over
real HTTP: real sockets, real status codes, real headers, real connection drops.

Usage::

    with start_chat_stub(lambda messages, index: "42", ignore_n=True) as stub:
        url = stub.base_url + "/v1"          # or stub.chat_url
        ...
        assert stub.state.max_in_flight <= 4

``start_chat_stub(answer_fn=None, **faults)`` returns a :class:`ChatStub` – a named tuple
``(base_url, state, stop)`` that is also a context manager. ``answer_fn(messages, index) -> str`` (or
``(text, finish_reason)``, or a message dict such as ``{"content": ..., "reasoning_content": ..., "finish_reason":
...}``) answers deterministically from the prompt; ``index`` counts the samples already served
for that exact prompt, so a top-up request gets fresh indices. The default echoes the last user message.

Faults (keyword arguments, see :class:`StubFaults`; change them later through ``state.faults`` or
``state.reset(**faults)``), consumed in this order per request:

* ``drop_first=K``        – the first K requests get their TCP connection closed with no response.
* ``fail_first=K``        – the next K requests answer 500.
* ``rate_limit_first=K``  – the next K requests answer 429 with ``Retry-After: <retry_after>``.
* ``status_always=S``     – every request answers status S (e.g. 500, 404) with an OpenAI-style error body.
* ``api_key="k"``         – requests without ``Authorization: Bearer k`` answer 401.
* ``reject_params=("top_k",)`` – a body carrying one of these keys answers 400 like OpenAI does.
* ``ignore_n=True``       – always one choice, whatever ``n`` asks; ``max_choices=M`` caps the choices.
* ``delay_s=S``           – sleep S seconds before answering (slow model; also used to measure concurrency).

``state`` records every request body and headers, the in-flight count and its maximum, and counters.
``serve_asgi(app)`` runs any ASGI app (e.g. a FastAPI task app) the same way and returns ``(base_url, stop)``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import uvicorn

AnswerFn = Callable[[list[dict], int], "str | tuple[str, str]"]


@dataclasses.dataclass
class StubFaults:
    drop_first: int = 0
    fail_first: int = 0
    rate_limit_first: int = 0
    retry_after: float = 1.0
    status_always: int | None = None
    api_key: str | None = None
    reject_params: tuple[str, ...] = ()
    ignore_n: bool = False
    max_choices: int | None = None
    delay_s: float = 0.0


@dataclasses.dataclass
class StubState:
    faults: StubFaults = dataclasses.field(default_factory=StubFaults)
    requests: int = 0  # every request that reached the app
    served: int = 0  # 200 answers
    dropped: int = 0
    failed: int = 0  # 5xx/4xx/429 answers
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict] = dataclasses.field(default_factory=list)
    headers: list[dict[str, str]] = dataclasses.field(default_factory=list)
    request_times: list[float] = dataclasses.field(default_factory=list)
    samples_per_prompt: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def reset(self, **faults: Any) -> None:
        """Forget everything recorded and install new faults."""
        with self.lock:
            self.faults = StubFaults(**faults)
            self.requests = self.served = self.dropped = self.failed = 0
            self.in_flight = self.max_in_flight = 0
            self.bodies.clear()
            self.headers.clear()
            self.request_times.clear()
            self.samples_per_prompt.clear()


class ChatStub(NamedTuple):
    base_url: str  # http://127.0.0.1:PORT
    state: StubState
    stop: Callable[[], None]

    @property
    def chat_url(self) -> str:
        return self.base_url + "/v1/chat/completions"

    def __enter__(self) -> ChatStub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _default_answer(messages: list[dict], index: int) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content"))
    return ""


async def _read_body(receive: Callable) -> bytes:
    chunks = []
    while True:
        event = await receive()
        chunks.append(event.get("body", b""))
        if not event.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Callable, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(payload).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def _error(message: str, kind: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


async def _drop_connection(receive: Callable, send: Callable) -> None:
    """Close the TCP connection without answering (uvicorn's receive is bound to its request cycle)."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is not None:
        transport.close()
        return
    # Fallback: promise a body, then die, so the client sees an incomplete response.
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
    raise ConnectionAbortedError("chat stub: dropping the connection")


def make_chat_app(state: StubState, answer_fn: AnswerFn | None = None) -> Callable:
    answer = answer_fn or _default_answer

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"].rstrip("/")
        if scope["method"] != "POST" or not path.endswith("/chat/completions"):
            await _respond(send, 404, _error(f"no route {scope['method']} {scope['path']}", "not_found"))
            return
        raw = await _read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with state.lock:
            state.requests += 1
            state.request_times.append(time.monotonic())
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            faults = state.faults
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"_unparseable": raw.decode(errors="replace")}
            state.bodies.append(body)
            state.headers.append(headers)
            action = None
            if faults.drop_first > 0:
                faults.drop_first -= 1
                action = "drop"
            elif faults.fail_first > 0:
                faults.fail_first -= 1
                action = "fail"
            elif faults.rate_limit_first > 0:
                faults.rate_limit_first -= 1
                action = "rate_limit"
        try:
            if faults.delay_s:
                await asyncio.sleep(faults.delay_s)
            if action == "drop":
                with state.lock:
                    state.dropped += 1
                await _drop_connection(receive, send)
                return
            status, payload, extra = _decide(state, faults, action, body, headers, answer)
            with state.lock:
                if status == 200:
                    state.served += 1
                else:
                    state.failed += 1
            await _respond(send, status, payload, extra)
        finally:
            with state.lock:
                state.in_flight -= 1

    return app


def _decide(
    state: StubState, faults: StubFaults, action: str | None, body: dict, headers: dict, answer: AnswerFn
) -> tuple[int, Any, dict[str, str]]:
    if action == "fail":
        return 500, _error("stub: injected failure", "server_error"), {}
    if action == "rate_limit":
        return 429, _error("stub: rate limited", "rate_limit"), {"Retry-After": f"{faults.retry_after:g}"}
    if faults.status_always is not None:
        return faults.status_always, _error(f"stub: status {faults.status_always}", "stub_error"), {}
    if faults.api_key is not None and headers.get("authorization") != f"Bearer {faults.api_key}":
        provided = headers.get("authorization", "").removeprefix("Bearer ")
        message = f"Incorrect API key provided: {provided}."  # echoes the key, as careless proxies do
        return 401, _error(message, "invalid_request_error", "invalid_api_key"), {}
    for param in faults.reject_params:
        if param in body:
            return 400, _error(f"Unrecognized request argument supplied: {param}", "invalid_request_error"), {}
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 400, _error("'messages' is required", "invalid_request_error"), {}
    n = int(body.get("n") or 1)
    if faults.ignore_n:
        n = 1
    if faults.max_choices is not None:
        n = min(n, faults.max_choices)
    key = json.dumps(messages, sort_keys=True)
    choices = []
    for i in range(n):
        with state.lock:
            index = state.samples_per_prompt[key]
            state.samples_per_prompt[key] += 1
        result = answer(messages, index)
        if isinstance(result, dict):  # a whole message, e.g. {"content": ..., "reasoning_content": ...}
            extra_fields = dict(result)
            finish = extra_fields.pop("finish_reason", "stop")
            message = {"role": "assistant", **extra_fields}
        else:
            text, finish = result if isinstance(result, tuple) else (result, "stop")
            message = {"role": "assistant", "content": text}
        choices.append({"index": i, "message": message, "finish_reason": finish})
    payload = {
        "id": f"chatcmpl-stub-{state.requests}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": choices,
        "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
    }
    return 200, payload, {}


def serve_asgi(app: Callable, *, host: str = "127.0.0.1") -> tuple[str, Callable[[], None]]:
    """Serve an ASGI app with uvicorn in a daemon thread on a free loopback port; returns (base_url, stop)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"asgi-{port}")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()

    return f"http://{host}:{port}", stop


def start_chat_stub(answer_fn: AnswerFn | None = None, **faults: Any) -> ChatStub:
    """Start the chat-completions stub; see the module docstring for ``answer_fn`` and the faults."""
    state = StubState(faults=StubFaults(**faults))
    base_url, stop = serve_asgi(make_chat_app(state, answer_fn))
    return ChatStub(base_url, state, stop)


def free_port() -> int:
    """A loopback port with nothing listening on it (for 'unreachable endpoint' tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
