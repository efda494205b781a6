"""Shared fixtures: tiny offline models, a real embedded backend on loopback, and helpers.

Everything runs for real: the backend is started as a subprocess (``learning-mcp backend``) with its own data
directory and talked to over HTTP; training jobs run in its worker processes on a tiny model built offline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def anyio_backend():
    return "asyncio"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from learning_mcp.backend.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0)


@dataclass
class RunningBackend:
    url: str          # origin, e.g. http://127.0.0.1:1234
    data_dir: Path
    proc: subprocess.Popen
    port: int

    @property
    def api(self) -> str:
        return f"{self.url}/api"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process_tree(self.proc, sig)


def stop_process_tree(proc: subprocess.Popen, sig: int = signal.SIGTERM, *, children: bool = True) -> None:
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        kids = parent.children(recursive=True) if children else []
    except psutil.NoSuchProcess:
        kids = []
    try:
        proc.send_signal(sig)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait(timeout=10)
    for kid in kids:
        try:
            kid.kill()
        except psutil.NoSuchProcess:
            pass


def start_backend(data_dir: Path, *, port: int | None = None, env: dict | None = None,
                  extra_args: list[str] | None = None) -> RunningBackend:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "test-backend.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "learning_mcp", "backend", "--port", str(port), "--data-dir", str(data_dir),
         *(extra_args or [])],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"backend exited: {(data_dir / 'test-backend.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return RunningBackend(url, data_dir, proc, port)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("backend did not start")


@pytest.fixture(scope="session")
def backend(tmp_path_factory) -> RunningBackend:
    """One embedded backend for the session (tests that restart or kill it make their own)."""
    running = start_backend(tmp_path_factory.mktemp("backend-data"))
    yield running
    running.stop()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arithmetic_rows(n: int = 48, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"messages": [{"role": "user", "content": f"{a}+{b}=?"},
                                  {"role": "assistant", "content": str(a + b)}]})
    return rows


def wait_job(api: str, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{api}/learning/jobs/{job_id}", timeout=10).json()
        if job["status"] in {"succeeded", "failed", "cancelled"}:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def wait_file_ready(api: str, file_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = httpx.get(f"{api}/learning/files/{file_id}", timeout=10).json()
        if rec["status"] != "processing":
            return rec
        time.sleep(0.1)
    raise AssertionError(f"file {file_id} stayed processing")


def upload_ready(api: str, path: Path) -> str:
    """Upload ``path`` to the backend as a fine-tune file, wait until it is validated, return its id."""
    with open(path, "rb") as fh:
        file_id = httpx.post(f"{api}/learning/files", files={"file": (path.name, fh, "application/jsonl")},
                             data={"purpose": "fine-tune"}, timeout=30).json()["id"]
    wait_file_ready(api, file_id)
    return file_id


@pytest.fixture
def proxy(backend):
    """A fault-injecting proxy (``fault_proxy.ScriptedProxy``) in front of the session backend; ``proxy.url``."""
    from fault_proxy import ScriptedProxy

    p = ScriptedProxy("127.0.0.1", backend.port)
    p.url = p.start()
    yield p
    p.stop()


def upload_ready(api: str, path: Path) -> str:
    """Upload a JSONL to the backend over HTTP and wait until it is validated; returns the file id."""
    with open(path, "rb") as fh:
        file_id = httpx.post(f"{api}/learning/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"},
                             timeout=30).json()["id"]
    wait_file_ready(api, file_id)
    return file_id


def job_history(api: str, job_id: str) -> list[dict]:
    """Every event of a job, oldest first."""
    body = httpx.get(f"{api}/learning/jobs/{job_id}/events", params={"limit": 1000}, timeout=10).json()
    return body.get("events") or body.get("data")
