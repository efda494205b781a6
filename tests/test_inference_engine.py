"""The chat-completions engine: validation, decoding options, batching, model cache, throughput."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

try:
    from conftest_ml import ml_root, models_dir, small_model_dir, tiny_model_dir, trained_full, trained_lora  # noqa: F401
except ImportError:  # tests/ became a package
    from tests.conftest_ml import (  # noqa: F401
        ml_root, models_dir, small_model_dir, tiny_model_dir, trained_full, trained_lora,
    )

from learning_mcp.backend.inference import InferenceEngine, InferenceError, apply_stop_strings, parse_chat_request

log = logging.getLogger(__name__)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def engine(models_dir):
    engine = InferenceEngine(models_dir, batch_window_s=0.02)
    yield engine
    engine.close()


def body(model, content="1+2=?", **extra):
    return {"model": str(model), "messages": [{"role": "user", "content": content}], **extra}


def texts(response) -> list[str]:
    return [choice["message"]["content"] for choice in response["choices"]]


# --------------------------------------------------------------------------------------------------
# request parsing
# --------------------------------------------------------------------------------------------------


def test_parse_defaults_and_aliases():
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                  "max_completion_tokens": 7, "stop": "END", "thinking_budget": 256,
                                  "stream": False})
    assert request.n == 1 and request.sampling.max_tokens == 7 and request.stop == ["END"]
    assert request.sampling.temperature == 1.0 and request.sampling.top_p == 1.0 and request.sampling.top_k == 0
    assert parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}).sampling.max_tokens == 256
    greedy = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0,
                                 "top_p": 0.5, "top_k": 3})
    assert greedy.sampling.greedy and (greedy.sampling.top_p, greedy.sampling.top_k) == (1.0, 0)
    assert apply_stop_strings("abc\nDEF", ["\n", "c"]) == ("ab", True)
    assert apply_stop_strings("abc", ["x"]) == ("abc", False)


@pytest.mark.parametrize("patch, status, param", [
    ({"n": 0}, 400, "n"), ({"n": 129}, 400, "n"), ({"temperature": -1}, 400, "temperature"),
    ({"temperature": "hot"}, 422, "temperature"), ({"max_tokens": 0}, 400, "max_tokens"),
    ({"stop": [1]}, 422, "stop"), ({"messages": []}, 422, "messages"), ({"model": ""}, 422, "model"),
    ({"messages": [{"content": "no role"}]}, 422, "messages[0].role"), ({"stream": True}, 400, "stream"),
    ({"tools": "nope"}, 422, "tools"), ({"top_p": 0}, 400, "top_p"),
])
def test_validation_errors_name_the_field(patch, status, param):
    with pytest.raises(InferenceError) as info:
        parse_chat_request({**body("m"), **patch})
    assert (info.value.status, info.value.param) == (status, param)


def test_unknown_model_is_404(engine):
    with pytest.raises(InferenceError) as info:
        run(engine.chat_completion(body("ft:some/base:job_does_not_exist")))
    assert info.value.status == 404 and info.value.param == "model"
    assert "GET /api/learning/models" in info.value.message
    with pytest.raises(InferenceError) as info:
        run(engine.chat_completion(body("/no/such/model/dir")))
    assert info.value.status == 404
    with pytest.raises(InferenceError) as info:  # a Hub id that is not cached, offline
        run(engine.chat_completion(body("Qwen/Qwen3-0.6B")))
    assert info.value.status == 404 and "Hugging Face cache" in info.value.message


def test_stream_true_is_400(engine, tiny_model_dir):
    with pytest.raises(InferenceError) as info:
        run(engine.chat_completion(body(tiny_model_dir, stream=True)))
    assert info.value.status == 400 and info.value.param == "stream"


# --------------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------------


def test_response_shape_and_n_samples(engine, tiny_model_dir):
    response = run(engine.chat_completion(body(tiny_model_dir, n=5, temperature=1.0, max_tokens=8, seed=1)))
    assert response["object"] == "chat.completion" and response["id"].startswith("chatcmpl-")
    assert response["model"] == str(tiny_model_dir) and isinstance(response["created"], int)
    assert [c["index"] for c in response["choices"]] == [0, 1, 2, 3, 4]
    for choice in response["choices"]:
        assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length")
    usage = response["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 5 * 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert len(set(texts(response))) > 1  # independent samples


def test_temperature_zero_is_deterministic_and_seed_reproducible(engine, tiny_model_dir):
    greedy = body(tiny_model_dir, temperature=0, max_tokens=12, n=3)
    first, second = run(engine.chat_completion(greedy)), run(engine.chat_completion(greedy))
    assert texts(first) == texts(second) and len(set(texts(first))) == 1
    sampled = body(tiny_model_dir, temperature=1.0, max_tokens=12, n=4, seed=1234)
    assert texts(run(engine.chat_completion(sampled))) == texts(run(engine.chat_completion(sampled)))


def test_max_tokens_gives_length_finish(engine, tiny_model_dir):
    response = run(engine.chat_completion(body(tiny_model_dir, temperature=1.0, seed=3, n=4,
                                               max_completion_tokens=3)))
    for choice in response["choices"]:
        assert choice["finish_reason"] in ("stop", "length")
    assert response["usage"]["completion_tokens"] <= 12
    assert any(c["finish_reason"] == "length" for c in response["choices"])


def test_stop_strings_cut_the_text(engine, tiny_model_dir):
    request = body(tiny_model_dir, temperature=1.0, max_tokens=40, seed=99)
    full = texts(run(engine.chat_completion(request)))[0]
    candidates = [ch for ch in full[2:] if ch.isprintable() and ch != "\ufffd"]
    assert candidates, f"sampled text too short to pick a stop string: {full!r}"
    stop = candidates[0]
    response = run(engine.chat_completion({**request, "stop": ["\x00never", stop]}))
    assert texts(response)[0] == full[: full.index(stop)]
    assert response["choices"][0]["finish_reason"] == "stop"


def test_tools_and_multimodal_messages_are_served(engine, tiny_model_dir):
    response = run(engine.chat_completion({
        "model": str(tiny_model_dir), "temperature": 0, "max_tokens": 4,
        "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
        "messages": [{"role": "system", "content": "s"},
                     {"role": "user", "content": [{"type": "text", "text": "look"},
                                                  {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
                     {"role": "tool", "tool_call_id": "c", "content": "3"}]}))
    assert len(response["choices"]) == 1


# --------------------------------------------------------------------------------------------------
# batching, concurrency, cache
# --------------------------------------------------------------------------------------------------


def test_concurrent_requests_are_coalesced(engine, tiny_model_dir):
    async def scenario():
        await engine.chat_completion(body(tiny_model_dir, temperature=0, max_tokens=4))  # load the model
        calls_before = engine.stats["generate_calls"]
        same = [engine.chat_completion(body(tiny_model_dir, f"{i}+{i}=?", temperature=0, max_tokens=4, n=2))
                for i in range(12)]
        sampled = [engine.chat_completion(body(tiny_model_dir, f"{i}*{i}=?", temperature=0.7, top_k=40,
                                               max_tokens=4, n=3)) for i in range(6)]
        responses = await asyncio.gather(*same, *sampled)
        return responses, engine.stats["generate_calls"] - calls_before

    responses, calls = run(scenario())
    assert len(responses) == 18 and all(len(r["choices"]) in (2, 3) for r in responses)
    assert calls <= 4, calls  # two sampling keys → ideally 2 calls; far fewer than 18
    assert engine.stats["batched_requests"] >= 18
    assert engine.stats["max_batch_rows"] >= 12


def test_batches_respect_max_batch_size(models_dir, tiny_model_dir):
    engine = InferenceEngine(models_dir, max_batch_size=4, batch_window_s=0.05)
    try:
        async def scenario():
            return await asyncio.gather(*[engine.chat_completion(body(tiny_model_dir, f"{i}", temperature=0.5,
                                                                      max_tokens=3, n=2)) for i in range(6)])

        responses = run(scenario())
        assert all(len(r["choices"]) == 2 for r in responses)
        assert engine.stats["max_batch_rows"] <= 4 and engine.stats["generate_calls"] >= 3
        big = run(engine.chat_completion(body(tiny_model_dir, temperature=0.5, max_tokens=2, n=10)))
        assert len(big["choices"]) == 10  # one request larger than a batch is split over generate calls
    finally:
        engine.close()


def test_event_loop_stays_responsive_during_generation(engine, small_model_dir):
    async def scenario():
        await engine.chat_completion(body(small_model_dir, temperature=0, max_tokens=2))  # load first
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        await engine.chat_completion(body(small_model_dir, temperature=1.0, n=64, max_tokens=64, seed=0))
        elapsed = time.perf_counter() - started
        done.set()
        await task
        return ticks, elapsed

    ticks, elapsed = run(scenario())
    assert ticks >= 3, (ticks, elapsed)


def test_lru_cache_and_new_models_without_restart(models_dir, tiny_model_dir, trained_full, trained_lora):
    engine = InferenceEngine(models_dir, max_loaded_models=1, batch_window_s=0.0)
    try:
        run(engine.chat_completion(body(trained_full.model_id, temperature=0, max_tokens=2)))
        assert engine.loaded_models() == [trained_full.model_id]
        run(engine.chat_completion(body(trained_lora.model_id, temperature=0, max_tokens=2)))  # LoRA, merged
        assert engine.loaded_models() == [trained_lora.model_id]
        run(engine.chat_completion(body(tiny_model_dir, temperature=0, max_tokens=2)))
        assert engine.loaded_models() == [str(tiny_model_dir)]
        assert engine.stats["model_loads"] == 3
    finally:
        engine.close()
    assert engine.loaded_models() == []
    with pytest.raises(InferenceError) as info:
        run(engine.chat_completion(body(tiny_model_dir)))
    assert info.value.status == 503


def test_fine_tuned_greedy_output_differs_from_base(engine, tiny_model_dir, trained_full):
    prompt = {"temperature": 0, "max_tokens": 6}
    base = texts(run(engine.chat_completion(body(tiny_model_dir, "3+4=?", **prompt))))[0]
    tuned = run(engine.chat_completion(body(trained_full.model_id, "3+4=?", **prompt)))
    assert tuned["choices"][0]["finish_reason"] == "stop"  # SFT taught it to end its turn
    assert texts(tuned)[0] != base


# --------------------------------------------------------------------------------------------------
# measurement (reported, not asserted)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_measure_generation_throughput(size, engine, tiny_model_dir, small_model_dir, record_property):
    model = tiny_model_dir if size == "tiny" else small_model_dir
    run(engine.chat_completion(body(model, temperature=0, max_tokens=2)))  # load outside the timing
    request = body(model, temperature=1.0, n=64, max_tokens=64, seed=0)
    started = time.perf_counter()
    response = run(engine.chat_completion(request))
    elapsed = time.perf_counter() - started
    tokens = response["usage"]["completion_tokens"]
    record_property(f"{size}_generation_tokens_per_s", tokens / elapsed)
    log.info("%s generation: %d tokens in %.2f s = %.0f tokens/s (64 rows x 64 new tokens, one generate call)",
             size, tokens, elapsed, tokens / elapsed)
    assert tokens > 0
