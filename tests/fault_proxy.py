"""A real HTTP server that forwards to the learning backend and misbehaves on command.

Tests put it between the client and the embedded backend to inject faults over real sockets: HTTP 5xx, 429
with ``Retry-After``, slow answers, and dropped connections (the socket is closed without a response). Rules
match a method and a path prefix and fire a given number of times; everything else is forwarded unchanged.
One request per connection (``Connection: close``) keeps the proxy small and exact.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field


@dataclass
class Rule:
    method: str
    path_prefix: str
    action: str  # "status" | "drop" | "slow" (subclasses add their own)
    times: int = 1
    status: int = 503
    retry_after: float | None = None
    delay_s: float = 0.0
    hits: int = 0


@dataclass
class Request:
    """One HTTP/1.1 request as read off the socket."""

    method: str
    path: str
    request_line: str
    header_lines: list[str]
    body: bytes

    @property
    def headers(self) -> dict[str, str]:
        out = {}
        for line in self.header_lines:
            name, _, value = line.partition(":")
            out[name.strip().lower()] = value.strip()
        return out

    def raw(self) -> bytes:
        """The request to send upstream, as one exchange (``Connection: close``)."""
        kept = [h for h in self.header_lines if not h.lower().startswith(("connection:", "keep-alive:"))]
        head = self.request_line + "\r\n" + "\r\n".join(kept + ["Connection: close"]) + "\r\n\r\n"
        return head.encode("latin-1") + self.body


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    request = Request(method, path, lines[0], [l for l in lines[1:] if l], b"")
    length = int(request.headers.get("content-length", "0") or 0)
    request.body = await reader.readexactly(length) if length else b""
    return request


async def write_json(writer: asyncio.StreamWriter, status: int, payload: object, *, reason: str = "Injected",
                     extra_headers: str = "") -> None:
    body = json.dumps(payload).encode()
    writer.write((f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{extra_headers}"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
    await writer.drain()
    writer.close()


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, outcome)

    def add(self, method: str, path_prefix: str, action: str, **kwargs) -> Rule:
        rule = Rule(method.upper(), path_prefix, action, **kwargs)
        self.rules.append(rule)
        return rule

    def _match(self, method: str, path: str, actions: set[str] | None = None) -> Rule | None:
        for rule in self.rules:
            if (rule.method in (method, "*") and path.startswith(rule.path_prefix) and rule.hits < rule.times
                    and (actions is None or rule.action in actions)):
                rule.hits += 1
                return rule
        return None

    async def forward(self, request: Request) -> bytes:
        """Send the request to the backend and return its whole answer."""
        up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        up_writer.write(request.raw())
        await up_writer.drain()
        response = await up_reader.read()
        up_writer.close()
        return response

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if request is None:
            writer.close()
            return
        await self.serve(request, writer)

    async def serve(self, request: Request, writer: asyncio.StreamWriter) -> None:
        method, path = request.method, request.path
        rule = self._match(method, path, {"status", "drop", "slow"})
        if rule is not None and rule.action == "drop":
            self.log.append((method, path, "drop"))
            writer.transport.abort()
            return
        if rule is not None and rule.action == "status":
            self.log.append((method, path, str(rule.status)))
            extra = f"Retry-After: {rule.retry_after:g}\r\n" if rule.retry_after is not None else ""
            await write_json(writer, rule.status, {"detail": f"injected {rule.status}"}, extra_headers=extra)
            return
        if rule is not None and rule.action == "slow":
            await asyncio.sleep(rule.delay_s)
        self.log.append((method, path, "forward"))
        writer.write(await self.forward(request))
        await writer.drain()
        writer.close()

    def start(self) -> str:
        """Serve on a free loopback port in a background thread; returns the base URL."""
        ready = threading.Event()
        box: dict = {}

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            box["port"] = server.sockets[0].getsockname()[1]
            box["loop"], box["server"] = loop, server
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)
        self._box = box
        return f"http://127.0.0.1:{box['port']}"

    def stop(self) -> None:
        loop = self._box["loop"]
        loop.call_soon_threadsafe(self._box["server"].close)
        loop.call_soon_threadsafe(loop.stop)


OWN_ACTIONS = {"forward_then_drop", "echo_auth", "canned"}


class ScriptedProxy(FaultProxy):
    """A :class:`FaultProxy` that records every request's headers, with three more actions:
    ``forward_then_drop`` (the request reaches the backend, its answer is thrown away and the client's connection
    aborted), ``echo_auth`` (answer ``status`` with a body echoing the ``Authorization`` header, like a careless
    API) and ``canned`` (answer ``status`` with the JSON in ``proxy.canned[path_prefix]``, to play an API whose
    records differ from the embedded backend's)."""

    def __init__(self, upstream_host: str, upstream_port: int):
        super().__init__(upstream_host, upstream_port)
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, lower-cased headers)
        self.dropped_answers: list[bytes] = []  # what the backend answered to a forward_then_drop request
        self.echo_padding = 0  # characters put in front of the echoed header in echo_auth answers
        self.canned: dict[str, object] = {}  # path prefix -> JSON body answered (200) by a "canned" rule

    async def serve(self, request: Request, writer: asyncio.StreamWriter) -> None:
        method, path, headers = request.method, request.path, request.headers
        self.requests.append((method, path, headers))
        rule = self._match(method, path, OWN_ACTIONS)
        if rule is not None and rule.action == "echo_auth":
            self.log.append((method, path, f"echo_auth {rule.status}"))
            auth = headers.get("authorization", "<none>")
            await write_json(writer, rule.status, {
                "detail": "." * self.echo_padding + f"rejected credentials {auth!s} for {path}",
                "error": {"message": f"header was: Authorization: {auth}"}}, reason="Echo")
            return
        if rule is not None and rule.action == "canned":
            self.log.append((method, path, "canned"))
            await write_json(writer, rule.status, self.canned[rule.path_prefix], reason="OK")
            return
        if rule is not None and rule.action == "forward_then_drop":
            self.dropped_answers.append(await self.forward(request))
            self.log.append((method, path, "forward_then_drop"))
            writer.transport.abort()
            return
        await super().serve(request, writer)  # everything else: the shared proxy's behaviour
