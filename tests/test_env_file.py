"""A variable set only through ``--env-file`` reaches every place that uses it (issue 7: one settings object).

The server runs as a host starts it (``python -m learning_mcp --env-file FILE`` over stdio, through a real MCP
client); the process environment has none of the variables. One real HTTP app on loopback plays the learning API
(``/api/health``), an OpenAI-compatible chat endpoint and a Synth task app (``/rollout``), and records what it is
sent. Checked, each through the tool that uses it:

* ``LEARNING_MCP_DATA_DIR`` → ``diagnose.data_dir``; ``SYNTH_BACKEND_URL`` → ``diagnose.api_base``;
* ``SYNTH_USER_ID`` → the ``X-User-ID`` header on learning-API requests;
* ``SDK_EXPERIMENTAL_MODELS`` → the ``learning://models/synth`` resource;
* ``LEARNING_MCP_ALLOWED_KEY_ENVS`` + a key variable → ``run_sft_loop(chat_api_key_env=...)`` is allowed and the
  chat endpoint receives that key;
* ``ENVIRONMENT_API_KEY`` → the task app receives it as ``X-API-Key``;
* ``SDK_EXPERIMENTAL`` → ``create_job``'s config check (through the same ``environ`` the server passes).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import anyio
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from chat_stub import serve_asgi
from learning_mcp.tools.client import LearningClient
from learning_mcp.tools.errors import LearningMCPError
from learning_mcp.tools.jobs import create_job_from_config
from learning_mcp.tools.settings import Settings, Target

ENV_VARS = ("SYNTH_API_KEY", "SYNTH_BACKEND_URL", "BACKEND_BASE_URL", "SYNTH_BACKEND_OVERRIDE",
            "LEARNING_MCP_BACKEND_KEY", "LEARNING_MCP_DATA_DIR", "ENVIRONMENT_API_KEY", "SDK_EXPERIMENTAL",
            "SDK_EXPERIMENTAL_MODELS", "LEARNING_MCP_ALLOWED_KEY_ENVS", "MY_CHAT_KEY", "SYNTH_USER_ID")
ENV_KEY = "env-file-task-app-key"
CHAT_KEY = "env-file-chat-key"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def recording_app() -> tuple[FastAPI, dict[str, list[dict]]]:
    seen: dict[str, list[dict]] = {"health": [], "chat": [], "rollout": []}
    app = FastAPI()

    @app.get("/api/health")
    async def health(request: Request):
        seen["health"].append(dict(request.headers))
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        seen["chat"].append(dict(request.headers))
        body = await request.json()
        return {"id": "c", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": i, "message": {"role": "assistant", "content": "1"}, "finish_reason": "stop"}
                            for i in range(body.get("n") or 1)]}

    @app.post("/rollout")
    async def rollout(request: Request):
        seen["rollout"].append(dict(request.headers))
        if request.headers.get("x-api-key") != ENV_KEY:
            return JSONResponse({"detail": "invalid ENVIRONMENT_API_KEY"}, status_code=401)
        body = await request.json()
        return {"run_id": body["run_id"], "metrics": {"mean_return": 1.0},
                "trajectories": [{"steps": [{"obs": {}, "reward": 1.0}]}]}

    return app, seen


async def wait_for(predicate, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await anyio.sleep(0.2)


@pytest.mark.anyio
async def test_a_variable_set_only_in_an_env_file_reaches_every_reader(tmp_path):
    app, seen = recording_app()
    url, stop = serve_asgi(app)
    try:
        data_dir = tmp_path / "from-env-file"
        env_file = tmp_path / "server.env"
        env_file.write_text(
            f"SYNTH_BACKEND_URL={url}\nLEARNING_MCP_DATA_DIR={data_dir}\nSYNTH_USER_ID=user-from-file\n"
            f"SDK_EXPERIMENTAL_MODELS=Other/Model-From-File\nENVIRONMENT_API_KEY={ENV_KEY}\n"
            f"LEARNING_MCP_ALLOWED_KEY_ENVS=MY_CHAT_KEY\nMY_CHAT_KEY={CHAT_KEY}\n")
        tasks = tmp_path / "tasks.jsonl"
        tasks.write_text("".join(json.dumps({"id": f"t{i}", "prompt": "1?", "answer": "1",
                                             "split": "validation" if i < 2 else "train"}) + "\n" for i in range(4)))
        env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        params = StdioServerParameters(command=sys.executable, args=["-m", "learning_mcp", "--env-file", str(env_file)],
                                       env=env, cwd=str(tmp_path))
        with open(tmp_path / "server-stderr.log", "a", encoding="utf-8") as errlog:
            async with Client(stdio_client(params, errlog=errlog)) as client:
                diag = (await client.call_tool("diagnose", {})).structured_content
                assert diag["data_dir"] == str(data_dir) and diag["api_base"] == f"{url}/api", diag
                assert diag["reachable"], diag
                assert seen["health"][-1].get("x-user-id") == "user-from-file"

                models = json.loads((await client.read_resource("learning://models/synth")).contents[0].text)
                assert "Other/Model-From-File" in models["experimental"]

                chat_loop = await client.call_tool("run_sft_loop", {
                    "base_model": "tiny", "tasks": str(tasks), "verifier": "exact", "iterations": 1,
                    "config": f'[loop]\nchat_url = "{url}/v1"\nchat_api_key_env = "MY_CHAT_KEY"\n', "wait_seconds": 0})
                assert not chat_loop.is_error, chat_loop.content[0].text  # the allow-list came from the file
                await wait_for(lambda: seen["chat"], "the chat endpoint")
                assert seen["chat"][0].get("authorization") == f"Bearer {CHAT_KEY}"

                app_loop = await client.call_tool("run_sft_loop", {
                    "base_model": "tiny", "iterations": 1, "wait_seconds": 0,
                    "config": f'[loop]\ntask_app_url = "{url}"\ntrain_seeds = [1, 2]\nval_seeds = [0]\n'})
                assert not app_loop.is_error, app_loop.content[0].text
                await wait_for(lambda: seen["rollout"], "the task app")
                assert seen["rollout"][0].get("x-api-key") == ENV_KEY

                for started in (chat_loop, app_loop):
                    await client.call_tool("cancel_loop", {"loop_id": started.structured_content["loop_id"]})
        assert (data_dir / "loops").is_dir()  # the server's state went to the env file's data dir
    finally:
        stop()


@pytest.mark.anyio
async def test_sdk_experimental_reaches_create_job_through_the_settings_environ(tmp_path):
    """``create_job`` passes ``Settings.environ``: SDK_EXPERIMENTAL from an env file unlocks an experimental
    model for Synth's target even though the process environment does not set it."""
    dataset = tmp_path / "train.jsonl"
    dataset.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "hello"}]}) + "\n")
    env_file = tmp_path / "x.env"
    env_file.write_text("SDK_EXPERIMENTAL=1\n")
    settings = Settings.load([str(env_file)], environ={})
    config = ('[algorithm]\ntype = "offline"\nmethod = "sft"\nvariety = "fft"\n'
              '[job]\nmodel = "Qwen/Qwen3-4B-Thinking-2507"\n[compute]\ngpu_type = "H100"\ngpu_count = 1\n')
    async with LearningClient(Target("http://127.0.0.1:9/api", "synth", "sk-test")) as client:
        with pytest.raises(LearningMCPError) as caught:
            await create_job_from_config(client, config, dataset=str(dataset), dry_run=True, environ={})
        assert caught.value.code == "config_model_experimental"
        out = await create_job_from_config(client, config, dataset=str(dataset), dry_run=True,
                                           environ=settings.environ)
    assert out.dry_run and out.model == "Qwen/Qwen3-4B-Thinking-2507"
    assert settings.sdk_experimental
    assert not Settings.load(environ={"SDK_EXPERIMENTAL": "true"}, cwd=Path(tmp_path)).sdk_experimental  # "1" only
