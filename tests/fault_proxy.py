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
    action: str  # "status" | "drop" | "slow"
    times: int = 1
    status: int = 503
    retry_after: float | None = None
    delay_s: float = 0.0
    hits: int = 0


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

    def _match(self, method: str, path: str) -> Rule | None:
        for rule in self.rules:
            if rule.method in (method, "*") and path.startswith(rule.path_prefix) and rule.hits < rule.times:
                rule.hits += 1
                return rule
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = [l for l in lines[1:] if l]
        length = 0
        for h in headers:
            if h.lower().startswith("content-length:"):
                length = int(h.split(":", 1)[1].strip())
        body = await reader.readexactly(length) if length else b""
        rule = self._match(method, path)
        if rule is not None and rule.action == "drop":
            self.log.append((method, path, "drop"))
            writer.transport.abort()
            return
        if rule is not None and rule.action == "status":
            self.log.append((method, path, str(rule.status)))
            payload = json.dumps({"detail": f"injected {rule.status}"}).encode()
            extra = f"Retry-After: {rule.retry_after:g}\r\n" if rule.retry_after is not None else ""
            writer.write((f"HTTP/1.1 {rule.status} Injected\r\nContent-Type: application/json\r\n{extra}"
                          f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload)
            await writer.drain()
            writer.close()
            return
        if rule is not None and rule.action == "slow":
            await asyncio.sleep(rule.delay_s)
        self.log.append((method, path, "forward"))
        up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        kept = [h for h in headers if not h.lower().startswith(("connection:", "keep-alive:"))]
        up_writer.write((lines[0] + "\r\n" + "\r\n".join(kept + ["Connection: close"]) + "\r\n\r\n").encode("latin-1"))
        up_writer.write(body)
        await up_writer.drain()
        response = await up_reader.read()
        up_writer.close()
        writer.write(response)
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
