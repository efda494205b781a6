"""The E-step: sample N completions per task, score each with a binary verifier, store every sample.

Two sources of samples:

* :func:`evaluate` – an OpenAI-compatible chat-completions endpoint (vLLM, OpenAI, Groq, Synth's
  ``/api/inference/v1``, the embedded backend). One request per task asks for ``n`` samples; servers that ignore or
  cap ``n`` are topped up with extra requests (once a server is seen returning one choice for ``n > 1`` the remaining
  samples are requested in parallel with ``n=1`` and distinct seeds). ``greedy=True`` means ``n=1, temperature=0``.
* :func:`evaluate_task_app` – a Synth task app: one ``POST {task_app_url}/rollout`` per seed with the body
  ``synth-ai eval`` sends (learning-api.md §6.2, ``mode: "eval"``, header ``X-API-Key``), scored by Synth's
  "official score" rule, binarised with ``score >= reward_threshold``.

Shared design:

* **Bounded concurrency** – an anyio semaphore bounds in-flight HTTP requests (not tasks), so top-up requests count
  too; ``concurrency`` worker coroutines pull tasks from one queue.
* **Retries** (:class:`RetryPolicy`) – connection errors, timeouts, 408, 429 and 5xx are retried with exponential
  backoff (``Retry-After`` is honoured when the server sends it); other 4xx fail at once. After the last attempt a
  :class:`ChatEndpointError` / :class:`TaskAppError` names the URL (never the API key; response excerpts are
  redacted) and what to check. A chat endpoint that rejects ``top_k`` or ``chat_template_kwargs`` with a 400 (OpenAI
  does) is retried without it.
* **Fail fast** – the first endpoint or verifier error cancels the other workers and is raised as is (no exception
  groups). Verifier errors are :class:`~learning_mcp.tools.rewards.VerifierError`. A task app is the exception for
  per-seed 5xx/timeouts after retries: a crashing environment seed is counted in ``errors`` and skipped (raised only
  when every seed fails).
* **Storage** – each task's samples are written to the :class:`~learning_mcp.tools.traces.TraceStore` in one
  transaction, with ``metadata`` = sampling settings, request seed, finish reason and latency. Re-running an eval
  appends; call ``store.delete(run_id, iteration=..., phase=...)`` first to replace an interrupted one.
* **Summary** – :func:`~learning_mcp.tools.traces.summarize_rewards`: ``pass_at_1`` is the mean over problems of
  the share of correct samples (greedy: first sample correct), ``pass_at_n`` the share of problems with at least one
  correct sample; ``errors`` counts samples asked for but never obtained (chat) or failed rollouts (task app).
* Python verifiers (which may run unit tests) run in a worker thread; built-in ones inline.
"""

from __future__ import annotations

import email.utils
import inspect
import json
import logging
import math
import os
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx

from .rewards import Verifier, VerifierError, make_verifier
from .tasks import Task
from .traces import TraceSample, TraceStore, summarize_rewards

__all__ = [
    "ChatEndpointError",
    "EndpointError",
    "EvalSummary",
    "RetryPolicy",
    "SamplingSettings",
    "TaskAppError",
    "build_chat_body",
    "build_rollout_request",
    "evaluate",
    "evaluate_task_app",
    "extract_rollout_conversation",
    "normalize_chat_url",
    "official_score",
    "parse_chat_choices",
]

logger = logging.getLogger(__name__)

ENV_API_KEY_VAR = "ENVIRONMENT_API_KEY"
_DROPPABLE_PARAMS = ("top_k", "chat_template_kwargs")  # vLLM extensions an OpenAI-style server may reject (400)
_EXCERPT_CHARS = 300

ProgressCallback = Callable[[int, int], "Awaitable[None] | None"]


# ---------------------------------------------------------------------------------------------------------------
# Settings, summary, errors


@dataclass
class SamplingSettings:
    n: int = 8
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int | None = 40
    max_tokens: int = 64
    stop: list[str] | None = None
    seed: int | None = None
    # passed to the server's chat template, as vLLM's API takes them, e.g. {"enable_thinking": False} for Qwen3
    chat_template_kwargs: dict[str, Any] | None = None

    def validate(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n (samples per problem) must be an integer >= 1, got {self.n!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 or None, got {self.top_k!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.chat_template_kwargs is not None and not isinstance(self.chat_template_kwargs, dict):
            raise ValueError(f"chat_template_kwargs must be a dict, e.g. {{'enable_thinking': False}}, got "
                             f"{self.chat_template_kwargs!r}")


@dataclass
class EvalSummary:
    problems: int
    samples: int
    correct: int
    solved_any: int
    pass_at_1: float
    pass_at_n: float
    mean_reward: float
    errors: int
    seconds: float
    mean_score: float | None = None  # task apps: the mean official score before binarisation

    def to_dict(self) -> dict:
        return asdict(self)


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


class EndpointError(Exception):
    """An HTTP endpoint the eval depends on failed. ``code`` is snake_case; ``message`` says what to check."""

    def __init__(self, code: str, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.url = url
        self.status = status

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "url": self.url, "status": self.status}


class ChatEndpointError(EndpointError):
    """The chat-completions endpoint is unreachable, rejected the request, or kept failing after retries."""


class TaskAppError(EndpointError):
    """The task app is unreachable, rejected the environment key, or answered garbage."""


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


def normalize_chat_url(url: str) -> str:
    """The full chat-completions URL for a base URL. Rules, applied to the path (query string kept):

    * no scheme → ``http://`` is assumed; only http/https are accepted;
    * ends in ``/chat/completions`` → unchanged;
    * ends in ``/chat`` → ``/completions`` appended; ``/v1/completions`` (legacy) → ``/v1/chat/completions``;
    * ends in ``/v1`` (or any ``/v<N>``) → ``/chat/completions`` appended (``.../api/inference/v1`` included);
    * ends in ``/api`` (Synth's API base) → ``/inference/v1/chat/completions`` appended;
    * ends in ``/api/inference`` → ``/v1/chat/completions`` appended;
    * anything else (a bare host, ``.../openai``) → ``/v1/chat/completions`` appended, as Synth's task apps do.
    """
    text = (url or "").strip()
    if not text:
        raise ChatEndpointError("invalid_url", "chat_url is empty; pass e.g. http://localhost:8000/v1")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ChatEndpointError(
            "invalid_url", f"chat_url {_redact_url(url)!r} is not an http(s) URL; pass e.g. http://localhost:8000/v1"
        )
    path = parts.path.rstrip("/")
    if path.endswith("/chat/completions"):
        pass
    elif path.endswith("/chat"):
        path += "/completions"
    elif re.search(r"/v\d+/completions$", path):
        path = path[: -len("completions")] + "chat/completions"
    elif re.search(r"/v\d+$", path):
        path += "/chat/completions"
    elif path.endswith("/api"):
        path += "/inference/v1/chat/completions"
    elif path.endswith("/api/inference"):
        path += "/v1/chat/completions"
    else:
        path += "/v1/chat/completions"
    return urlunsplit(parts._replace(path=path))


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


# ---------------------------------------------------------------------------------------------------------------
# Chat completions


def build_chat_body(
    model: str,
    messages: list[dict],
    settings: SamplingSettings,
    *,
    n: int,
    greedy: bool = False,
    seed: int | None = None,
    drop: Iterable[str] = (),
) -> dict:
    """The chat-completions request body (pure). Greedy: ``temperature=0, top_p=1``, no ``top_k``."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "n": n,
        "temperature": 0.0 if greedy else settings.temperature,
        "top_p": 1.0 if greedy else settings.top_p,
        "max_tokens": settings.max_tokens,
    }
    if settings.top_k is not None and not greedy:
        body["top_k"] = settings.top_k
    if settings.stop:
        body["stop"] = list(settings.stop)
    if settings.chat_template_kwargs:
        body["chat_template_kwargs"] = dict(settings.chat_template_kwargs)
    if seed is not None:
        body["seed"] = seed
    for key in drop:
        body.pop(key, None)
    return body


def _content_text(content: Any) -> str | None:
    if content is None:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part.get("text") for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        parts += [part for part in content if isinstance(part, str)]
        return "".join(parts) if parts else None
    if isinstance(content, dict):
        for key in ("text", "content", "payload"):
            if isinstance(content.get(key), str):
                return content[key]
    return None


def parse_chat_choices(data: Any) -> list[tuple[str, str | None]]:
    """``[(text, finish_reason), ...]`` from a chat-completions response (pure). Raises ValueError on a bad shape."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise ValueError("the response has no 'choices' list")
    choices = sorted(
        (c for c in data["choices"] if isinstance(c, dict)),
        key=lambda c: c.get("index") if isinstance(c.get("index"), int) else 0,
    )
    parsed = []
    for choice in choices:
        message = choice.get("message")
        text = _content_text(message.get("content")) if isinstance(message, dict) else None
        if text is None and isinstance(choice.get("text"), str):
            text = choice["text"]
        parsed.append((text or "", choice.get("finish_reason")))
    return parsed


@dataclass
class _Sample:
    text: str
    finish_reason: str | None
    latency_s: float
    seed: int | None


@dataclass
class _ChatContext:
    client: httpx.AsyncClient
    url: str
    model: str
    headers: dict[str, str]
    settings: SamplingSettings
    greedy: bool
    timeout_s: float
    retry: RetryPolicy
    semaphore: anyio.Semaphore
    secrets: tuple[str, ...]
    dropped: set[str] = field(default_factory=set)
    ignores_n: bool = False


def _chat_error(failure: _RequestFailed, ctx: _ChatContext) -> ChatEndpointError:
    url = _redact_url(ctx.url)
    attempts = f"after {failure.attempts} attempt(s)"
    status = failure.status
    if failure.kind == "invalid_url":
        return ChatEndpointError("invalid_url", f"chat endpoint URL {url} is not usable: {failure.detail}", url=url)
    if failure.kind == "connect":
        return ChatEndpointError(
            "endpoint_unreachable",
            f"could not reach the chat endpoint {url} {attempts} ({failure.detail}). Check that the inference server "
            "is running and that the host, port and path of chat_url are right.",
            url=url,
        )
    if failure.kind == "timeout":
        return ChatEndpointError(
            "endpoint_timeout",
            f"the chat endpoint {url} did not answer within {ctx.timeout_s:g}s {attempts}. The server may be "
            "overloaded or max_tokens too large: raise timeout_s, lower concurrency or max_tokens.",
            url=url,
        )
    if failure.kind == "bad_response":
        return ChatEndpointError(
            "endpoint_bad_response",
            f"the chat endpoint {url} answered {failure.detail}. Check that chat_url points at an OpenAI-compatible "
            "/v1/chat/completions route.",
            url=url,
            status=status,
        )
    detail = f"HTTP {status}: {failure.detail}"
    if status in (401, 403):
        code, hint = "endpoint_auth_failed", "Check the api_key passed for this endpoint."
    elif status == 404:
        code, hint = "endpoint_not_found", (
            f"Check the URL path (it should end in /v1/chat/completions) and that model {ctx.model!r} is served there."
        )
    elif status == 429:
        code, hint = "endpoint_rate_limited", f"Still rate limited {attempts}; lower concurrency or retry later."
    elif status is not None and status >= 500:
        code, hint = "endpoint_server_error", (
            f"It kept failing {attempts}; check the inference server's logs and that model {ctx.model!r} is loaded."
        )
    else:
        code, hint = "endpoint_rejected_request", (
            f"Check the model name {ctx.model!r} and the sampling settings (n, max_tokens, stop)."
        )
    return ChatEndpointError(code, f"the chat endpoint {url} answered {detail}. {hint}", url=url, status=status)


async def _chat_request(ctx: _ChatContext, task: Task, n: int, seed_offset: int) -> list[_Sample]:
    seed = None if ctx.settings.seed is None or ctx.greedy else ctx.settings.seed + seed_offset
    while True:
        body = build_chat_body(
            ctx.model, task.messages, ctx.settings, n=n, greedy=ctx.greedy, seed=seed, drop=ctx.dropped
        )
        try:
            async with ctx.semaphore:
                data, latency = await _post_json(
                    ctx.client, ctx.url, body, headers=ctx.headers, timeout_s=ctx.timeout_s, retry=ctx.retry,
                    secrets=ctx.secrets,
                )
        except _RequestFailed as failure:
            rejected = [
                p for p in _DROPPABLE_PARAMS
                if failure.status == 400 and p in body and p in failure.detail and p not in ctx.dropped
            ]
            if rejected:
                ctx.dropped.update(rejected)
                logger.warning("chat endpoint %s rejects %s; sampling without it", _redact_url(ctx.url), rejected)
                continue
            raise _chat_error(failure, ctx) from None
        try:
            choices = parse_chat_choices(data)
        except ValueError as exc:
            raise _chat_error(
                _RequestFailed("bad_response", f"{exc}: {_excerpt(json.dumps(data), ctx.secrets)}"), ctx
            ) from None
        return [_Sample(text, finish, latency, seed) for text, finish in choices[:n]]


async def _sample_task(ctx: _ChatContext, task: Task, n: int) -> list[_Sample]:
    """Exactly ``n`` samples when the server cooperates; fewer only after two empty rounds in a row."""
    samples: list[_Sample] = []
    empty_rounds = 0
    while len(samples) < n:
        need = n - len(samples)
        offset = len(samples)
        if ctx.ignores_n and need > 1:
            calls = [lambda j=j: _chat_request(ctx, task, 1, offset + j) for j in range(need)]
            batches = await _gather(calls)
        else:
            batches = [await _chat_request(ctx, task, need, offset)]
            if need > 1 and len(batches[0]) == 1 and not ctx.ignores_n:
                ctx.ignores_n = True
                logger.warning(
                    "chat endpoint %s returned 1 choice for n=%d; topping up with parallel n=1 requests",
                    _redact_url(ctx.url), need,
                )
        got = [sample for batch in batches for sample in batch][:need]
        if not got:
            empty_rounds += 1
            if empty_rounds >= 2:
                logger.warning("task %s: the endpoint returned no choices twice; keeping %d/%d samples",
                               task.id, len(samples), n)
                break
            continue
        empty_rounds = 0
        samples.extend(got)
    return samples


def _call_verifier(verifier: Verifier, task: Task, completion: str) -> float:
    try:
        value = verifier(task, completion)
    except VerifierError:
        raise
    except Exception as exc:
        raise VerifierError(
            "verifier_raised", f"verifier raised on task {task.id!r}: {type(exc).__name__}: {exc}", task_id=task.id
        ) from exc
    try:
        reward = float(value)
    except (TypeError, ValueError):
        raise VerifierError(
            "verifier_bad_return", f"verifier returned {value!r} for task {task.id!r}", task_id=task.id
        ) from None
    if math.isnan(reward):
        raise VerifierError("verifier_bad_return", f"verifier returned NaN for task {task.id!r}", task_id=task.id)
    return min(1.0, max(0.0, reward))


async def _score(verifier: Verifier, task: Task, texts: list[str]) -> list[float]:
    def run() -> list[float]:
        return [_call_verifier(verifier, task, text) for text in texts]

    if getattr(verifier, "blocking", True):
        return await anyio.to_thread.run_sync(run)
    return run()


def _resolve_verifier(verifier: Verifier | str | dict) -> Verifier:
    if isinstance(verifier, (str, dict)):
        return make_verifier(verifier)
    if not callable(verifier):
        raise TypeError(f"verifier must be callable or a verifier spec, got {type(verifier).__name__}")
    return verifier


async def evaluate(
    tasks: Iterable[Task],
    *,
    chat_url: str,
    model: str,
    verifier: Verifier | str | dict,
    settings: SamplingSettings | None = None,
    store: TraceStore,
    run_id: str,
    iteration: int,
    phase: str,
    api_key: str | None = None,
    concurrency: int = 8,
    greedy: bool = False,
    timeout_s: float = 120,
    on_progress: ProgressCallback | None = None,
    client: httpx.AsyncClient | None = None,
    retry: RetryPolicy | None = None,
    reward_threshold: float = 1.0,
) -> EvalSummary:
    """Sample, score and store every task; see the module docstring. Raises ChatEndpointError / VerifierError."""
    settings = settings or SamplingSettings()
    settings.validate()
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    task_list = list(tasks)
    ids = [task.id for task in task_list]
    if len(set(ids)) != len(ids):
        raise ValueError("task ids must be unique within one evaluate() call")
    url = normalize_chat_url(chat_url)
    scorer = _resolve_verifier(verifier)
    n = 1 if greedy else settings.n
    retry = retry or RetryPolicy()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    started = time.monotonic()
    rewards_by_problem: dict[str, list[float]] = {task.id: [] for task in task_list}
    progress = {"done": 0, "errors": 0}
    total = len(task_list)
    pending = iter(task_list)

    async with _http_client(client, timeout_s, concurrency) as http:
        ctx = _ChatContext(
            client=http, url=url, model=model, headers=headers, settings=settings, greedy=greedy,
            timeout_s=timeout_s, retry=retry, semaphore=anyio.Semaphore(concurrency),
            secrets=(api_key,) if api_key else (),
        )

        async def worker() -> None:
            for task in pending:
                samples = await _sample_task(ctx, task, n)
                rewards = await _score(scorer, task, [s.text for s in samples])
                rows = [
                    _chat_row(task, sample, index, reward, ctx=ctx, n=n, run_id=run_id, iteration=iteration,
                              phase=phase)
                    for index, (sample, reward) in enumerate(zip(samples, rewards))
                ]
                await anyio.to_thread.run_sync(store.add_samples, rows)
                rewards_by_problem[task.id] = rewards
                progress["errors"] += n - len(samples)
                progress["done"] += 1
                await _notify(on_progress, progress["done"], total)

        if task_list:
            await _run_workers(min(concurrency, total), worker)

    numbers = summarize_rewards(rewards_by_problem, threshold=reward_threshold)
    summary = EvalSummary(**numbers, errors=progress["errors"], seconds=round(time.monotonic() - started, 3))
    logger.info("eval %s/%s/%s: %s", run_id, iteration, phase, summary.to_dict())
    return summary


def _chat_row(
    task: Task, sample: _Sample, index: int, reward: float, *, ctx: _ChatContext, n: int, run_id: str,
    iteration: int, phase: str,
) -> TraceSample:
    settings = ctx.settings
    return TraceSample(
        run_id=run_id,
        iteration=iteration,
        phase=phase,
        problem_id=task.id,
        split=task.split,
        model=ctx.model,
        sample_index=index,
        prompt=task.messages,
        completion=sample.text,
        reward=reward,
        finish_reason=sample.finish_reason,
        metadata={
            "temperature": 0.0 if ctx.greedy else settings.temperature,
            "top_p": 1.0 if ctx.greedy else settings.top_p,
            "top_k": None if ctx.greedy or "top_k" in ctx.dropped else settings.top_k,
            "max_tokens": settings.max_tokens,
            "n": n,
            "greedy": ctx.greedy,
            "seed": sample.seed,
            "finish_reason": sample.finish_reason,
            "latency_s": round(sample.latency_s, 4),
        },
    )


# ---------------------------------------------------------------------------------------------------------------
# Task apps (Synth's /rollout contract)


def build_rollout_request(
    seed: int,
    *,
    model: str,
    inference_url: str | None,
    split: str = "train",
    env_name: str | None = None,
    policy_name: str | None = None,
    env_config: Mapping[str, Any] | None = None,
    policy_config: Mapping[str, Any] | None = None,
    ops: Sequence[Any] | None = None,
    max_llm_calls: int = 10,
    run_id: str | None = None,
) -> dict:
    """The body ``synth-ai eval`` POSTs to ``/rollout`` for one seed (learning-api.md §6.2), pure but for the uuid."""
    env: dict[str, Any] = {"config": {"split": split, "index": seed, **dict(env_config or {})}, "seed": seed}
    if env_name:
        env["env_name"] = env_name
    overrides: dict[str, Any] = {}
    if inference_url:
        overrides["inference_url"] = inference_url
    return {
        "run_id": run_id or str(uuid.uuid4()),
        "env": env,
        "policy": {
            "policy_name": policy_name or model,
            "config": {"model": model, **overrides, **dict(policy_config or {})},
        },
        "ops": list(ops) if ops else ["agent", "env"] * max_llm_calls,
        "record": {"return_trace": True, "trace_format": "structured"},
        "mode": "eval",
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def official_score(response: Any) -> tuple[float | None, str | None]:
    """Synth's "official score": the first number among ``metrics.mean_return``, ``metrics.total_reward`` and
    ``metrics.outcome_score``, else ``trajectories[0].steps[0].reward``; clamped to [0, 1]. ``(score, source)``."""
    if not isinstance(response, dict):
        return None, None
    metrics = response.get("metrics")
    if isinstance(metrics, dict):
        for key in ("mean_return", "total_reward", "outcome_score"):
            if _is_number(metrics.get(key)):
                return min(1.0, max(0.0, float(metrics[key]))), f"metrics.{key}"
    try:
        reward = response["trajectories"][0]["steps"][0].get("reward")
    except (KeyError, IndexError, TypeError, AttributeError):
        reward = None
    if _is_number(reward):
        return min(1.0, max(0.0, float(reward))), "trajectories[0].steps[0].reward"
    return None, None


_ROLE_ALIASES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "observation": "system",
    "policy_system_prompt": "system",
    "policy_user_prompt": "user",
    "action": "assistant",
    "policy_tool_call": "assistant",
}


def _message_of(node: dict) -> dict | None:
    role = node.get("role") or node.get("message_type") or node.get("type")
    if not isinstance(role, str) or role not in _ROLE_ALIASES or "content" not in node:
        return None
    text = _content_text(node.get("content"))
    if text is None:
        return None
    return {"role": _ROLE_ALIASES[role], "content": text}


def _conversations(node: Any, out: list[list[dict]]) -> None:
    """Collect every list of chat messages in ``node`` (document order); a lone message is a list of one."""
    if isinstance(node, list):
        messages = [m for m in (_message_of(item) for item in node if isinstance(item, dict)) if m]
        if messages:
            out.append(messages)
        for item in node:
            if isinstance(item, (dict, list)) and not (isinstance(item, dict) and _message_of(item)):
                _conversations(item, out)
    elif isinstance(node, dict):
        message = _message_of(node)
        if message:
            out.append([message])
            return
        for value in node.values():
            if isinstance(value, (dict, list)):
                _conversations(value, out)


def _first_trajectory(response: Mapping[str, Any]) -> dict:
    trajectories = response.get("trajectories")
    if isinstance(trajectories, list) and trajectories and isinstance(trajectories[0], dict):
        return trajectories[0]
    return {}


def _final_observation(response: Mapping[str, Any]) -> Any:
    trajectories = response.get("trajectories")
    if not isinstance(trajectories, list) or not trajectories or not isinstance(trajectories[-1], dict):
        return None
    last = trajectories[-1]
    final = last.get("final")
    if isinstance(final, dict) and final.get("observation") is not None:
        return final["observation"]
    steps = last.get("steps")
    if isinstance(steps, list) and steps and isinstance(steps[-1], dict):
        return steps[-1].get("obs")
    return None


def extract_rollout_conversation(response: Any) -> tuple[list[dict], str, str]:
    """``(prompt_messages, completion, source)`` from a RolloutResponse (pure).

    The completion is the last assistant text in ``trace``, else in ``trajectories``; else Synth's
    ``final.observation.completion`` string; else a compact JSON of the final observation. The prompt is the
    messages before that assistant message in the same conversation (else the last list ending in a user message,
    else Synth's ``steps[0].obs.prompt`` string as one user message, else ``[]``).
    """
    if not isinstance(response, dict):
        return [], "", "none"
    for source in ("trace", "trajectories"):
        conversations: list[list[dict]] = []
        _conversations(response.get(source), conversations)
        found = None
        for conv_index, messages in enumerate(conversations):
            for msg_index, message in enumerate(messages):
                if message["role"] == "assistant" and message["content"].strip():
                    found = (conv_index, msg_index)
        if found is None:
            continue
        conv_index, msg_index = found
        completion = conversations[conv_index][msg_index]["content"]
        prompt = conversations[conv_index][:msg_index]
        if not any(m["role"] == "user" for m in prompt):
            candidates = [c for c in conversations[: conv_index + 1] if c and c[-1]["role"] == "user"]
            prompt = candidates[-1] if candidates else prompt
        if not any(m["role"] == "user" for m in prompt):
            prompt = _synth_prompt(response) or prompt
        return prompt, completion, f"{source}.assistant"
    final_obs = _final_observation(response)
    prompt = _synth_prompt(response)
    if isinstance(final_obs, dict) and isinstance(final_obs.get("completion"), str):
        return prompt, final_obs["completion"], "final.observation.completion"
    if final_obs is not None:
        return prompt, json.dumps(final_obs, separators=(",", ":"), sort_keys=True, default=str), "final.observation"
    return prompt, "", "none"


def _synth_prompt(response: Mapping[str, Any]) -> list[dict]:
    steps = _first_trajectory(response).get("steps")
    if isinstance(steps, list) and steps and isinstance(steps[0], dict):
        obs = steps[0].get("obs")
        if isinstance(obs, dict) and isinstance(obs.get("prompt"), str):
            return [{"role": "user", "content": obs["prompt"]}]
    return []


def _rollout_info(response: Mapping[str, Any]) -> dict:
    """task_id / task_split / task_rubric_id from the first step's obs or the final observation/info, as Synth does."""
    trajectory = _first_trajectory(response)
    places: list[Any] = []
    steps = trajectory.get("steps")
    if isinstance(steps, list) and steps and isinstance(steps[0], dict):
        places.append(steps[0].get("obs"))
    final = trajectory.get("final")
    if isinstance(final, dict):
        places += [final.get("observation"), final.get("info")]
    info: dict[str, str] = {}
    for key in ("task_id", "task_split", "task_rubric_id"):
        for place in places:
            if isinstance(place, dict) and isinstance(place.get(key), str) and place[key]:
                info[key] = place[key]
                break
    return info


def _task_app_error(failure: _RequestFailed, url: str) -> TaskAppError:
    status = failure.status
    if failure.kind == "invalid_url":
        return TaskAppError("invalid_url", f"task app URL {url} is not usable: {failure.detail}", url=url)
    if failure.kind == "connect":
        return TaskAppError(
            "task_app_unreachable",
            f"could not reach the task app at {url} after {failure.attempts} attempt(s) ({failure.detail}). "
            "Check that it is running and that task_app_url is its base URL.",
            url=url,
        )
    if failure.kind == "timeout":
        return TaskAppError("task_app_timeout", f"the task app at {url} timed out: {failure.detail}", url=url)
    if failure.kind == "bad_response":
        return TaskAppError("task_app_bad_response", f"the task app at {url} answered {failure.detail}", url=url)
    if status == 503 and "missing_environment_api_key" in failure.detail:
        return TaskAppError(
            "task_app_missing_key",
            f"the task app at {url} has no {ENV_API_KEY_VAR} configured (503 missing_environment_api_key); set "
            f"{ENV_API_KEY_VAR} in the task app's environment and restart it.",
            url=url,
            status=status,
        )
    if status in (401, 403):
        return TaskAppError(
            "invalid_environment_api_key",
            f"the task app at {url} rejected the environment key (HTTP {status}: {failure.detail}). Pass the task "
            f"app's {ENV_API_KEY_VAR} as env_api_key; it must equal the key the task app was started with.",
            url=url,
            status=status,
        )
    if status == 404:
        return TaskAppError(
            "task_app_not_found",
            f"no POST /rollout at {url} (HTTP 404). task_app_url must be the task app's base URL.",
            url=url,
            status=status,
        )
    return TaskAppError(
        "task_app_error" if status and status >= 500 else "task_app_rejected_request",
        f"the task app at {url} answered HTTP {status}: {failure.detail}",
        url=url,
        status=status,
    )


def _rollout_url(task_app_url: str) -> str:
    text = (task_app_url or "").strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TaskAppError("invalid_url", f"task_app_url {task_app_url!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    if not path.endswith("/rollout"):
        path += "/rollout"
    return urlunsplit(parts._replace(path=path))


async def evaluate_task_app(
    seeds: Iterable[int],
    *,
    task_app_url: str,
    env_api_key: str | None,
    model: str,
    inference_url: str | None,
    store: TraceStore,
    run_id: str,
    iteration: int,
    phase: str,
    env_name: str | None = None,
    policy_name: str | None = None,
    split: str = "train",
    max_llm_calls: int = 10,
    env_config: Mapping[str, Any] | None = None,
    policy_config: Mapping[str, Any] | None = None,
    concurrency: int = 4,
    reward_threshold: float = 1.0,
    client: httpx.AsyncClient | None = None,
    ops: Sequence[Any] | None = None,
    timeout_s: float = 300,
    retry: RetryPolicy | None = None,
    on_progress: ProgressCallback | None = None,
) -> EvalSummary:
    """One eval rollout per seed against a Synth task app; see the module docstring. Raises TaskAppError."""
    seed_list = [int(seed) for seed in seeds]
    if len(set(seed_list)) != len(seed_list):
        raise ValueError("seeds must be unique")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    url = _rollout_url(task_app_url)
    shown_url = _redact_url(url)
    key = env_api_key or os.environ.get(ENV_API_KEY_VAR)
    if not key:
        raise TaskAppError(
            "missing_environment_api_key",
            f"no environment API key for the task app at {shown_url}: pass env_api_key or set {ENV_API_KEY_VAR} "
            "to the key the task app was started with.",
            url=shown_url,
        )
    policy_url = normalize_chat_url(inference_url) if inference_url else None
    retry = retry or RetryPolicy()
    headers = {"X-API-Key": key, "Content-Type": "application/json", "Accept": "application/json"}
    started = time.monotonic()
    rewards_by_problem: dict[str, list[float]] = {str(seed): [] for seed in seed_list}
    scores: list[float] = []
    failed: list[TaskAppError] = []
    progress = {"done": 0}
    pending = iter(seed_list)

    def fatal(status: int, text: str) -> bool:
        return "missing_environment_api_key" in text

    async with _http_client(client, timeout_s, concurrency) as http:
        semaphore = anyio.Semaphore(concurrency)

        async def worker() -> None:
            for seed in pending:
                body = build_rollout_request(
                    seed, model=model, inference_url=policy_url, split=split, env_name=env_name,
                    policy_name=policy_name, env_config=env_config, policy_config=policy_config, ops=ops,
                    max_llm_calls=max_llm_calls,
                )
                try:
                    async with semaphore:
                        data, latency = await _post_json(
                            http, url, body, headers=headers, timeout_s=timeout_s, retry=retry, secrets=(key,),
                            is_fatal=fatal,
                        )
                except _RequestFailed as failure:
                    error = _task_app_error(failure, shown_url)
                    per_seed = failure.kind == "timeout" or (
                        failure.kind == "http" and failure.status is not None and failure.status >= 500
                        and error.code == "task_app_error"
                    )
                    if not per_seed:
                        raise error from None
                    logger.warning("rollout for seed %s failed: %s", seed, error.message)
                    failed.append(error)
                else:
                    score, source = official_score(data)
                    reward = 1.0 if score is not None and score >= reward_threshold else 0.0
                    prompt, completion, completion_source = extract_rollout_conversation(data)
                    metadata = {
                        "official_score": score,
                        "score_source": source,
                        "completion_source": completion_source,
                        "env_name": env_name,
                        "policy_name": policy_name or model,
                        "rollout_run_id": body["run_id"],
                        "trace_correlation_id": data.get("trace_correlation_id"),
                        "aborted": bool(data.get("aborted")),
                        "ops_executed": data.get("ops_executed"),
                        "metrics": data.get("metrics") if isinstance(data.get("metrics"), dict) else None,
                        "latency_s": round(latency, 4),
                        **_rollout_info(data),
                    }
                    row = TraceSample(
                        run_id=run_id, iteration=iteration, phase=phase, problem_id=str(seed), split=split,
                        model=model, sample_index=0, prompt=prompt, completion=completion, reward=reward,
                        finish_reason="aborted" if data.get("aborted") else "done", metadata=metadata,
                    )
                    await anyio.to_thread.run_sync(store.add_samples, [row])
                    rewards_by_problem[str(seed)] = [reward]
                    if score is not None:
                        scores.append(score)
                progress["done"] += 1
                await _notify(on_progress, progress["done"], len(seed_list))

        if seed_list:
            await _run_workers(min(concurrency, len(seed_list)), worker)

    if seed_list and len(failed) == len(seed_list):
        first = failed[0]
        raise TaskAppError(
            "all_rollouts_failed", f"all {len(seed_list)} rollouts failed; the first: {first.message}",
            url=shown_url, status=first.status,
        )
    numbers = summarize_rewards(rewards_by_problem, threshold=reward_threshold)
    summary = EvalSummary(
        **numbers,
        errors=len(failed),
        seconds=round(time.monotonic() - started, 3),
        mean_score=sum(scores) / len(scores) if scores else None,
    )
    logger.info("task-app eval %s/%s/%s: %s", run_id, iteration, phase, summary.to_dict())
    return summary
