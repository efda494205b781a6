"""Stop strings END generation on the tiny model (a stopping criterion inside ``generate``, not a cut afterwards):
the text excludes the stop string, ``finish_reason`` is "stop", and ``usage.completion_tokens`` counts only the tokens
generated up to the stop. ``chat_template_kwargs`` reach the chat template. Through the real backend over HTTP,
and through the engine where its step counter proves that generation stopped."""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import pytest

from chat_stub import start_chat_stub
from learning_mcp.backend.inference import InferenceEngine, InferenceError, parse_chat_request
from learning_mcp.tools.evaluate import RetryPolicy, SamplingSettings, build_chat_body, evaluate
from learning_mcp.tools.tasks import Task
from learning_mcp.tools.traces import TraceStore

MAX_TOKENS = 40
THINK_OFF = "<think>\n\n</think>\n\n"


def _chat(backend, body: dict) -> dict:
    response = httpx.post(f"{backend.api}/inference/v1/chat/completions", json=body, timeout=180)
    assert response.status_code == 200, response.text
    return response.json()


def _pick_stop(text: str) -> tuple[str, int]:
    """A 2-character stop string first occurring at index >= 3 and ending well before the end of ``text``."""
    for index in range(3, max(3, len(text) - 8)):
        stop = text[index:index + 2]
        if stop.isprintable() and "\ufffd" not in stop and text.find(stop) == index:
            return stop, index
    pytest.skip(f"sampled text has no usable stop string: {text!r}")


def _sampled_body(model, **extra) -> dict:
    return {"model": str(model), "messages": [{"role": "user", "content": "1+2=?"}], "temperature": 1.0,
            "max_tokens": MAX_TOKENS, "seed": 7, **extra}


def test_stop_string_ends_generation_over_http(backend, tiny_model):
    full = _chat(backend, _sampled_body(tiny_model))
    text = full["choices"][0]["message"]["content"]
    full_tokens = full["usage"]["completion_tokens"]
    stop, index = _pick_stop(text)

    stopped = _chat(backend, _sampled_body(tiny_model, stop=["\x00never", stop]))
    choice = stopped["choices"][0]
    assert choice["message"]["content"] == text[:index]  # the same sample, cut before the stop string
    assert stop not in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    used = stopped["usage"]["completion_tokens"]
    assert 1 <= used < full_tokens, (used, full_tokens)  # fewer tokens generated, not only a shorter text
    assert stopped["usage"]["total_tokens"] == stopped["usage"]["prompt_tokens"] + used


def test_every_sample_of_a_batch_stops_on_its_own_over_http(backend, tiny_model):
    body = _sampled_body(tiny_model, n=4, seed=11)
    free = _chat(backend, body)
    texts = [c["message"]["content"] for c in free["choices"]]
    stop = max(set("".join(texts)), key="".join(texts).count)  # the most frequent character: every row meets it
    stopped = _chat(backend, {**body, "stop": stop})
    for choice in stopped["choices"]:
        assert stop not in choice["message"]["content"]
        assert choice["finish_reason"] in ("stop", "length")
    assert any(c["finish_reason"] == "stop" for c in stopped["choices"])
    assert stopped["usage"]["completion_tokens"] < free["usage"]["completion_tokens"]


def test_generation_steps_end_at_the_stop_string(tiny_model, tmp_path):
    """The engine's step counter: a request whose stop string comes early runs far fewer decode steps."""
    engine = InferenceEngine(tmp_path / "models", batch_window_s=0.0)

    async def scenario():
        full = await engine.chat_completion(_sampled_body(tiny_model))
        text = full["choices"][0]["message"]["content"]
        stop, index = _pick_stop(text)
        steps_before = engine.stats["decode_steps"]
        stopped = await engine.chat_completion(_sampled_body(tiny_model, stop=stop))
        return full, stopped, engine.stats["decode_steps"] - steps_before, text, index

    try:
        full, stopped, steps, text, index = asyncio.run(scenario())
    finally:
        engine.close()
    used = stopped["usage"]["completion_tokens"]
    assert stopped["choices"][0]["message"]["content"] == text[:index]
    assert steps == used < full["usage"]["completion_tokens"]


def test_stop_string_after_the_generation_prompt_does_not_end_at_once(tiny_model, tmp_path):
    """A stop string that would span the prompt's last characters and the first generated ones (here the template's
    trailing "assistant\\n" and a generated "\\n") must not end generation: only generated text counts."""
    engine = InferenceEngine(tmp_path / "models", batch_window_s=0.0)
    greedy = {"model": str(tiny_model), "messages": [{"role": "user", "content": "1+2=?"}], "temperature": 0,
              "max_tokens": 12}
    try:
        free = asyncio.run(engine.chat_completion(greedy))
        text = free["choices"][0]["message"]["content"]
        first = text[:1]
        if not first:
            pytest.skip("greedy output is empty")
        stopped = asyncio.run(engine.chat_completion({**greedy, "stop": "\n" + first}))
    finally:
        engine.close()
    expected_cut = text.find("\n" + first)
    content = stopped["choices"][0]["message"]["content"]
    if expected_cut < 0:
        assert content == text and stopped["choices"][0]["finish_reason"] == free["choices"][0]["finish_reason"]
    else:
        assert content == text[:expected_cut] and stopped["choices"][0]["finish_reason"] == "stop"
        assert stopped["usage"]["completion_tokens"] >= 1


# -- chat_template_kwargs ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thinking_model(tmp_path_factory, tiny_model):
    """The tiny model with a template that, like Qwen3's, writes an empty think block when enable_thinking is false."""
    path = tmp_path_factory.mktemp("thinking") / "tiny-thinking"
    shutil.copytree(tiny_model, path)
    addition = "{%- if add_generation_prompt and enable_thinking is defined and not enable_thinking -%}" \
               "{{ '" + THINK_OFF.replace("\n", "\\n") + "' }}{%- endif -%}"
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        jinja.write_text(jinja.read_text() + addition)
    else:
        config_path = path / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["chat_template"] += addition
        config_path.write_text(json.dumps(config))
    return path


def test_chat_template_kwargs_reach_the_template_over_http(backend, thinking_model, tiny_model):
    from transformers import AutoTokenizer

    base = {"model": str(thinking_model), "messages": [{"role": "user", "content": "1+2=?"}], "temperature": 0,
            "max_tokens": 2}
    plain = _chat(backend, base)["usage"]["prompt_tokens"]
    thinking_on = _chat(backend, {**base, "chat_template_kwargs": {"enable_thinking": True}})["usage"]["prompt_tokens"]
    thinking_off = _chat(backend, {**base, "chat_template_kwargs": {"enable_thinking": False}})["usage"]
    tokenizer = AutoTokenizer.from_pretrained(thinking_model)
    extra = len(tokenizer(THINK_OFF, add_special_tokens=False)["input_ids"])
    assert plain == thinking_on
    assert thinking_off["prompt_tokens"] == plain + extra


@pytest.mark.parametrize(("value", "status"), [("nope", 422), ({"tokenize": True}, 400),
                                               ({"add_generation_prompt": False}, 400)])
def test_chat_template_kwargs_validation(value, status):
    with pytest.raises(InferenceError) as info:
        parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}],
                            "chat_template_kwargs": value})
    assert info.value.status == status and info.value.param == "chat_template_kwargs"
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "a"],
                                  "chat_template_kwargs": {"enable_thinking": False}})
    assert request.chat_template_kwargs == {"enable_thinking": False} and request.sampling.stop == ("a",)


def test_sampler_sends_chat_template_kwargs():
    settings = SamplingSettings(n=2, chat_template_kwargs={"enable_thinking": False}, stop=["\n\n"])
    body = build_chat_body("m", [{"role": "user", "content": "x"}], settings, n=2)
    assert body["chat_template_kwargs"] == {"enable_thinking": False} and body["stop"] == ["\n\n"]
    assert "chat_template_kwargs" not in build_chat_body("m", [], SamplingSettings(), n=1)
    with pytest.raises(ValueError, match="chat_template_kwargs must be a dict"):
        SamplingSettings(chat_template_kwargs="enable_thinking=false").validate()  # type: ignore[arg-type]

    async def run(stub, store):
        return await evaluate(
            [Task(id="a", messages=[{"role": "user", "content": "5"}], answer="5")], chat_url=stub.base_url + "/v1",
            model="m", verifier="exact", settings=settings, store=store, run_id="r", iteration=0, phase="p",
            retry=RetryPolicy(max_attempts=1),
        )

    import anyio

    with start_chat_stub() as stub, TraceStore(":memory:") as store:
        summary = anyio.run(run, stub, store)
        assert summary.pass_at_1 == 1.0
        assert stub.state.bodies[0]["chat_template_kwargs"] == {"enable_thinking": False}
    # an OpenAI-style server that rejects the vLLM extension: sampled again without it
    with start_chat_stub(reject_params=("chat_template_kwargs",)) as stub, TraceStore(":memory:") as store:
        summary = anyio.run(run, stub, store)
        assert summary.pass_at_1 == 1.0 and "chat_template_kwargs" not in stub.state.bodies[-1]
