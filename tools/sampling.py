"""Chat-completions sampling (the E-step over an OpenAI-compatible endpoint): request bodies, response parsing,
top-ups for servers that cap ``n``, scoring with a verifier and storing every sample.

Moved verbatim from ``tools/evaluate.py`` (its "Settings, summary", "URLs" and "Chat completions" sections); see
that module's docstring for the design.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx

from .http import (SAMPLER_RETRY, EndpointError, ProgressCallback, RetryPolicy, _excerpt, _gather, _http_client, _notify,
                   _post_json, _redact_url, _RequestFailed, _run_workers)
from .rewards import Verifier, VerifierError, make_verifier
from .tasks import Task
from .traces import TraceSample, TraceStore, summarize_rewards

logger = logging.getLogger("learning_mcp.tools.evaluate")

_DROPPABLE_PARAMS = ("top_k", "chat_template_kwargs")  # vLLM extensions an OpenAI-style server may reject (400)


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


class ChatEndpointError(EndpointError):
    """The chat-completions endpoint is unreachable, rejected the request, or kept failing after retries."""


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
# Chat completions


async def probe_model(url: str, model: str, *, api_key: str | None = None, timeout_s: float = 40.0) -> str | None:
    """Ask the chat endpoint ``url`` (already normalised) for one greedy token of ``model``: ``None`` when it
    answers or when the answer says nothing about the model (unreachable, slow, 5xx, other errors are left to the
    real run); else ``"(<code or status>): <server's reason>."`` for an answer that rejects the MODEL (HTTP
    400/404/422 with a ``model_*`` error code or ``param = "model"``, as OpenAI-compatible servers and the
    embedded backend report an unknown or unloadable model). Used by ``run_sft_loop`` and ``eval`` to refuse up
    front."""

    body = {"model": model, "messages": [{"role": "user", "content": "1"}], "max_tokens": 1, "temperature": 0.0}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            response = await http.post(url, json=body, headers=headers)
    except (httpx.HTTPError, OSError):
        return None
    if response.status_code not in (400, 404, 422, 500):  # 500: a server may report a model it cannot load so
        return None
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    error = payload.get("error") if isinstance(payload, dict) else None
    error = error if isinstance(error, dict) else {}
    code, param = str(error.get("code") or ""), str(error.get("param") or "")
    detail = error.get("message") or (payload.get("detail") if isinstance(payload, dict) else None) or response.text
    if not (code.startswith("model_") or (param == "model" and response.status_code != 500)):
        return None
    detail = str(detail)[:2000].rstrip()
    return f"({code or response.status_code}): {detail}{'' if detail.endswith('.') else '.'}"


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


REQUEST_BASE_S = 120.0  # the historical fixed limit: prompt processing, queueing, a model load
REQUEST_PER_TOKEN_S = 0.25  # per token of n × max_tokens: a real-size model on a busy CPU (issue 10's figures)
REQUEST_MAX_S = 3600.0


def request_timeout_s(n: int, max_tokens: int) -> float:
    """The read timeout of one chat-completions request asking ``n`` completions of up to ``max_tokens`` tokens:
    ``120 s + 0.25 s × n × max_tokens``, at most an hour (n = 8, max_tokens = 160: 440 s; the issue measured a
    Qwen3-0.6B-sized model on CPU needing more than 120 s for it). Seconds."""
    return min(REQUEST_MAX_S, REQUEST_BASE_S + REQUEST_PER_TOKEN_S * max(1, n) * max(1, max_tokens))


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
        n = 1 if ctx.greedy else ctx.settings.n
        return ChatEndpointError(
            "endpoint_timeout",
            f"the chat endpoint {url} did not answer within {ctx.timeout_s:g}s {attempts} (the limit scales with "
            f"n × max_tokens = {n} × {ctx.settings.max_tokens}; a request the server accepted is not sent again, "
            "so no duplicate generation was queued). The server is too slow for this much generation: lower n or "
            "max_tokens, or use a smaller model or a faster inference server (chat_url).",
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


def request_seed(seed: int, problem_id: str, offset: int) -> int:
    """The ``seed`` of one sampling request (pure): a stable hash of the run's seed, the problem id and the
    request's first sample index, in [0, 2**31). Every problem gets its own seed, so what a request samples does
    not depend on which other requests a server batches it with (servers batch requests with equal seeds)."""
    digest = hashlib.blake2b(f"{seed}|{problem_id}|{offset}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**31)


async def _chat_request(ctx: _ChatContext, task: Task, n: int, seed_offset: int) -> list[_Sample]:
    seed = None if ctx.settings.seed is None or ctx.greedy else request_seed(ctx.settings.seed, task.id, seed_offset)
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
    timeout_s: float | None = None,
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
    retry = retry or SAMPLER_RETRY
    if timeout_s is None:
        timeout_s = request_timeout_s(n, settings.max_tokens)
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


