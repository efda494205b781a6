"""Task-app rollouts (Synth's ``/rollout`` contract): the request body ``synth-ai eval`` sends, the official
score, conversation extraction, and :func:`evaluate_task_app`.

Moved verbatim from ``tools/evaluate.py`` (its "Task apps" section); see that module's docstring for the design.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx

from .http import (SAMPLER_RETRY, EndpointError, ProgressCallback, RetryPolicy, _http_client, _notify, _post_json,
                   _redact_url, _RequestFailed, _run_workers)
from .sampling import EvalSummary, _content_text, normalize_chat_url
from .settings import process_environ
from .traces import TraceSample, TraceStore, summarize_rewards

logger = logging.getLogger("learning_mcp.tools.evaluate")

ENV_API_KEY_VAR = "ENVIRONMENT_API_KEY"


class TaskAppError(EndpointError):
    """The task app is unreachable, rejected the environment key, or answered garbage."""


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
    environ: Mapping[str, str] | None = None,
) -> EvalSummary:
    """One eval rollout per seed against a Synth task app; see the module docstring. Raises TaskAppError.
    Without ``env_api_key`` the key is ``ENVIRONMENT_API_KEY`` of ``environ`` (the server's ``Settings.environ``;
    None: the process environment)."""
    seed_list = [int(seed) for seed in seeds]
    if len(set(seed_list)) != len(seed_list):
        raise ValueError("seeds must be unique")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    url = _rollout_url(task_app_url)
    shown_url = _redact_url(url)
    key = env_api_key or (process_environ() if environ is None else environ).get(ENV_API_KEY_VAR)
    if not key:
        raise TaskAppError(
            "missing_environment_api_key",
            f"no environment API key for the task app at {shown_url}: pass env_api_key or set {ENV_API_KEY_VAR} "
            "to the key the task app was started with.",
            url=shown_url,
        )
    policy_url = normalize_chat_url(inference_url) if inference_url else None
    retry = retry or SAMPLER_RETRY
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

