"""OpenAI-compatible serving: the official ``openai`` Python client, pointed at the embedded backend's ``/v1``,
lists the base and ``ft:`` models and gets chat completions from a fine-tuned model, streamed and not."""

from __future__ import annotations

import httpx
import pytest

from conftest import arithmetic_rows, upload_ready, wait_job, write_jsonl

openai = pytest.importorskip("openai")

PROMPT = [{"role": "user", "content": "3+4=?"}]


@pytest.fixture(scope="module")
def fine_tuned(backend, tiny_model, tmp_path_factory) -> str:
    dataset = write_jsonl(tmp_path_factory.mktemp("serve-data") / "train.jsonl", arithmetic_rows(32, seed=5))
    file_id = upload_ready(backend.api, dataset)
    payload = {"model": str(tiny_model), "training_type": "sft_offline", "training_file_id": file_id,
               "hyperparameters": {"n_epochs": 1, "total_steps": 8, "per_device_batch": 8, "learning_rate": 2e-2}}
    job = httpx.post(f"{backend.api}/learning/jobs", json=payload, timeout=30).json()
    httpx.post(f"{backend.api}/learning/jobs/{job['id']}/start", timeout=30)
    done = wait_job(backend.api, job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    assert done["fine_tuned_model"].startswith("ft:")
    return done["fine_tuned_model"]


@pytest.fixture
def client(backend):
    with openai.OpenAI(base_url=f"{backend.url}/v1", api_key="unused-on-loopback", max_retries=0,
                       timeout=120) as api:
        yield api


def test_models_lists_fine_tuned_and_base(client, fine_tuned, tiny_model):
    models = {m.id: m for m in client.models.list()}
    assert fine_tuned in models and models[fine_tuned].owned_by == "learning-mcp"
    assert str(tiny_model) in models and models[str(tiny_model)].owned_by == "base"
    assert all(m.object == "model" and isinstance(m.created, int) for m in models.values())


def test_chat_completion_from_ft_model(client, fine_tuned, backend):
    reply = client.chat.completions.create(model=fine_tuned, messages=PROMPT, temperature=0, max_tokens=6)
    assert reply.object == "chat.completion" and reply.model == fine_tuned
    text = reply.choices[0].message.content
    assert isinstance(text, str) and reply.choices[0].finish_reason in {"stop", "length"}
    assert reply.usage.completion_tokens >= 1
    # the same greedy text through the contract's own path
    same = httpx.post(f"{backend.api}/inference/v1/chat/completions", timeout=120, json={
        "model": fine_tuned, "messages": PROMPT, "temperature": 0, "max_tokens": 6}).json()
    assert same["choices"][0]["message"]["content"] == text


def test_streamed_chat_completion_from_ft_model(client, fine_tuned):
    plain = client.chat.completions.create(model=fine_tuned, messages=PROMPT, temperature=0, max_tokens=6)
    stream = client.chat.completions.create(model=fine_tuned, messages=PROMPT, temperature=0, max_tokens=6,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_stream_wire_format_ends_with_done(backend, fine_tuned):
    with httpx.stream("POST", f"{backend.url}/v1/chat/completions", timeout=120, json={
            "model": fine_tuned, "messages": PROMPT, "temperature": 0, "max_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_stream_errors_are_json_with_status(client, backend):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ft:nope:ftjob-missing", messages=PROMPT, stream=True)
    r = httpx.post(f"{backend.url}/v1/chat/completions", timeout=30, json={"model": "x", "messages": PROMPT,
                                                                             "stream": "yes"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "stream"
