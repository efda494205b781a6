"""A ReST-EM loop that samples from an external OpenAI-compatible server and tells it which model to load
(``[eval] load_lora_adapters``, vLLM's runtime LoRA API), for real: two embedded backends on loopback, each with
its own data dir — the learning API that trains, and a separate "external server" that samples and has never seen
the loop's ``ft:`` models. The loop's validation eval of its LoRA model can only succeed there because the loop
exported the adapter and loaded it through ``POST /v1/load_lora_adapter``. Also the two routes' vLLM contract on
the embedded backend (statuses, plain-text answers, the model list)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import httpx
import pytest
from mcp import Client

from conftest import start_backend, write_jsonl
from learning_mcp.server.app import create_server
from learning_mcp.tools.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    learning = start_backend(tmp_path_factory.mktemp("learning-api"))
    external = start_backend(tmp_path_factory.mktemp("external-server"))
    yield learning, external
    learning.stop()
    external.stop()


def loop_toml(tmp_path: Path, model: Path, chat_url: str, *, load: bool = True, variety: str = "lora") -> str:
    pairs = [(a, b) for a in range(4) for b in range(3)]
    random.Random(0).shuffle(pairs)
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [
        {"id": f"{a}+{b}", "prompt": f"{a}+{b}=?", "answer": str(a + b), "split": "validation" if i < 2 else "train"}
        for i, (a, b) in enumerate(pairs[:8])])
    # every sample counts as correct: the test is about where the M-step's model is served, not what it learns
    (tmp_path / "verifier.py").write_text("def always(completion, answer, task):\n    return 1.0\n")
    return f"""
[loop]
base_model = "{model}"
tasks = "{tasks}"
verifier = "verifier.py:always"
iterations = 1
chat_url = "{chat_url}"

[eval]
n = 2
max_tokens = 4
load_lora_adapters = {str(load).lower()}

[filter]
keep_truncated = true         # the tiny model rarely ends a sample within max_tokens

[algorithm]
type = "offline"
method = "sft"
variety = "{variety}"

[job]
model = "{model}"

[compute]
gpu_type = "H100"
gpu_count = 1

[hyperparameters]
n_epochs = 1
total_steps = 3
per_device_batch = 4
learning_rate = 1e-3
"""


async def run_loop(learning, tmp_path: Path, config: str) -> dict:
    async with Client(create_server(Settings.load(backend_url=learning.url, data_dir=str(tmp_path / "mcp")))) as c:
        r = await c.call_tool("run_sft_loop", {"config": config, "wait_seconds": 0})
        assert not r.is_error, r.content[0].text
        loop_id = r.structured_content["loop_id"]
        assert r.structured_content["config"]["loop"]["load_lora_adapters"] == {"value": True, "source": "file"}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            st = (await c.call_tool("get_loop_status", {"loop_id": loop_id, "wait_seconds": 10})).structured_content
            if st["terminal"]:
                return st
        raise AssertionError("the loop did not finish")


async def test_loop_loads_its_lora_model_into_the_external_server(servers, tiny_model, tmp_path):
    learning, external = servers
    chat_url = f"{external.url}/v1"
    st = await run_loop(learning, tmp_path, loop_toml(tmp_path, tiny_model, chat_url))
    assert st["state"] == "succeeded", st
    row = st["table"][0]
    ft = row["fine_tuned_model"]
    assert ft.startswith("ft:") and row["val_pass_at_1"] is not None  # sampled by its ft: name, on the external one
    state = json.loads((Path(st["state_dir"]) / "state.json").read_text())
    adapter = Path(st["state_dir"]) / "adapters" / row["job_id"]
    assert (adapter / "adapter_config.json").is_file()  # the PEFT folder export_model(merge_lora=False) wrote
    # all sampling went to the external server: the learning API never created its inference engine
    health = httpx.get(f"{learning.api}/health").json()
    assert "inference" not in health and health["inference_engine"]["engine"] is None
    served = httpx.get(f"{external.api}/health").json()
    assert served["inference"]["model_loads"] >= 2  # the base model, then the loaded adapter
    assert served["inference_engine"]["engine"] == "transformers"  # no GPU / vLLM here: the fallback, said so
    # the best model is the base (equal validation scores), so the loop unloaded its adapter at the end
    assert st["best_model"] == str(tiny_model) and state["served_adapters"] == []
    assert all(m["id"] != ft for m in httpx.get(f"{external.url}/v1/models").json()["data"])
    # the external server never knew the ft: model by itself: without the loop's load it is unknown there
    unknown = httpx.post(f"{external.url}/v1/chat/completions", timeout=60,
                         json={"model": ft, "messages": [{"role": "user", "content": "1+1=?"}], "max_tokens": 2})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"

    # the same routes as vLLM's runtime LoRA API, on the embedded backend
    load, unload = f"{external.url}/v1/load_lora_adapter", f"{external.url}/v1/unload_lora_adapter"
    ok = httpx.post(load, json={"lora_name": "my-adapter", "lora_path": str(adapter)}, timeout=30)
    assert ok.status_code == 200 and ok.text == "Success: LoRA adapter 'my-adapter' added successfully."
    again = httpx.post(load, json={"lora_name": "my-adapter", "lora_path": str(adapter)}, timeout=30)
    assert again.status_code == 400 and "has already been loaded" in again.text
    assert httpx.post(load, json={"lora_name": "x"}).status_code == 400
    shadow = httpx.post(load, json={"lora_name": str(tiny_model), "lora_path": str(adapter)}, timeout=30)
    assert shadow.status_code == 400 and "existing path" in shadow.text  # would shadow the base model itself
    no_adapter = httpx.post(load, json={"lora_name": "y", "lora_path": str(tmp_path)})
    assert no_adapter.status_code == 404 and "No adapter found" in no_adapter.text
    listed = {m["id"]: m for m in httpx.get(f"{external.url}/v1/models").json()["data"]}
    assert listed["my-adapter"]["owned_by"] == "lora" and listed["my-adapter"]["parent"] == str(tiny_model)
    answer = httpx.post(f"{external.url}/v1/chat/completions", timeout=60, json={
        "model": "my-adapter", "messages": [{"role": "user", "content": "1+1=?"}], "max_tokens": 2,
        "temperature": 0})
    assert answer.status_code == 200 and answer.json()["model"] == "my-adapter"
    gone = httpx.post(unload, json={"lora_name": "my-adapter"})
    assert gone.status_code == 200 and gone.text == "Success: LoRA adapter 'my-adapter' removed successfully."
    missing = httpx.post(unload, json={"lora_name": "my-adapter"})
    assert missing.status_code == 404 and "cannot be found" in missing.text
    assert httpx.post(f"{external.url}/v1/chat/completions", json={
        "model": "my-adapter", "messages": [{"role": "user", "content": "hi"}]}).status_code == 404


@pytest.mark.parametrize("case", ["full_fine_tune", "no_chat_url"])
async def test_adapter_loading_is_refused_where_it_cannot_work(servers, tiny_model, tmp_path, case):
    learning, external = servers
    config = loop_toml(tmp_path, tiny_model, f"{external.url}/v1", variety="fft" if case == "full_fine_tune"
                       else "lora")
    if case == "no_chat_url":
        config = config.replace(f'chat_url = "{external.url}/v1"\n', "")
    async with Client(create_server(Settings.load(backend_url=learning.url, data_dir=str(tmp_path / "mcp")))) as c:
        r = await c.call_tool("run_sft_loop", {"config": config, "wait_seconds": 0})
    assert r.is_error
    text = r.content[0].text
    if case == "full_fine_tune":
        assert "[load_lora_adapters_needs_lora]" in text and 'variety = "lora"' in text and "vllm serve" in text
    else:
        assert "[load_lora_adapters_needs_chat_url]" in text
