"""The one HTTP layer of the tools: the retry policy (tenacity), the ``Retry-After`` parser and the redaction of
URLs and response excerpts, used by the learning-API client (:mod:`.client`) and by the eval sampler (chat
completions, :mod:`.sampling`; task apps, :mod:`.rollouts`); plus the sampler's POST-JSON helper and its
bounded-concurrency workers.

Retry rule (one for every caller): connection errors, timeouts, 408, 429 and 5xx are retried up to
``RetryPolicy.attempts`` times in all; the wait is the server's ``Retry-After`` (capped at ``max_retry_after_s``)
when it sends one, else exponential backoff with full jitter (tenacity's ``wait_random_exponential``:
uniform in ``[0, min(max_delay_s, base_delay_s * 2**(n-1))]`` before retry *n*). Other 4xx fail at once. Callers
say which calls are safe to repeat (the client: reads, idempotent writes, creates with an Idempotency-Key).
"""

from __future__ import annotations

import email.utils
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import httpx
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from .errors import MessageError
from .settings import redact, redact_url

logger = logging.getLogger("learning_mcp.tools.evaluate")

_EXCERPT_CHARS = 300
T = TypeVar("T")

ProgressCallback = Callable[[int, int], "Awaitable[None] | None"]


# ---------------------------------------------------------------------------------------------------------------
# Retry policy, Retry-After, errors


class RetryPolicy(BaseModel):
    """Attempts per request (in all, the first included) and the waits between them; see the module docstring.

    Field names are the learning-API client's; the sampler's historical names (``max_attempts``,
    ``initial_backoff_s``, ``max_backoff_s``) are accepted as aliases."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    attempts: int = Field(4, ge=1, validation_alias=AliasChoices("attempts", "max_attempts"))
    base_delay_s: float = Field(0.5, ge=0, validation_alias=AliasChoices("base_delay_s", "initial_backoff_s"))
    max_delay_s: float = Field(8.0, ge=0, validation_alias=AliasChoices("max_delay_s", "max_backoff_s"))
    max_retry_after_s: float = Field(30.0, ge=0)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(float(retry_after), self.max_retry_after_s)
        return wait_random_exponential(multiplier=self.base_delay_s, max=self.max_delay_s)(state)

    async def call(self, attempt: Callable[[int], Awaitable[T]], *, retryable: Callable[[BaseException], bool],
                   label: str) -> T:
        """``await attempt(n)`` for n = 1, 2, … until it returns, raises a non-retryable exception, or the
        attempts are spent (the last exception is raised as is)."""

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            logger.info("%s failed (%s); retry %d/%d in %.2fs", label, getattr(exc, "detail", exc),
                        state.attempt_number, self.attempts - 1, state.upcoming_sleep)

        retrying = AsyncRetrying(stop=stop_after_attempt(self.attempts), wait=self._wait,
                                 retry=retry_if_exception(retryable), reraise=True, sleep=anyio.sleep,
                                 before_sleep=log_retry)
        async for try_ in retrying:
            with try_:
                return await attempt(try_.retry_state.attempt_number)
        raise AssertionError("unreachable: tenacity re-raises the last failure")


DEFAULT_RETRY = RetryPolicy()
SAMPLER_RETRY = RetryPolicy(base_delay_s=0.25, max_retry_after_s=60.0)  # chat endpoints and task apps


def retryable_status(status: int) -> bool:
    """408, 429 and 5xx are worth another try; other statuses are the caller's mistake."""
    return status in (408, 429) or status >= 500


def retry_after_s(headers: httpx.Headers) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date, RFC 9110 §10.2.3), else None."""
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


class EndpointError(MessageError):
    """An HTTP endpoint the eval depends on failed. ``code`` is snake_case; ``message`` says what to check.
    ``status`` is the endpoint's HTTP status (None when it never answered)."""

    def __init__(self, code: str, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(code, message)
        self.url = url
        self.status = status  # type: ignore[assignment]

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "url": self.url, "status": self.status}


_redact_url = redact_url  # the sampler modules' historical name


# ---------------------------------------------------------------------------------------------------------------
# POST JSON with retries (the sampler's request path)


class _RequestFailed(Exception):
    def __init__(self, kind: str, detail: str, *, status: int | None = None, attempts: int = 1,
                 retry_after: float | None = None, retryable: bool = False):
        super().__init__(detail)
        self.kind = kind  # connect | timeout | http | bad_response | invalid_url
        self.detail = detail
        self.status = status
        self.attempts = attempts
        self.retry_after = retry_after
        self.retryable = retryable


def _excerpt(text: str, secrets: Sequence[str]) -> str:
    text = redact(" ".join((text or "").split()), list(secrets))
    return text[:_EXCERPT_CHARS] + ("…" if len(text) > _EXCERPT_CHARS else "")


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
    """POST JSON, retrying transient failures. Returns ``(parsed JSON, seconds of the successful attempt)``.
    Raises ``_RequestFailed`` (``attempts`` = how many were made). A read timeout is not retried: the server
    accepted the request and may still be generating; a second copy would only pile work on it."""
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))

    async def once(attempt: int) -> tuple[Any, float]:
        started = time.monotonic()
        try:
            response = await client.post(url, json=body, headers=dict(headers), timeout=timeout)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise _RequestFailed("invalid_url", f"{type(exc).__name__}: {exc}") from exc
        except httpx.ReadTimeout as exc:
            # The server took the request and is still working on it (a generation): a retry would queue the same
            # work again behind it on a busy engine, so a read timeout is final (issue 10).
            raise _RequestFailed("timeout", f"{type(exc).__name__} after {timeout_s:g}s", attempts=attempt,
                                 retryable=False) from None
        except httpx.TimeoutException as exc:  # connect / write / pool: the request never reached the server
            raise _RequestFailed("timeout", f"{type(exc).__name__} after {timeout_s:g}s", attempts=attempt,
                                 retryable=True) from None
        except httpx.TransportError as exc:
            raise _RequestFailed("connect", f"{type(exc).__name__}: {exc}", attempts=attempt, retryable=True) from None
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
        raise _RequestFailed("http", _excerpt(text, secrets), status=status, attempts=attempt,
                             retry_after=retry_after_s(response.headers),
                             retryable=retryable_status(status) and not (is_fatal is not None and is_fatal(status, text)))

    return await retry.call(once, retryable=lambda exc: isinstance(exc, _RequestFailed) and exc.retryable,
                            label=f"POST {redact_url(url)}")


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


