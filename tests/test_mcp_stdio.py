"""The server as a host starts it: ``python -m learning_mcp`` over stdio, configured only through its environment.

* against the session's embedded backend (``SYNTH_BACKEND_URL``), in both protocol eras;
* with no backend URL and no key: the server starts the embedded backend itself, detached, in its data
  directory; a job runs to ``succeeded`` on it, the backend outlives the server, and the test kills it;
* with ``SYNTH_API_KEY`` set and an API that echoes the Authorization header: the key shows up nowhere, not in
  tool output and not in the server's stderr log (run at DEBUG);
* stdout carries nothing but JSON-RPC, and ``--help`` exits 0 without importing torch.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import httpx
import psutil
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from conftest import arithmetic_rows, write_jsonl
from fault_proxy import ScriptedProxy
from test_mcp_server import MODES, PROTOCOL, SECRET, Session, open_session, poll_to_terminal, sft_toml

REMOTE_VARS = ("SYNTH_API_KEY", "SYNTH_BACKEND_URL", "BACKEND_BASE_URL", "SYNTH_BACKEND_OVERRIDE",
               "LEARNING_MCP_BACKEND_KEY", "LEARNING_MCP_DATA_DIR")
HEAVY_MODULES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")


def server_env(**values: str) -> dict[str, str]:
    """The test process's environment without any learning-API configuration, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if k not in REMOTE_VARS}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **values)
    return env


@asynccontextmanager
async def stdio_session(tmp_path: Path, env: dict[str, str], *, mode: str = "auto",
                        args: tuple[str, ...] = ()) -> AsyncIterator[Session]:
    """``python -m learning_mcp`` as a subprocess; its stderr goes to ``tmp_path / "server-stderr.log"``."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "learning_mcp", *args], env=env,
                                   cwd=str(tmp_path))
    with open(tmp_path / "server-stderr.log", "a", encoding="utf-8") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
            assert client.protocol_version == PROTOCOL[mode]
            yield await open_session(client)


# ------------------------------------------------------------------------------------------------------
# against the session backend
# ------------------------------------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_stdio_against_backend_url(backend, tiny_model, tmp_path, mode, anyio_backend):
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(16, seed=5))
    config = tmp_path / "sft.toml"
    config.write_text(sft_toml(str(tiny_model)))
    env = server_env(SYNTH_BACKEND_URL=backend.url, LEARNING_MCP_DATA_DIR=str(tmp_path / "data"))
    async with stdio_session(tmp_path, env, mode=mode) as s:
        diag = await s.ok("diagnose")
        assert diag["reachable"] and diag["backend"] == "custom" and diag["api_base"] == backend.api
        assert diag["data_dir"] == str(tmp_path / "data")
        assert (await s.ok("validate_dataset", {"path": str(train)}))["ok"]
        up = await s.ok("upload_file", {"path": str(train)})
        created = await s.ok("create_job", {"config": str(config), "training_file_id": up["file_id"],
                                            "start": False})
        job_id = created["job_id"]
        st = await s.ok("get_job_status", {"job_id": job_id, "wait_seconds": 0.5})
        assert st["status"] == "queued" and not st["terminal"]
        assert job_id in {j["job_id"] for j in (await s.ok("list_jobs", {"limit": 200}))["jobs"]}
        record = json.loads((await s.client.read_resource(f"learning://jobs/{job_id}")).contents[0].text)
        assert record["id"] == job_id
        example = (await s.client.read_resource("learning://config/example")).contents[0].text
        assert "```toml" in example
        assert (await s.ok("cancel_job", {"job_id": job_id}))["status"] == "cancelled"
        await s.fails("get_job_status", {"job_id": "ftjob-unknown"}, "unknown_job")
        await s.fails("upload_file", {"path": str(tmp_path / "missing.jsonl")}, "file_not_found")
    log = (tmp_path / "server-stderr.log").read_text()
    assert "Traceback" not in log, log[-3000:]


# ------------------------------------------------------------------------------------------------------
# no configuration: the server starts the embedded backend itself
# ------------------------------------------------------------------------------------------------------
def kill_detached_backend(data_dir: Path) -> list[int]:
    """Kill the backend recorded in ``<data_dir>/backend.json`` and every process started for ``data_dir``
    (its training workers), by pid. Returns the pids it killed."""
    pids: set[int] = set()
    try:
        pids.add(int(json.loads((data_dir / "backend.json").read_text())["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    marker = str(data_dir)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.info["pid"] != os.getpid() and any(marker in part for part in proc.info["cmdline"] or ()):
                pids.add(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    procs = []
    for pid in pids:
        try:
            parent = psutil.Process(pid)
            procs.extend([parent, *parent.children(recursive=True)])
        except psutil.NoSuchProcess:
            continue
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    return sorted(p.pid for p in procs)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def is_stdio_server(proc: psutil.Process, cwd: Path) -> bool:
    try:
        return proc.cmdline()[1:] == ["-m", "learning_mcp"] and proc.cwd() == str(cwd)
    except psutil.Error:
        return False


@pytest.fixture
def own_data_dir(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    yield data_dir
    kill_detached_backend(data_dir)


@pytest.mark.anyio
async def test_stdio_starts_the_embedded_backend_itself(own_data_dir, tiny_model, tmp_path, anyio_backend):
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(32, seed=8))
    env = server_env(LEARNING_MCP_DATA_DIR=str(own_data_dir))  # no URL, no key
    async with stdio_session(tmp_path, env) as s:
        assert not (own_data_dir / "backend.json").exists()  # listing tools started nothing
        diag = await s.ok("diagnose")
        assert diag["reachable"] and diag["backend"] == "local" and diag["key_set"] is False
        info = json.loads((own_data_dir / "backend.json").read_text())
        assert diag["api_base"] == f"{info['url']}/api" and info["url"].startswith("http://127.0.0.1:")
        backend_pid = info["pid"]
        created = await s.ok("create_job", {"config": sft_toml(str(tiny_model)), "dataset": str(train)})
        final, _ = await poll_to_terminal(s, created["job_id"])
        assert final["status"] == "succeeded" and final["fine_tuned_model"].startswith("ft:")
        server_pids = [p.pid for p in psutil.Process().children() if is_stdio_server(p, tmp_path)]
        assert len(server_pids) == 1
    # the server is gone; its backend was detached (own session) and keeps serving
    deadline = time.monotonic() + 10
    while any(alive(p) for p in server_pids):
        assert time.monotonic() < deadline, "the stdio server did not exit"
        time.sleep(0.1)
    backend = psutil.Process(backend_pid)
    assert backend.is_running() and os.getsid(backend_pid) != os.getsid(0)
    jobs = httpx.get(f"{info['url']}/api/learning/jobs", timeout=10).json()["jobs"]
    assert created["job_id"] in {j["id"] for j in jobs}
    assert backend_pid in kill_detached_backend(own_data_dir)
    assert not alive(backend_pid)


# ------------------------------------------------------------------------------------------------------
# secrets
# ------------------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_stdio_never_shows_the_key(backend, tiny_model, tmp_path, anyio_backend):
    proxy = ScriptedProxy("127.0.0.1", backend.port)
    url = proxy.start()
    proxy.add("GET", "/api/health", "echo_auth", status=401, times=1000)
    proxy.add("GET", "/api/learning/jobs", "echo_auth", status=401, times=1000)
    proxy.add("POST", "/api/learning/jobs", "echo_auth", status=500, times=1000)
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(16, seed=6))
    env = server_env(SYNTH_API_KEY=SECRET, SYNTH_BACKEND_URL=url, LEARNING_MCP_DATA_DIR=str(tmp_path / "data"))
    try:
        async with stdio_session(tmp_path, env, args=("--log-level", "DEBUG")) as s:
            diag = await s.ok("diagnose")
            assert diag["key_set"] and not diag["reachable"]
            await s.fails("list_jobs", {}, "auth_failed", "Bearer ***")
            await s.fails("get_job_status", {"job_id": "ftjob-x"}, "auth_failed", "Bearer ***")
            up = await s.ok("upload_file", {"path": str(train)})  # uploads are forwarded, with the key
            await s.fails("create_job", {"config": sft_toml(str(tiny_model)), "training_file_id": up["file_id"]},
                          "backend_error", "HTTP 500", "Bearer ***")
            await s.fails("cancel_job", {"job_id": "ftjob-x"}, "backend_error", "Bearer ***")
    finally:
        proxy.stop()
    assert any(h.get("authorization") == f"Bearer {SECRET}" for _, _, h in proxy.requests)
    assert s.texts and not [t for t in s.texts if SECRET in t]
    log = (tmp_path / "server-stderr.log").read_text()
    assert "DEBUG" in log and "401" in log  # the log is verbose, and still clean
    assert SECRET not in log


# ------------------------------------------------------------------------------------------------------
# stdout hygiene and start-up cost
# ------------------------------------------------------------------------------------------------------
def _reader(stream, out: "queue.Queue[str | None]") -> None:
    for line in iter(stream.readline, ""):
        out.put(line)
    out.put(None)


def test_stdout_is_only_jsonrpc(backend, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(12, seed=2))
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "validate_dataset", "arguments": {"path": str(train)}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
         "params": {"name": "get_job_status", "arguments": {"job_id": "ftjob-unknown"}}},
    ]
    env = server_env(SYNTH_BACKEND_URL=backend.url, LEARNING_MCP_DATA_DIR=str(tmp_path / "data"))
    stderr = open(tmp_path / "stderr.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "learning_mcp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=stderr, text=True, env=env, cwd=tmp_path)
    lines: "queue.Queue[str | None]" = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    answers: dict[int, dict] = {}
    try:
        for message in messages:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
        deadline = time.monotonic() + 60
        while len(answers) < 4:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"server exited early: {(tmp_path / 'stderr.log').read_text()[-2000:]}"
            seen.append(line)
            parsed = json.loads(line)
            if "id" in parsed:
                answers[parsed["id"]] = parsed
        proc.stdin.close()
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()
    while (line := lines.get(timeout=5)) is not None:
        seen.append(line)
    nonblank = [l for l in seen if l.strip()]
    assert nonblank
    for line in nonblank:
        message = json.loads(line)
        assert message["jsonrpc"] == "2.0" and ("id" in message or "method" in message), line
    assert answers[1]["result"]["serverInfo"]["name"] == "learning-mcp"
    assert {"validate_dataset", "get_job_status"} <= {t["name"] for t in answers[2]["result"]["tools"]}
    assert answers[3]["result"]["structuredContent"]["ok"] is True
    unknown = answers[4]["result"]
    assert unknown["isError"] and "[unknown_job]" in unknown["content"][0]["text"]
    assert (tmp_path / "stderr.log").read_text().strip()  # logging went to stderr


def test_help_exits_zero_without_importing_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "learning_mcp", "--help"],
                          capture_output=True, text=True, timeout=60, env=server_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: learning-mcp") and "--transport" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "learning_mcp" in imported and not imported & set(HEAVY_MODULES), imported & set(HEAVY_MODULES)

    probe = f"""
import json, sys
import learning_mcp.cli, learning_mcp.server.app
from learning_mcp.server.app import create_server
from learning_mcp.tools.settings import Settings
server = create_server(Settings.load(data_dir={str(tmp_path / 'data')!r}))
try:
    learning_mcp.cli.main(["--help"])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY_MODULES!r})
sys.stderr.write("HEAVY=" + json.dumps(heavy) + "\\n")
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env=server_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    heavy = json.loads(proc.stderr.rsplit("HEAVY=", 1)[1])
    assert heavy == [], heavy
