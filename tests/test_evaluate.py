"""evaluate() against a real OpenAI-compatible HTTP server on loopback, and evaluate_task_app() against a real
FastAPI task app. The servers misbehave on demand: 500s, 429 + Retry-After, ignored ``n``, slow answers, dropped
connections, auth failures."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chat_stub import free_port, serve_asgi, start_chat_stub
from learning_mcp.tools.evaluate import (
    ChatEndpointError,
    RetryPolicy,
    SamplingSettings,
    TaskAppError,
    build_rollout_request,
    evaluate,
    evaluate_task_app,
    extract_rollout_conversation,
    normalize_chat_url,
    official_score,
)
from learning_mcp.tools.rewards import VerifierError, make_verifier
from learning_mcp.tools.tasks import Task
from learning_mcp.tools.traces import TraceStore

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def answer_by_tag(messages, index):
    """'[mode] a+b': always right, never right, right on even sample indices, or right only on the first sample."""
    text = messages[-1]["content"]
    mode, a, b = re.match(r"\[(\w+)\] (\d+)\+(\d+)", text).groups()
    right = int(a) + int(b)
    if mode == "long":
        return str(right), "length"
    correct = {"always": True, "never": False, "half": index % 2 == 0, "first": index == 0}[mode]
    return str(right if correct else right + 1)


@pytest.fixture(scope="module")
def stub():
    with start_chat_stub(answer_by_tag) as running:
        yield running


@pytest.fixture
def chat(stub):
    stub.state.reset()
    return stub


@pytest.fixture
def store():
    with TraceStore(":memory:") as opened:
        yield opened


def make_task(task_id, mode, a=2, b=3):
    return Task(id=task_id, messages=[{"role": "user", "content": f"[{mode}] {a}+{b}"}], answer=str(a + b))


TASKS = [make_task("always", "always"), make_task("never", "never"), make_task("half", "half"),
         make_task("first", "first")]


def run_eval(chat, store, tasks=TASKS, **overrides):
    kwargs = dict(
        chat_url=chat.base_url + "/v1",
        model="tiny",
        verifier=make_verifier("exact"),
        settings=SamplingSettings(n=4, max_tokens=8),
        store=store,
        run_id="r1",
        iteration=1,
        phase="train_eval",
        retry=FAST,
        concurrency=4,
    )
    kwargs.update(overrides)
    return evaluate(tasks, **kwargs)


# -- URLs ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h:8000/v1", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/chat/completions", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/api/inference/v1", "http://h:8000/api/inference/v1/chat/completions"),
        ("http://h:8000/api", "http://h:8000/api/inference/v1/chat/completions"),
        ("http://h:8000/api/inference", "http://h:8000/api/inference/v1/chat/completions"),
        ("http://h:8000", "http://h:8000/v1/chat/completions"),
        ("localhost:8000", "http://localhost:8000/v1/chat/completions"),
        ("https://api.groq.com/openai", "https://api.groq.com/openai/v1/chat/completions"),
        ("http://h/v1/chat/completions?cid=7", "http://h/v1/chat/completions?cid=7"),
        ("http://h/v1/completions", "http://h/v1/chat/completions"),
        ("http://h/v1/chat", "http://h/v1/chat/completions"),
    ],
)
def test_normalize_chat_url(url, expected):
    assert normalize_chat_url(url) == expected


def test_normalize_chat_url_rejects_non_http():
    with pytest.raises(ChatEndpointError) as info:
        normalize_chat_url("ftp://h/v1")
    assert info.value.code == "invalid_url"


# -- happy path and numbers ----------------------------------------------------------------------------------------


async def test_sampled_eval_numbers_rows_and_request_bodies(chat, store):
    summary = await run_eval(chat, store, api_key="sk-good", settings=SamplingSettings(n=4, max_tokens=8, seed=11))
    # always: 4/4, never: 0/4, half: 2/4, first: 1/4
    assert (summary.problems, summary.samples, summary.correct, summary.solved_any) == (4, 16, 7, 3)
    assert summary.pass_at_1 == pytest.approx((1 + 0 + 0.5 + 0.25) / 4)
    assert summary.pass_at_n == pytest.approx(0.75)
    assert summary.mean_reward == pytest.approx(7 / 16)
    assert summary.errors == 0 and summary.seconds > 0
    assert summary.to_dict()["correct"] == 7
    assert chat.state.requests == 4  # one request per task: n was honoured
    body = chat.state.bodies[0]
    assert body["n"] == 4 and body["temperature"] == 0.7 and body["top_k"] == 40 and body["top_p"] == 1.0
    assert body["max_tokens"] == 8 and body["model"] == "tiny"
    from learning_mcp.tools.sampling import request_seed

    # per-problem seeds from (seed, problem id, first sample index): independent of batching
    assert sorted(b["seed"] for b in chat.state.bodies) == sorted(request_seed(11, t.id, 0) for t in TASKS)
    assert chat.state.headers[0]["authorization"] == "Bearer sk-good"
    stored = store.summary("r1", 1, "train_eval")
    assert stored == {k: getattr(summary, k) for k in stored}
    rows = store.query(problem_ids="half")
    assert [r.sample_index for r in rows] == [0, 1, 2, 3]
    assert [r.reward for r in rows] == [1.0, 0.0, 1.0, 0.0]
    assert rows[0].prompt == TASKS[2].messages and rows[0].model == "tiny" and rows[0].finish_reason == "stop"
    meta = rows[0].metadata
    assert meta["temperature"] == 0.7 and meta["top_k"] == 40 and meta["seed"] == request_seed(11, "half", 0)
    assert meta["finish_reason"] == "stop" and meta["latency_s"] >= 0


async def test_greedy_eval_asks_one_sample_at_temperature_zero(chat, store):
    summary = await run_eval(chat, store, greedy=True, phase="val_eval")
    assert summary.samples == 4 and summary.pass_at_1 == pytest.approx(0.75) and summary.pass_at_n == 0.75
    body = chat.state.bodies[0]
    assert body["n"] == 1 and body["temperature"] == 0.0 and "top_k" not in body
    assert store.query(phases="val_eval")[0].metadata["greedy"] is True


async def test_verifier_spec_strings_and_finish_reason(chat, store):
    summary = await run_eval(chat, store, tasks=[make_task("l", "long", 1, 1)], verifier="numeric")
    assert summary.correct == 4
    assert {r.finish_reason for r in store.query()} == {"length"}


async def test_no_tasks(chat, store):
    summary = await run_eval(chat, store, tasks=[])
    assert summary.problems == 0 and summary.pass_at_1 == 0.0 and chat.state.requests == 0


# -- servers that ignore or cap n ----------------------------------------------------------------------------------


async def test_top_up_when_the_server_ignores_n(chat, store):
    chat.state.reset(ignore_n=True)
    summary = await run_eval(chat, store, settings=SamplingSettings(n=4, seed=100))
    assert summary.samples == 16 and summary.errors == 0
    assert summary.correct == 7  # same numbers as when n is honoured
    assert chat.state.requests == 16
    for problem in ("always", "half"):
        rows = store.query(problem_ids=problem)
        assert [r.sample_index for r in rows] == [0, 1, 2, 3]
        from learning_mcp.tools.sampling import request_seed

        seeds = [request_seed(100, problem, i) for i in range(4)]  # top-ups get fresh seeds
        assert sorted(r.metadata["seed"] for r in rows) == sorted(seeds) and len(set(seeds)) == 4
    assert sorted(b["n"] for b in chat.state.bodies).count(1) >= 12


async def test_top_up_when_the_server_caps_n(chat, store):
    chat.state.reset(max_choices=3)
    summary = await run_eval(chat, store, tasks=[make_task("a", "always")], settings=SamplingSettings(n=8))
    assert summary.samples == 8
    assert [b["n"] for b in chat.state.bodies] == [8, 5, 2]


# -- retries -------------------------------------------------------------------------------------------------------


async def test_retries_500s(chat, store):
    chat.state.reset(fail_first=2)
    summary = await run_eval(chat, store, tasks=[make_task("a", "always")], concurrency=1)
    assert summary.samples == 4 and summary.correct == 4
    assert chat.state.requests == 3 and chat.state.failed == 2


async def test_honours_retry_after_on_429(chat, store):
    chat.state.reset(rate_limit_first=1, retry_after=1)
    started = time.monotonic()
    summary = await run_eval(chat, store, tasks=[make_task("a", "always")], concurrency=1)
    elapsed = time.monotonic() - started
    assert summary.samples == 4
    assert chat.state.requests == 2
    assert elapsed >= 0.95  # waited for Retry-After, not the 10 ms backoff
    gap = chat.state.request_times[1] - chat.state.request_times[0]
    assert gap >= 0.95


async def test_retries_dropped_connections(chat, store):
    chat.state.reset(drop_first=2)
    summary = await run_eval(chat, store, tasks=[make_task("a", "always")], concurrency=1)
    assert summary.samples == 4 and chat.state.dropped == 2 and chat.state.served == 1


async def test_gives_up_after_repeated_500s_naming_the_url_not_the_key(chat, store):
    chat.state.reset(status_always=500)
    with pytest.raises(ChatEndpointError) as info:
        await run_eval(chat, store, api_key="sk-secret-123", retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01),
                       tasks=[make_task("a", "always")])
    error = info.value
    assert error.code == "endpoint_server_error" and error.status == 500
    assert chat.base_url + "/v1/chat/completions" in error.message
    assert "3 attempt" in error.message
    assert "sk-secret-123" not in error.message
    assert chat.state.requests == 3
    assert store.count() == 0


async def test_auth_failure_is_not_retried(chat, store):
    chat.state.reset(api_key="right-key")
    with pytest.raises(ChatEndpointError) as info:
        await run_eval(chat, store, api_key="wrong-key-xyz", concurrency=1)
    assert info.value.code == "endpoint_auth_failed" and info.value.status == 401
    assert "api_key" in info.value.message
    assert "wrong-key-xyz" not in info.value.message and "Incorrect API key provided: ***" in info.value.message
    assert chat.state.requests == 1


async def test_404_names_the_path_to_check(chat, store):
    chat.state.reset(status_always=404)
    with pytest.raises(ChatEndpointError) as info:
        await run_eval(chat, store, tasks=[make_task("a", "always")])
    assert info.value.code == "endpoint_not_found" and "/v1/chat/completions" in info.value.message
    assert chat.state.requests == 1


async def test_response_without_choices(chat, store):
    chat.state.reset(status_always=200)
    with pytest.raises(ChatEndpointError) as info:
        await run_eval(chat, store, tasks=[make_task("a", "always")])
    assert info.value.code == "endpoint_bad_response"


async def test_unreachable_endpoint_fails_quickly_with_the_url(store):
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    with pytest.raises(ChatEndpointError) as info:
        await evaluate(TASKS, chat_url=url, model="m", verifier="exact", settings=SamplingSettings(), store=store,
                       run_id="r", iteration=0, phase="base_eval")
    assert time.monotonic() - started < 5  # default retry policy
    assert info.value.code == "endpoint_unreachable"
    assert f"{url}/chat/completions" in info.value.message


async def test_timeout_on_a_slow_answer(chat, store):
    chat.state.reset(delay_s=1.0)
    started = time.monotonic()
    with pytest.raises(ChatEndpointError) as info:
        await run_eval(chat, store, tasks=[make_task("a", "always")], timeout_s=0.2,
                       retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01))
    assert info.value.code == "endpoint_timeout"
    assert time.monotonic() - started < 1.0


async def test_top_k_rejected_by_the_server_is_dropped(chat, store):
    chat.state.reset(reject_params=("top_k",))
    summary = await run_eval(chat, store, concurrency=1)
    assert summary.samples == 16
    assert chat.state.requests == 5  # one rejected, then one per task
    assert all("top_k" not in body for body in chat.state.bodies[1:])
    assert {r.metadata["top_k"] for r in store.query()} == {None}


# -- concurrency ---------------------------------------------------------------------------------------------------


async def test_concurrency_bounds_requests_in_flight(chat, store):
    chat.state.reset(delay_s=0.15)
    tasks = [make_task(f"t{i}", "always") for i in range(12)]
    started = time.monotonic()
    summary = await run_eval(chat, store, tasks=tasks, concurrency=3, settings=SamplingSettings(n=1))
    assert summary.samples == 12
    assert chat.state.max_in_flight == 3
    assert time.monotonic() - started >= 0.15 * 4 - 0.05


async def test_concurrency_bound_includes_top_up_requests(chat, store):
    chat.state.reset(delay_s=0.05, ignore_n=True)
    tasks = [make_task(f"t{i}", "half") for i in range(3)]
    summary = await run_eval(chat, store, tasks=tasks, concurrency=2, settings=SamplingSettings(n=6))
    assert summary.samples == 18 and chat.state.requests == 18
    assert chat.state.max_in_flight == 2


# -- verifier errors and progress ----------------------------------------------------------------------------------


async def test_verifier_exceptions_propagate_unwrapped(chat, store):
    def picky(task, completion):
        if task.id == "half":
            raise ValueError("cannot grade this one")
        return 1.0

    with pytest.raises(VerifierError) as info:
        await run_eval(chat, store, verifier=picky)
    assert info.value.code == "verifier_raised"
    assert "'half'" in info.value.message and "ValueError: cannot grade this one" in info.value.message
    assert store.count(problem_ids="half") == 0


async def test_verifier_error_from_a_builtin_verifier(chat, store):
    with pytest.raises(VerifierError) as info:
        await run_eval(chat, store, tasks=[Task(id="x", messages=[{"role": "user", "content": "[always] 1+1"}])])
    assert info.value.code == "missing_answer"


async def test_progress_callbacks_sync_async_and_broken(chat, store):
    seen = []

    async def async_progress(done, total):
        seen.append((done, total))

    await run_eval(chat, store, on_progress=async_progress)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]

    sync_seen = []
    await run_eval(chat, store, on_progress=lambda d, t: sync_seen.append(d), iteration=2)
    assert sync_seen == [1, 2, 3, 4]

    def broken(done, total):
        raise RuntimeError("ui went away")

    summary = await run_eval(chat, store, on_progress=broken, iteration=3)
    assert summary.samples == 16


async def test_a_caller_supplied_client_is_used_and_left_open(chat, store):
    async with httpx.AsyncClient() as client:
        await run_eval(chat, store, tasks=[make_task("a", "always")], client=client)
        assert not client.is_closed


def test_settings_are_validated():
    with pytest.raises(ValueError):
        SamplingSettings(n=0).validate()
    with pytest.raises(ValueError):
        SamplingSettings(top_p=0).validate()


# -- task apps -----------------------------------------------------------------------------------------------------

ENV_KEY = "env-key-123"


def make_task_app(env_key: str | None) -> tuple[FastAPI, list[dict], list[dict]]:
    """A tiny Synth-style task app: seed s asks '[always|never] s+1'; seed 13 crashes; the policy is the chat stub."""
    app = FastAPI()
    bodies: list[dict] = []
    headers: list[dict] = []

    @app.post("/rollout")
    async def rollout(request: Request):
        if env_key is None:
            return JSONResponse({"detail": "missing_environment_api_key"}, status_code=503)
        if request.headers.get("x-api-key") != env_key:
            return JSONResponse({"detail": "Invalid or missing API key"}, status_code=401)
        body = await request.json()
        bodies.append(body)
        headers.append(dict(request.headers))
        seed = body["env"]["seed"]
        if seed == 13:
            return JSONResponse({"detail": "environment crashed"}, status_code=500)
        question = f"[{'always' if seed % 2 == 0 else 'never'}] {seed}+1"
        messages = [{"role": "system", "content": "Add."}, {"role": "user", "content": question}]
        config = body["policy"]["config"]
        async with httpx.AsyncClient() as client:
            reply = await client.post(config["inference_url"], json={"model": config["model"], "messages": messages})
        text = reply.json()["choices"][0]["message"]["content"]
        reward = 1.0 if text == str(seed + 1) else 0.0
        return {
            "run_id": body["run_id"],
            "trajectories": [{
                "env_id": "sum", "policy_id": "p",
                "steps": [{"obs": {"prompt": question, "task_id": f"sum-{seed}"}, "tool_calls": [],
                           "reward": reward, "done": True, "truncated": False, "info": {}}],
                "final": {"observation": {"done": True, "reward": reward}}, "length": 1,
            }],
            "metrics": {"episode_returns": [reward], "mean_return": reward * 3, "num_steps": 1, "num_episodes": 1},
            "aborted": False,
            "ops_executed": 2,
            "trace_correlation_id": f"cid-{seed}",
            "trace": {"session_trace": {"session_id": f"s{seed}", "markov_blanket_message_history": [
                {"message_type": "system", "content": {"text": "Add."}},
                {"message_type": "user", "content": {"text": question}},
                {"message_type": "assistant", "content": {"text": text}},
            ]}},
        }

    return app, bodies, headers


@pytest.fixture
def task_app():
    app, bodies, headers = make_task_app(ENV_KEY)
    base_url, stop = serve_asgi(app)
    yield base_url, bodies, headers
    stop()


def run_task_app(task_app_url, chat, store, seeds=(0, 1, 2, 3), **overrides):
    kwargs = dict(
        task_app_url=task_app_url, env_api_key=ENV_KEY, model="tiny", inference_url=chat.base_url + "/v1",
        store=store, run_id="r1", iteration=1, phase="train_eval", env_name="sum", policy_name="sum-policy",
        env_config={"difficulty": "easy"}, policy_config={"temperature": 0.0}, max_llm_calls=2, retry=FAST,
    )
    kwargs.update(overrides)
    return evaluate_task_app(list(seeds), **kwargs)


async def test_task_app_eval_posts_synth_body_and_scores(task_app, chat, store):
    url, bodies, headers = task_app
    summary = await run_task_app(url, chat, store)
    assert (summary.problems, summary.samples, summary.correct) == (4, 4, 2)
    assert summary.pass_at_1 == 0.5 and summary.pass_at_n == 0.5 and summary.errors == 0
    assert summary.mean_score == 0.5  # mean_return 3.0 is clamped to 1.0
    body = sorted(bodies, key=lambda b: b["env"]["seed"])[2]
    assert set(body) == {"run_id", "env", "policy", "ops", "record", "mode"}
    assert body["env"] == {"config": {"split": "train", "index": 2, "difficulty": "easy"}, "seed": 2, "env_name": "sum"}
    assert body["policy"] == {
        "policy_name": "sum-policy",
        "config": {"model": "tiny", "inference_url": chat.chat_url, "temperature": 0.0},
    }
    assert body["ops"] == ["agent", "env", "agent", "env"]
    assert body["record"] == {"return_trace": True, "trace_format": "structured"}
    assert body["mode"] == "eval"
    assert all(h["x-api-key"] == ENV_KEY for h in headers)
    rows = {r.problem_id: r for r in store.query()}
    assert set(rows) == {"0", "1", "2", "3"}
    assert rows["2"].completion == "3" and rows["2"].reward == 1.0
    assert rows["1"].completion == "3" and rows["1"].reward == 0.0  # '[never] 1+1' answered wrong
    assert rows["2"].prompt == [{"role": "system", "content": "Add."}, {"role": "user", "content": "[always] 2+1"}]
    meta = rows["2"].metadata
    assert meta["official_score"] == 1.0 and meta["score_source"] == "metrics.mean_return"
    assert meta["task_id"] == "sum-2" and meta["trace_correlation_id"] == "cid-2"
    assert rows["2"].split == "train" and rows["2"].model == "tiny"


async def test_task_app_seed_crash_is_counted_not_fatal(task_app, chat, store):
    url, bodies, _ = task_app
    summary = await run_task_app(url, chat, store, seeds=[0, 13], retry=RetryPolicy(max_attempts=2,
                                                                                    initial_backoff_s=0.01))
    assert summary.errors == 1 and summary.problems == 2 and summary.samples == 1 and summary.pass_at_1 == 0.5
    assert sum(1 for b in bodies if b["env"]["seed"] == 13) == 2  # retried once
    with pytest.raises(TaskAppError) as info:
        await run_task_app(url, chat, store, seeds=[13], retry=RetryPolicy(max_attempts=1))
    assert info.value.code == "all_rollouts_failed"


async def test_task_app_wrong_key(task_app, chat, store):
    url, bodies, _ = task_app
    with pytest.raises(TaskAppError) as info:
        await run_task_app(url, chat, store, env_api_key="not-the-key")
    assert info.value.code == "invalid_environment_api_key"
    assert "ENVIRONMENT_API_KEY" in info.value.message and "not-the-key" not in info.value.message
    assert bodies == []


async def test_task_app_missing_key_fails_before_any_request(task_app, chat, store, monkeypatch):
    url, bodies, _ = task_app
    monkeypatch.delenv("ENVIRONMENT_API_KEY", raising=False)
    with pytest.raises(TaskAppError) as info:
        await run_task_app(url, chat, store, env_api_key=None)
    assert info.value.code == "missing_environment_api_key" and "ENVIRONMENT_API_KEY" in info.value.message
    monkeypatch.setenv("ENVIRONMENT_API_KEY", ENV_KEY)
    summary = await run_task_app(url, chat, store, env_api_key=None, seeds=[0])
    assert summary.correct == 1


async def test_task_app_without_a_configured_key(chat, store):
    app, _, _ = make_task_app(None)
    url, stop = serve_asgi(app)
    try:
        with pytest.raises(TaskAppError) as info:
            await run_task_app(url, chat, store)
    finally:
        stop()
    assert info.value.code == "task_app_missing_key" and "ENVIRONMENT_API_KEY" in info.value.message


def test_official_score_rule():
    assert official_score({"metrics": {"mean_return": None, "total_reward": 0.4, "outcome_score": 1}}) == (
        0.4, "metrics.total_reward")
    assert official_score({"metrics": {"outcome_score": -2}}) == (0.0, "metrics.outcome_score")
    assert official_score({"metrics": {}, "trajectories": [{"steps": [{"reward": 7}]}]}) == (
        1.0, "trajectories[0].steps[0].reward")
    assert official_score({"metrics": {"mean_return": "high"}}) == (None, None)


def test_rollout_conversation_fallbacks():
    observation_only = {"trajectories": [{"steps": [{"obs": {"prompt": "Go"}}],
                                          "final": {"observation": {"inventory": {"wood": 2}, "done": True}}}]}
    prompt, completion, source = extract_rollout_conversation(observation_only)
    assert completion == '{"done":true,"inventory":{"wood":2}}' and source == "final.observation"
    assert prompt == [{"role": "user", "content": "Go"}]
    synth_style = {"trajectories": [{"steps": [], "final": {"observation": {"completion": "42"}}}]}
    assert extract_rollout_conversation(synth_style)[1:] == ("42", "final.observation.completion")
    records = {"trace": {"call_records": [
        {"input_messages": [{"role": "user", "content": "first"}],
         "output_messages": [{"role": "assistant", "content": "one"}]},
        {"input_messages": [{"role": "user", "content": "second"}],
         "output_messages": [{"role": "assistant", "content": [{"type": "text", "text": "two"}]}]},
    ]}}
    prompt, completion, source = extract_rollout_conversation(records)
    assert (completion, source) == ("two", "trace.assistant")
    assert prompt == [{"role": "user", "content": "second"}]
    assert extract_rollout_conversation({}) == ([], "", "none")


def test_build_rollout_request_defaults():
    body = build_rollout_request(5, model="m", inference_url=None, run_id="x")
    assert body == {
        "run_id": "x",
        "env": {"config": {"split": "train", "index": 5}, "seed": 5},
        "policy": {"policy_name": "m", "config": {"model": "m"}},
        "ops": ["agent", "env"] * 10,
        "record": {"return_trace": True, "trace_format": "structured"},
        "mode": "eval",
    }
