"""Issue 10: a loop waiting on its training job survives API outages and a kill -9 of the embedded backend,
re-attaching to the same job (no duplicate). Real backend, real MCP client, real fault proxy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import anyio
import httpx
import pytest
from mcp import Client

from learning_mcp.server.app import create_server
from learning_mcp.tools.settings import Settings
from test_loop import LOOP_HP, one_digit_tasks, seed_model, wait_loop, wait_step  # noqa: F401 - fixture

pytestmark = pytest.mark.anyio


async def test_a_30s_api_outage_while_training_does_not_end_the_loop(backend, seed_model, proxy, tmp_path):
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    settings = Settings.load(backend_url=proxy.url, data_dir=str(tmp_path / "mcp"))
    async with Client(create_server(settings)) as client:
        r = await client.call_tool("run_sft_loop", {
            "base_model": seed_model, "tasks": str(tasks), "iterations": 1, "n": 2,
            "hyperparameters": {**LOOP_HP, "total_steps": 120}, "wait_seconds": 0})
        assert not r.is_error, r.content[0].text
        loop_id = r.structured_content["loop_id"]
        job_id = (await wait_step(client, loop_id, "train"))["current_job_id"]
        outage = proxy.add("*", "/", "drop", times=10 ** 9)  # every request: connection reset, for 30 s
        started = time.monotonic()
        await anyio.sleep(30)
        outage.times = outage.hits  # the API is back
        dropped = outage.hits
        st = await wait_loop(client, loop_id, timeout=400)
    assert dropped >= 5, dropped  # the loop really polled through the outage
    assert time.monotonic() - started >= 30
    assert st["state"] == "succeeded", st
    assert st["table"][0]["job_id"] == job_id  # re-attached to the same job
    jobs = httpx.get(f"{backend.api}/learning/jobs", params={"limit": 500}).json()["jobs"]
    assert [j["id"] for j in jobs if j["training_file_id"] == st["table"][0]["file_id"]] == [job_id]


async def test_kill_9_of_the_embedded_backend_during_training(tiny_model, tmp_path):
    """The MCP server started the embedded backend itself; it is killed (-9) while the loop's job trains. The
    server's client finds it gone, restarts it detached (once, logged) and the loop ends succeeded."""
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl", n_val=4)
    accept = tmp_path / "accept.py"  # the untrained tiny model answers nothing right: every sample is kept
    accept.write_text("def accept(completion, answer, task):\n    return 1.0\n")
    data_dir = tmp_path / "mcp"
    env_backup = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(("SYNTH_", "BACKEND_"))}
    try:
        async with Client(create_server(Settings.load(data_dir=str(data_dir)))) as client:
            r = await client.call_tool("run_sft_loop", {
                "config": "[eval]\nmax_tokens = 4\n[filter]\nkeep_truncated = true\n[loop]\nearly_stopping = false\n",
                "base_model": str(tiny_model), "tasks": str(tasks), "iterations": 1, "n": 1,
                "verifier": f"{accept}:accept",
                "hyperparameters": {**LOOP_HP, "total_steps": 150}, "wait_seconds": 0})
            assert not r.is_error, r.content[0].text
            loop_id = r.structured_content["loop_id"]
            await wait_step(client, loop_id, "train", timeout=400)
            info = json.loads((data_dir / "backend.json").read_text())
            os.kill(info["pid"], signal.SIGKILL)
            killed = time.monotonic()
            st = await wait_loop(client, loop_id, timeout=600)
            assert st["state"] == "succeeded", st
            new = json.loads((data_dir / "backend.json").read_text())
            assert new["pid"] != info["pid"]
            jobs = (await client.call_tool("list_jobs", {"limit": 50})).structured_content["jobs"]
            running = [j for j in jobs if j["status"] in ("queued", "running")]
            assert running == [], jobs  # no duplicate left training
            print(f"recovered {time.monotonic() - killed:.0f}s after the kill; jobs: "
                  f"{[(j['job_id'], j['status']) for j in jobs]}")
    finally:
        os.environ.update(env_backup)
        subprocess.run([sys.executable, "-m", "learning_mcp", "backend", "--stop", "--data-dir", str(data_dir)],
                       capture_output=True, timeout=60)
