"""Jobs as Ray Train jobs (backend/ray_backend.py) on a real local Ray cluster: a head and two worker nodes on
loopback (``ray.cluster_utils.Cluster``), the real backend pointed at it through ``LEARNING_MCP_RAY_ADDRESS``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'learning-mcp[ray]')")

from conftest import arithmetic_rows, start_backend, wait_file_ready, wait_job, write_jsonl  # noqa: E402
from learning_mcp.backend.ray_backend import scaling_for  # noqa: E402


def _ray_start(*args: str, env: dict) -> None:
    ray_cli = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_cli, "start", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *args],
                   check=True, env=env, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_cluster(temp_dir: str) -> None:
    """Kill the processes of this cluster only: those whose command line names its temp dir, and their children."""
    import psutil

    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in proc.info["cmdline"] or []):
            procs.append(proc)
            try:
                procs += proc.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def ray_cluster():
    """A head (no CPUs: nothing runs there) and two worker nodes with one CPU each, all on loopback, started with
    ``ray start`` in a temp dir of their own (short: Ray's unix socket paths have a length limit)."""
    from conftest import free_port

    temp_dir = tempfile.mkdtemp(prefix="lmr", dir="/tmp")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    try:
        _ray_start("--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard", "false",
                   "--temp-dir", temp_dir,
                   "--dashboard-agent-listen-port", str(free_port()), env=env)
        for _ in range(2):
            _ray_start("--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                       "--dashboard-agent-listen-port", str(free_port()), env=env)
        yield f"127.0.0.1:{port}"
    finally:
        _kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_backend(ray_cluster, tmp_path_factory):
    running = start_backend(tmp_path_factory.mktemp("ray-backend"),
                            env={"LEARNING_MCP_RAY_ADDRESS": ray_cluster, "LEARNING_MCP_MAX_CONCURRENT_JOBS": "2"})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def file_id(ray_backend, tmp_path_factory) -> str:
    path = write_jsonl(tmp_path_factory.mktemp("ray-data") / "train.jsonl", arithmetic_rows(32))
    with open(path, "rb") as fh:
        rec = httpx.post(f"{ray_backend.api}/learning/files", files={"file": (path.name, fh, "application/jsonl")},
                         data={"purpose": "fine-tune"}, timeout=30).json()
    return wait_file_ready(ray_backend.api, rec["id"])["id"]


def _start(api: str, model: Path, file_id: str, **hp) -> str:
    payload = {"model": str(model), "training_type": "sft_offline", "training_file_id": file_id,
               "hyperparameters": {"n_epochs": 2, "per_device_batch": 4, "learning_rate": 1e-2, **hp},
               "metadata": {"effective_config": {"compute": {"gpu_type": "cpu", "gpu_count": 2}}}}
    job = httpx.post(f"{api}/learning/jobs", json=payload, timeout=30).json()
    httpx.post(f"{api}/learning/jobs/{job['id']}/start", timeout=30).raise_for_status()
    return job["id"]


def _events(api: str, job_id: str) -> list[dict]:
    return httpx.get(f"{api}/learning/jobs/{job_id}/events", params={"limit": 1000}, timeout=30).json()["events"]


def _wait_for_progress(api: str, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = _events(api, job_id)
        if any(e["type"] == "sft.progress" for e in events):
            return next(e for e in events if e["type"] == "sft.distributed.started")
        assert not any(e["type"] == "sft.job.failed" for e in events), events[-3:]
        time.sleep(0.3)
    raise AssertionError("no training progress")


def test_scaling_from_compute():
    assert scaling_for({"metadata": {"effective_config": {"compute": {"gpu_type": "H100", "gpu_count": 8}}}}) == \
        {"num_workers": 8, "use_gpu": True}
    assert scaling_for({"metadata": {"effective_config": {"compute": {"gpu_type": "cpu", "gpu_count": 2}}}}) == \
        {"num_workers": 2, "use_gpu": False}
    assert scaling_for({}) == {"num_workers": 1, "use_gpu": False}


def test_job_runs_on_both_ray_worker_nodes(ray_cluster, ray_backend, file_id, tiny_model):
    job_id = _start(ray_backend.api, tiny_model, file_id)
    done = wait_job(ray_backend.api, job_id, timeout=300)
    events = _events(ray_backend.api, job_id)
    assert done["status"] == "succeeded", [e["message"] for e in events][-4:]
    assert next(e for e in events if e["type"] == "sft.running")["data"]["launcher"] == "ray"
    submitted = next(e for e in events if e["type"] == "sft.ray.submitted")
    assert submitted["data"]["num_workers"] == 2 and submitted["data"]["use_gpu"] is False
    started = next(e for e in events if e["type"] == "sft.distributed.started")
    assert started["data"]["launcher"] == "ray" and started["data"]["world_size"] == 2
    assert len({r["ray_node_id"] for r in started["data"]["ranks"]}) == 2  # one rank on each worker node
    assert sum(e["type"] == "sft.training.finish" for e in events) == 1
    losses = [e["data"]["loss"] for e in events if e["type"] == "sft.progress"]
    assert losses[-1] < losses[0]
    reply = httpx.post(f"{ray_backend.api}/inference/v1/chat/completions", timeout=120, json={
        "model": done["fine_tuned_model"], "messages": [{"role": "user", "content": "1+1=?"}], "max_tokens": 3})
    assert reply.status_code == 200, reply.text


def test_cancel_stops_a_ray_job(ray_backend, file_id, tiny_model):
    job_id = _start(ray_backend.api, tiny_model, file_id, n_epochs=1000)
    _wait_for_progress(ray_backend.api, job_id)
    httpx.post(f"{ray_backend.api}/learning/jobs/{job_id}/cancel", timeout=30).raise_for_status()
    assert wait_job(ray_backend.api, job_id, timeout=120)["status"] == "cancelled"


def test_killed_ray_worker_fails_the_job_clearly(ray_backend, file_id, tiny_model):
    job_id = _start(ray_backend.api, tiny_model, file_id, n_epochs=1000)
    started = _wait_for_progress(ray_backend.api, job_id)
    victim = next(r["pid"] for r in started["data"]["ranks"] if r["rank"] == 1)
    os.kill(victim, signal.SIGKILL)
    done = wait_job(ray_backend.api, job_id, timeout=180)
    assert done["status"] == "failed"
    failed = next(e for e in _events(ray_backend.api, job_id) if e["type"] == "sft.job.failed")
    assert failed["data"]["error"]["code"] in {"ray_worker_failed", "peer_process_died"}, failed["message"]
    assert "died" in failed["message"], failed["message"]
