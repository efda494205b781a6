"""HTTP with retries for the eval endpoints (chat completions, task apps): one POST-JSON helper, the retry
policy, ``Retry-After``, redaction of URLs and response excerpts, and the bounded-concurrency worker helpers.

Moved verbatim from ``tools/evaluate.py`` (its "Settings, summary, errors", "URLs" and "HTTP with retries"
sections); see that module's docstring for the design.
"""

from __future__ import annotations

import email.utils
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx

from .errors import MessageError

logger = logging.getLogger("learning_mcp.tools.evaluate")

_EXCERPT_CHARS = 300

ProgressCallback = Callable[[int, int], "Awaitable[None] | None"]


# ---------------------------------------------------------------------------------------------------------------
# Retry policy, errors


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per request and the backoff between them (exponential, capped, with a little jitter)."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0

    def backoff_s(self, failed_attempts: int) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * (2 ** (failed_attempts - 1)))
        return base * (1 + random.uniform(0, 0.1))


class EndpointError(MessageError):
    """An HTTP endpoint the eval depends on failed. ``code`` is snake_case; ``message`` says what to check.
    ``status`` is the endpoint's HTTP status (None when it never answered)."""

    def __init__(self, code: str, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(code, message)
        self.url = url
        self.status = status  # type: ignore[assignment]

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "url": self.url, "status": self.status}


# ---------------------------------------------------------------------------------------------------------------
# URLs (pure)


# ---------------------------------------------------------------------------------------------------------------
# URLs (pure)


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=f"***@{host}")
    return urlunsplit(parts)


# ---------------------------------------------------------------------------------------------------------------
# HTTP with retries


class _RequestFailed(Exception):
    def __init__(self, kind: str, detail: str, *, status: int | None = None, attempts: int = 1):
        super().__init__(detail)
        self.kind = kind  # connect | timeout | http | bad_response | invalid_url
        self.detail = detail
        self.status = status
        self.attempts = attempts


def _excerpt(text: str, secrets: Sequence[str]) -> str:
    text = " ".join((text or "").split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:_EXCERPT_CHARS] + ("…" if len(text) > _EXCERPT_CHARS else "")


def _retry_after_s(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


async def _post_json(
    client: httpx.AsyncClient,
    url: str,
    body: Mapping[str, Any],
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    retry: RetryPolicy,
    secrets: Sequence[str] = (),
    is_fatal: Callable[[int, str], bool] | None = None,
) -> tuple[Any, float]:
    """POST JSON, retrying transient failures. Returns ``(parsed JSON, seconds of the successful attempt)``."""
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
    last: _RequestFailed | None = None
    for attempt in range(1, retry.max_attempts + 1):
        delay: float | None = None
        started = time.monotonic()
        try:
            response = await client.post(url, json=body, headers=dict(headers), timeout=timeout)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise _RequestFailed("invalid_url", f"{type(exc).__name__}: {exc}") from exc
        except httpx.TimeoutException as exc:
            last = _RequestFailed("timeout", f"{type(exc).__name__} after {timeout_s:g}s", attempts=attempt)
        except httpx.TransportError as exc:
            last = _RequestFailed("connect", f"{type(exc).__name__}: {exc}", attempts=attempt)
        else:
            latency = time.monotonic() - started
            status = response.status_code
            if 200 <= status < 300:
                try:
                    return response.json(), latency
                except ValueError:
                    raise _RequestFailed(
                        "bad_response",
                        f"HTTP {status} with a body that is not JSON: {_excerpt(response.text, secrets)}",
                        status=status,
                        attempts=attempt,
                    ) from None
            text = response.text
            last = _RequestFailed("http", _excerpt(text, secrets), status=status, attempts=attempt)
            if not _retryable_status(status) or (is_fatal is not None and is_fatal(status, text)):
                raise last
            retry_after = _retry_after_s(response.headers)
            if retry_after is not None:
                delay = min(retry_after, retry.max_retry_after_s)
        if attempt == retry.max_attempts:
            break
        delay = retry.backoff_s(attempt) if delay is None else delay
        logger.info("POST %s failed (%s %s); retry %d/%d in %.2fs", _redact_url(url), last.kind,
                    last.status or last.detail, attempt, retry.max_attempts - 1, delay)
        await anyio.sleep(delay)
    assert last is not None
    raise last


@asynccontextmanager
async def _http_client(client: httpx.AsyncClient | None, timeout_s: float, concurrency: int):
    if client is not None:
        yield client
        return
    limits = httpx.Limits(max_connections=max(1, concurrency) + 4, max_keepalive_connections=max(1, concurrency))
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)), limits=limits) as own:
        yield own


async def _notify(on_progress: ProgressCallback | None, done: int, total: int) -> None:
    if on_progress is None:
        return
    try:
        result = on_progress(done, total)
        if inspect.isawaitable(result):
            await result
    except Exception:  # a broken progress callback must not kill an eval
        logger.warning("on_progress(%d, %d) raised; ignoring", done, total, exc_info=True)


async def _run_workers(count: int, worker: Callable[[], Awaitable[None]]) -> None:
    """Run ``count`` copies of ``worker``; the first exception cancels the rest and is re-raised unwrapped."""
    failures: list[BaseException] = []

    async def guarded(scope: anyio.CancelScope) -> None:
        try:
            await worker()
        except Exception as exc:
            failures.append(exc)
            scope.cancel()

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(guarded, group.cancel_scope)
    if failures:
        raise failures[0]


async def _gather(calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    results: list[Any] = [None] * len(calls)
    pending = iter(range(len(calls)))

    async def worker() -> None:
        for index in pending:
            results[index] = await calls[index]()

    await _run_workers(len(calls), worker)
    return results


