"""Multi-process training on one node (backend/distributed.py): torchrun, gloo, 2 CPU processes, real backend."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from conftest import arithmetic_rows, start_backend, wait_file_ready, wait_job, write_jsonl
from learning_mcp.backend.distributed import LaunchPlan, plan_launch, scale_for_world, worker_command


def _payload(model: str, file_id: str, *, gpu_type: str = "cpu", gpu_count: int = 2, **hp) -> dict:
    return {"model": model, "training_type": "sft_offline", "training_file_id": file_id,
            "hyperparameters": {"n_epochs": 1, "per_device_batch": 4, "learning_rate": 1e-2, **hp},
            "metadata": {"effective_config": {"compute": {"gpu_type": gpu_type, "gpu_count": gpu_count}}}}


def test_plan_from_compute_section():
    assert plan_launch(_payload("m", "f", gpu_count=1)).world_size == 1
    cpu = plan_launch(_payload("m", "f", gpu_count=2))
    assert (cpu.world_size, cpu.device, cpu.backend, cpu.strategy, cpu.launcher) == (2, "cpu", "gloo", "ddp", "torchrun")
    fsdp = plan_launch(_payload("m", "f", gpu_type="H100", gpu_count=4, parallelism={"fsdp": True}), gpus_available=2)
    assert (fsdp.world_size, fsdp.backend, fsdp.strategy) == (2, "nccl", "fsdp") and "only 2 CUDA" in fsdp.note
    none = plan_launch(_payload("m", "f", gpu_type="H100", gpu_count=8), gpus_available=0)
    assert none.world_size == 1 and "0 CUDA device" in none.note and 'gpu_type = "cpu"' in none.note
    cmd = worker_command(cpu, Path("/d"), "job_1")
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc-per-node" in cmd
    assert cmd[-4:] == ["--data-dir", "/d", "--job-id", "job_1"]
    assert worker_command(LaunchPlan(1, "cpu", "none", "single", 1), Path("/d"), "j")[1:3] == \
        ["-m", "learning_mcp.backend.worker"]


def test_global_batch_stays_global():
    base = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4, "use_cpu": True,
            "per_device_eval_batch_size": 8}
    scaled = scale_for_world(base, {"global_batch": 32}, 2)
    assert scaled["per_device_train_batch_size"] * scaled["gradient_accumulation_steps"] * 2 == 32
    assert scaled["ddp_backend"] == "gloo"
    small = scale_for_world({**base, "gradient_accumulation_steps": 1}, {"global_batch": 8}, 2)
    assert small["per_device_train_batch_size"] == 4 and small["gradient_accumulation_steps"] == 1
    assert scale_for_world(base, {"global_batch": 32}, 1) is base


@pytest.fixture(scope="module")
def dist_backend(tmp_path_factory):
    running = start_backend(tmp_path_factory.mktemp("dist-backend"))
    yield running
    running.stop()


def _upload(api: str, path: Path) -> str:
    with open(path, "rb") as fh:
        rec = httpx.post(f"{api}/learning/files", files={"file": (path.name, fh, "application/jsonl")},
                         data={"purpose": "fine-tune"}, timeout=30).json()
    return wait_file_ready(api, rec["id"])["id"]


def _events(api: str, job_id: str) -> list[dict]:
    return httpx.get(f"{api}/learning/jobs/{job_id}/events", params={"limit": 1000}, timeout=30).json()["events"]


def test_two_process_cpu_job_succeeds_and_serves(dist_backend, tiny_model, tmp_path):
    file_id = _upload(dist_backend.api, write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(64)))
    job = httpx.post(f"{dist_backend.api}/learning/jobs",
                     json=_payload(str(tiny_model), file_id, n_epochs=3, global_batch=8), timeout=30).json()
    httpx.post(f"{dist_backend.api}/learning/jobs/{job['id']}/start", timeout=30).raise_for_status()
    done = wait_job(dist_backend.api, job["id"], timeout=150)
    events = _events(dist_backend.api, job["id"])
    assert done["status"] == "succeeded", [e["message"] for e in events][-5:]
    running = next(e for e in events if e["type"] == "sft.running")
    assert running["data"]["launcher"] == "torchrun" and running["data"]["world_size"] == 2
    started = next(e for e in events if e["type"] == "sft.distributed.started")
    assert started["data"]["world_size"] == 2 and started["data"]["backend"] == "gloo"
    assert [r["rank"] for r in started["data"]["ranks"]] == [0, 1]
    assert {r["device"] for r in started["data"]["ranks"]} == {"cpu"}
    assert len({r["pid"] for r in started["data"]["ranks"]}) == 2
    # only rank 0 writes: one finish event, one config event
    assert sum(e["type"] == "sft.training.finish" for e in events) == 1
    assert sum(e["type"] == "sft.config.prepared" for e in events) == 1
    losses = [e["data"]["loss"] for e in events if e["type"] == "sft.progress"]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    # 64 examples, 3 epochs, global batch 8 over 2 ranks (4 each, no accumulation): 8 steps per epoch
    assert next(e for e in events if e["type"] == "sft.training.finish")["data"]["steps"] == 24
    models = [p for p in (dist_backend.data_dir / "models").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in models] == [job["id"]]
    reply = httpx.post(f"{dist_backend.api}/inference/v1/chat/completions", timeout=120, json={
        "model": done["fine_tuned_model"], "messages": [{"role": "user", "content": "2+3=?"}], "max_tokens": 4,
        "temperature": 0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"


def test_cancel_reaches_every_rank(dist_backend, tiny_model, tmp_path):
    import psutil

    file_id = _upload(dist_backend.api, write_jsonl(tmp_path / "long.jsonl", arithmetic_rows(64, seed=3)))
    job = httpx.post(f"{dist_backend.api}/learning/jobs",
                     json=_payload(str(tiny_model), file_id, n_epochs=500), timeout=30).json()
    httpx.post(f"{dist_backend.api}/learning/jobs/{job['id']}/start", timeout=30).raise_for_status()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(e["type"] == "sft.progress" for e in _events(dist_backend.api, job["id"])):
            break
        time.sleep(0.3)
    started = next(e for e in _events(dist_backend.api, job["id"]) if e["type"] == "sft.distributed.started")
    rank_pids = [r["pid"] for r in started["data"]["ranks"]]
    httpx.post(f"{dist_backend.api}/learning/jobs/{job['id']}/cancel", timeout=30).raise_for_status()
    done = wait_job(dist_backend.api, job["id"], timeout=60)
    assert done["status"] == "cancelled"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                              for p in rank_pids):
        time.sleep(0.2)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in rank_pids)
