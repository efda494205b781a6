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
  redacted) and what to check. A chat endpoint that rejects ``top_k`` with a 400 (OpenAI does) is retried without it.
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

The code is split by concern: :mod:`.http` (retries, redaction, workers), :mod:`.sampling` (chat completions) and
:mod:`.rollouts` (task apps); this module re-exports their public names.
"""

from __future__ import annotations

from .http import EndpointError, RetryPolicy
from .rollouts import (ENV_API_KEY_VAR, TaskAppError, build_rollout_request, evaluate_task_app,
                       extract_rollout_conversation, official_score)
from .sampling import (ChatEndpointError, EvalSummary, SamplingSettings, build_chat_body, evaluate,
                       normalize_chat_url, parse_chat_choices)

__all__ = [
    "ChatEndpointError",
    "ENV_API_KEY_VAR",
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
