"""Every tool call returns within ~50 s, even against a chat endpoint that accepts connections and never answers:
``eval`` and ``run_sft_loop`` probe the model first (one 1-token request, at most PROBE_TIMEOUT_S) and the probe's
time counts against the call's budget (CALL_BUDGET_S). Real MCP client, real server, a real silent TCP server on
loopback. The budget is shrunk here so the test is quick; the real values are checked to stay within 50 s."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from mcp import Client

from learning_mcp.server.app import create_server
from learning_mcp.tools import eval_runs
from learning_mcp.tools.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def silent_url():
    """http://127.0.0.1:<port>/v1 on a server that accepts every connection, reads, and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            held.append(conn)  # kept open, never written to

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setattr(eval_runs, "PROBE_TIMEOUT_S", 2.0)
    monkeypatch.setattr(eval_runs, "CALL_BUDGET_S", 5.0)
    return 5.0


def _tasks(path):
    path.write_text("".join(json.dumps({"id": str(i), "prompt": f"{i}+1=?", "answer": str(i + 1),
                                        "split": "validation" if i < 2 else "train"}) + "\n" for i in range(8)))
    return path


def test_the_real_budget_fits_the_50_s_rule():
    assert eval_runs.PROBE_TIMEOUT_S <= 10 and eval_runs.CALL_BUDGET_S <= 45
    assert eval_runs.PROBE_TIMEOUT_S < eval_runs.CALL_BUDGET_S


async def test_eval_and_run_sft_loop_return_within_the_budget(silent_url, small_budget, tmp_path, anyio_backend):
    tasks = _tasks(tmp_path / "tasks.jsonl")
    server = create_server(Settings.load(data_dir=str(tmp_path / "data"), backend_url="http://127.0.0.1:9/api"))
    async with Client(server) as client:
        started = time.monotonic()
        r = await client.call_tool("eval", {"model": "m", "tasks": str(tasks), "chat_url": silent_url})
        took = time.monotonic() - started
        assert took < small_budget + 2, took  # default wait_seconds=40: the probe's time came off it
        assert took > 1.5, took  # the probe did wait for the silent endpoint (up to PROBE_TIMEOUT_S)
        if r.is_error:
            assert r.content[0].text.split("]", 1)[0].count("[") == 1, r.content[0].text
        else:
            assert r.structured_content["state"] == "running", r.structured_content

        config = f'[loop]\nbase_model = "m"\ntasks = "{tasks}"\nchat_url = "{silent_url}"\niterations = 1\n'
        started = time.monotonic()
        r = await client.call_tool("run_sft_loop", {"config": config})  # default wait_seconds=20
        took = time.monotonic() - started
        assert 1.5 < took < small_budget + 2, (took, r.content[0].text)  # whatever it returns, within the bound
        assert r.is_error or r.structured_content["state"] == "running", r.structured_content
