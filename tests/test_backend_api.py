"""The embedded backend over real HTTP on loopback: every endpoint of Synth's contract that clients use."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from conftest import arithmetic_rows, start_backend, wait_file_ready, wait_job, write_jsonl


def upload(api: str, path: Path, route: str = "learning/files") -> dict:
    with open(path, "rb") as fh:
        r = httpx.post(f"{api}/{route}", files={"file": (path.name, fh, "application/jsonl")},
                       data={"purpose": "fine-tune"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def small_payload(model: str, file_id: str, **hp) -> dict:
    return {"model": model, "training_type": "sft_offline", "training_file_id": file_id,
            "hyperparameters": {"n_epochs": 1, "per_device_batch": 8, "learning_rate": 5e-3, **hp},
            "metadata": {"effective_config": {"compute": {"gpu_type": "cpu", "gpu_count": 1}}}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("ds") / "train.jsonl", arithmetic_rows(64))


def test_health(backend):
    body = httpx.get(f"{backend.api}/health").json()
    assert body["status"] == "ok" and body["service"] == "learning-mcp-backend"


def test_upload_both_paths_dedupe_and_readiness(backend, dataset):
    first = upload(backend.api, dataset, "learning/files")
    second = upload(backend.api, dataset, "files")
    assert first["id"] == second["id"]  # content-addressed
    assert first["sha256"] == hashlib.sha256(dataset.read_bytes()).hexdigest()
    assert first["bytes"] == dataset.stat().st_size and first["object"] == "file"
    ready = wait_file_ready(backend.api, first["id"])
    assert ready["status"] == "ready" and ready["examples"] == 64
    assert httpx.get(f"{backend.api}/files/{first['id']}").json()["id"] == first["id"]
    listed = httpx.get(f"{backend.api}/files", params={"purpose": "fine-tune", "limit": 50}).json()
    assert first["id"] in [f["id"] for f in listed["files"]] and listed["data"] == listed["files"]
    # no stray temp files: the upload was written to .incoming and renamed
    assert list((backend.data_dir / "files" / ".incoming").iterdir()) == []


def test_invalid_file_is_marked_error_and_refused_by_create(backend, tmp_path, tiny_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    rec = wait_file_ready(backend.api, upload(backend.api, bad)["id"])
    assert rec["status"] == "error"
    assert "invalid JSON" in json.dumps(rec["status_details"])
    r = httpx.post(f"{backend.api}/learning/jobs", json=small_payload(str(tiny_model), rec["id"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file_id"
    assert "failed validation" in r.json()["detail"]


def test_delete_and_unknown_file(backend, tmp_path):
    path = write_jsonl(tmp_path / "del.jsonl", arithmetic_rows(3, seed=9))
    rec = upload(backend.api, path)
    assert httpx.delete(f"{backend.api}/files/{rec['id']}").json()["deleted"] is True
    r = httpx.get(f"{backend.api}/files/{rec['id']}")
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    assert httpx.delete(f"{backend.api}/files/file-nope").status_code == 404


def test_upload_size_limit_413(tmp_path):
    small = start_backend(tmp_path / "limited", env={"LEARNING_MCP_MAX_UPLOAD_BYTES": "200"})
    try:
        path = write_jsonl(tmp_path / "big.jsonl", arithmetic_rows(40))
        with open(path, "rb") as fh:
            r = httpx.post(f"{small.api}/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"})
        assert r.status_code == 413
        assert "limit of 200 bytes" in r.json()["detail"] and r.json()["error"]["code"] == "file_too_large"
        assert list((small.data_dir / "files" / ".incoming").iterdir()) == []
        assert httpx.get(f"{small.api}/files").json()["files"] == []
    finally:
        small.stop()


@pytest.mark.parametrize("mutate, status, param, needle", [
    (lambda p: p.pop("training_file_id"), 400, "training_file_id", "training_file_id is required"),
    (lambda p: p.update(training_file_id="file-doesnotexist"), 400, "training_file_id", "does not exist"),
    (lambda p: p["hyperparameters"].update(learning_rate=0), 400, "hyperparameters.learning_rate",
     "hyperparameters.learning_rate must be greater than zero"),
    (lambda p: p["hyperparameters"].update(per_device_batch=True), 400, "hyperparameters.per_device_batch",
     "must be an integer greater than zero"),
    (lambda p: p["hyperparameters"].update(warmup_ratio=2), 400, "hyperparameters.warmup_ratio", "between 0 and 1"),
    (lambda p: p.update(model="/no/such/model/dir"), 400, "model", "/no/such/model/dir"),
    (lambda p: p.update(model=""), 400, "model", "model is required"),
    (lambda p: p.update(training_type="rl_online"), 400, "training_type", "not supported"),
])
def test_create_job_errors_name_the_field(backend, dataset, tiny_model, mutate, status, param, needle):
    file_id = upload(backend.api, dataset)["id"]
    payload = small_payload(str(tiny_model), file_id)
    mutate(payload)
    r = httpx.post(f"{backend.api}/learning/jobs", json=payload)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["param"] == param and needle in body["detail"]


def test_create_job_rejects_non_json(backend):
    r = httpx.post(f"{backend.api}/learning/jobs", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"]


def test_unknown_job_404s(backend):
    for path in ("", "/events", "/metrics", "/timeline", "/status"):
        r = httpx.get(f"{backend.api}/learning/jobs/ftjob-nope{path}")
        assert r.status_code == 404 and "not found" in r.json()["detail"]
    assert httpx.post(f"{backend.api}/learning/jobs/ftjob-nope/cancel").status_code == 404


def test_idempotent_create_and_queued_until_start(backend, dataset, tiny_model):
    file_id = upload(backend.api, dataset)["id"]
    payload = small_payload(str(tiny_model), file_id)
    key = {"Idempotency-Key": f"test-{time.time()}"}
    a = httpx.post(f"{backend.api}/learning/jobs", json=payload, headers=key).json()
    b = httpx.post(f"{backend.api}/learning/jobs", json=payload, headers=key).json()
    assert a["job_id"] == a["id"] == b["job_id"]
    time.sleep(1.0)
    assert httpx.get(f"{backend.api}/learning/jobs/{a['id']}").json()["status"] == "queued"  # not started
    cancelled = httpx.post(f"{backend.api}/learning/jobs/{a['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    # cancelling twice is harmless
    assert httpx.post(f"{backend.api}/learning/jobs/{a['id']}/cancel").json()["status"] == "cancelled"


def test_training_run_to_succeeded_with_loss_falling_and_serving(backend, dataset, tiny_model):
    file_id = upload(backend.api, dataset)["id"]
    payload = small_payload(str(tiny_model), file_id, n_epochs=6)
    job = httpx.post(f"{backend.api}/learning/jobs", json=payload).json()
    started = httpx.post(f"{backend.api}/learning/jobs/{job['id']}/start").json()
    assert started["status"] in {"queued", "validating_files", "running"}
    again = httpx.post(f"{backend.api}/learning/jobs/{job['id']}/start")  # idempotent
    assert again.status_code == 200
    done = wait_job(backend.api, job["id"])
    assert done["status"] == "succeeded", done
    assert done["fine_tuned_model"] == f"ft:{tiny_model}:{job['id']}"

    events = httpx.get(f"{backend.api}/learning/jobs/{job['id']}/events", params={"since_seq": 0}).json()
    seqs = [e["seq"] for e in events["events"]]
    assert seqs == list(range(1, len(seqs) + 1)) and events["next_seq"] == seqs[-1]
    types = [e["type"] for e in events["events"]]
    for needed in ("sft.created", "sft.running", "sft.training.started", "sft.progress", "sft.job.completed",
                   "workflow.completed"):
        assert needed in types, types
    assert types.index("sft.job.completed") < types.index("workflow.completed")
    progress = next(e for e in events["events"] if e["type"] == "sft.progress")
    assert {"step", "epoch", "loss", "total_steps"} <= set(progress["data"])
    completed = next(e for e in events["events"] if e["type"] == "workflow.completed")
    assert completed["data"]["fine_tuned_model"] == done["fine_tuned_model"]
    later = httpx.get(f"{backend.api}/learning/jobs/{job['id']}/events", params={"since_seq": seqs[-3]}).json()
    assert [e["seq"] for e in later["events"]] == seqs[-2:]

    points = httpx.get(f"{backend.api}/learning/jobs/{job['id']}/metrics", params={"name": "train.loss"}).json()["points"]
    assert len(points) >= 3
    assert points[-1]["value"] < points[0]["value"], points
    assert {p["name"] for p in httpx.get(f"{backend.api}/learning/jobs/{job['id']}/metrics").json()["points"]} >= {
        "train.loss", "train.learning_rate"}
    timeline = httpx.get(f"{backend.api}/learning/jobs/{job['id']}/timeline").json()
    assert timeline["events"] == timeline["timeline"]
    assert [t["phase"] for t in timeline["events"]][-1] == "succeeded"
    status = httpx.get(f"{backend.api}/learning/jobs/{job['id']}/status").json()
    assert status["status"] == "succeeded" and status["progress"]["step"] == status["progress"]["total_steps"]
    assert httpx.get(f"{backend.api}/learning/jobs/{job['id']}/config").json() == payload

    listed = httpx.get(f"{backend.api}/learning/jobs", params={"status": "succeeded", "limit": 5}).json()
    assert job["id"] in [j["id"] for j in listed["jobs"]]
    assert all(j["status"] == "succeeded" for j in listed["jobs"])
    models = httpx.get(f"{backend.api}/learning/models").json()["data"]
    assert done["fine_tuned_model"] in [m["id"] for m in models]
    # the v1 alias used by `synth-ai status`
    assert httpx.get(f"{backend.url}/api/v1/learning/jobs/{job['id']}").json()["status"] == "succeeded"

    chat = httpx.post(f"{backend.api}/inference/v1/chat/completions", timeout=120, json={
        "model": done["fine_tuned_model"], "messages": [{"role": "user", "content": "3+4=?"}],
        "n": 3, "temperature": 0.8, "max_tokens": 4, "seed": 1}).json()
    assert chat["object"] == "chat.completion" and len(chat["choices"]) == 3
    assert all(isinstance(c["message"]["content"], str) for c in chat["choices"])
    base = httpx.post(f"{backend.api}/inference/v1/chat/completions", timeout=120, json={
        "model": str(tiny_model), "messages": [{"role": "user", "content": "3+4=?"}], "max_tokens": 4,
        "temperature": 0}).json()
    assert base["choices"][0]["finish_reason"] in {"stop", "length"}
    r = httpx.post(f"{backend.api}/inference/v1/chat/completions",
                   json={"model": "ft:x:ftjob-missing", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["detail"]


def test_validation_file_gives_val_loss(backend, dataset, tiny_model, tmp_path):
    val = write_jsonl(tmp_path / "val.jsonl", arithmetic_rows(16, seed=5))
    train_id, val_id = upload(backend.api, dataset)["id"], upload(backend.api, val)["id"]
    payload = small_payload(str(tiny_model), train_id, n_epochs=2)
    payload["hyperparameters"].update(evaluation_strategy="steps", eval_steps=0)
    payload["metadata"]["effective_config"]["data"] = {"validation_files": [val_id]}
    job = httpx.post(f"{backend.api}/learning/jobs", json=payload).json()
    httpx.post(f"{backend.api}/learning/jobs/{job['id']}/start")
    assert wait_job(backend.api, job["id"])["status"] == "succeeded"
    names = {p["name"] for p in httpx.get(f"{backend.api}/learning/jobs/{job['id']}/metrics").json()["points"]}
    assert "val.loss" in names


def test_cancel_running_job_stops_within_seconds(backend, tiny_model, tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", arithmetic_rows(64, seed=3))
    file_id = upload(backend.api, path)["id"]
    job = httpx.post(f"{backend.api}/learning/jobs",
                     json=small_payload(str(tiny_model), file_id, n_epochs=2000)).json()
    httpx.post(f"{backend.api}/learning/jobs/{job['id']}/start")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events = httpx.get(f"{backend.api}/learning/jobs/{job['id']}/events").json()["events"]
        if any(e["type"] == "sft.progress" for e in events):
            break
        time.sleep(0.2)
    t0 = time.monotonic()
    httpx.post(f"{backend.api}/learning/jobs/{job['id']}/cancel")
    done = wait_job(backend.api, job["id"], timeout=30)
    assert done["status"] == "cancelled" and time.monotonic() - t0 < 15


def test_worker_crash_fails_job_and_next_job_runs(backend, tiny_model, tmp_path):
    import psutil

    path = write_jsonl(tmp_path / "crash.jsonl", arithmetic_rows(64, seed=4))
    file_id = upload(backend.api, path)["id"]
    doomed = httpx.post(f"{backend.api}/learning/jobs", json=small_payload(str(tiny_model), file_id, n_epochs=2000)).json()
    follower = httpx.post(f"{backend.api}/learning/jobs", json=small_payload(str(tiny_model), file_id)).json()
    httpx.post(f"{backend.api}/learning/jobs/{doomed['id']}/start")
    httpx.post(f"{backend.api}/learning/jobs/{follower['id']}/start")
    pid = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and pid is None:
        for child in psutil.Process(backend.proc.pid).children(recursive=True):
            try:
                if doomed["id"] in " ".join(child.cmdline()):
                    pid = child.pid
            except psutil.Error:  # a finished worker that is not reaped yet
                continue
        time.sleep(0.2)
    assert pid, "worker process not found"
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    failed = wait_job(backend.api, doomed["id"], timeout=30)
    assert failed["status"] == "failed" and failed["error"]["code"] == "worker_crashed"
    assert "SIGKILL" in failed["error"]["message"]
    events = httpx.get(f"{backend.api}/learning/jobs/{doomed['id']}/events").json()["events"]
    assert events[-1]["type"] == "workflow.failed"
    assert wait_job(backend.api, follower["id"])["status"] == "succeeded"


def test_restart_keeps_finished_jobs_and_fails_interrupted_ones(tmp_path, tiny_model):
    import psutil

    data = tmp_path / "restart-data"
    first = start_backend(data)
    try:
        path = write_jsonl(tmp_path / "r.jsonl", arithmetic_rows(32, seed=6))
        file_id = upload(first.api, path)["id"]
        finished = httpx.post(f"{first.api}/learning/jobs", json=small_payload(str(tiny_model), file_id)).json()
        httpx.post(f"{first.api}/learning/jobs/{finished['id']}/start")
        done = wait_job(first.api, finished["id"])
        assert done["status"] == "succeeded"
        running = httpx.post(f"{first.api}/learning/jobs",
                             json=small_payload(str(tiny_model), file_id, n_epochs=5000)).json()
        httpx.post(f"{first.api}/learning/jobs/{running['id']}/start")
        deadline = time.monotonic() + 60
        while httpx.get(f"{first.api}/learning/jobs/{running['id']}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        kids = psutil.Process(first.proc.pid).children(recursive=True)
    finally:
        first.stop(signal.SIGKILL)  # the backend and its worker die without cleaning up
    gone, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive
    second = start_backend(data)
    try:
        again = httpx.get(f"{second.api}/learning/jobs/{finished['id']}").json()
        assert again["status"] == "succeeded" and again["fine_tuned_model"] == done["fine_tuned_model"]
        interrupted = httpx.get(f"{second.api}/learning/jobs/{running['id']}").json()
        assert interrupted["status"] == "failed" and interrupted["error"]["code"] == "backend_restarted"
        events = httpx.get(f"{second.api}/learning/jobs/{running['id']}/events").json()["events"]
        assert "restarted" in events[-2]["message"] and events[-1]["type"] == "workflow.failed"
        chat = httpx.post(f"{second.api}/inference/v1/chat/completions", timeout=120, json={
            "model": done["fine_tuned_model"], "messages": [{"role": "user", "content": "1+1=?"}], "max_tokens": 3})
        assert chat.status_code == 200
    finally:
        second.stop()


def test_running_worker_is_adopted_after_a_backend_restart(tmp_path, tiny_model):
    data = tmp_path / "adopt-data"
    first = start_backend(data)
    path = write_jsonl(tmp_path / "a.jsonl", arithmetic_rows(32, seed=7))
    file_id = upload(first.api, path)["id"]
    job = httpx.post(f"{first.api}/learning/jobs", json=small_payload(str(tiny_model), file_id, n_epochs=60)).json()
    httpx.post(f"{first.api}/learning/jobs/{job['id']}/start")
    deadline = time.monotonic() + 60
    while httpx.get(f"{first.api}/learning/jobs/{job['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    from conftest import stop_process_tree

    stop_process_tree(first.proc, signal.SIGKILL, children=False)  # only the HTTP server dies
    second = start_backend(data)
    try:
        done = wait_job(second.api, job["id"], timeout=180)
        assert done["status"] == "succeeded", done
        types = [e["type"] for e in httpx.get(f"{second.api}/learning/jobs/{job['id']}/events",
                                              params={"limit": 1000}).json()["events"]]
        assert "sft.worker.alive" in types
    finally:
        second.stop()


def test_auth_required_when_key_set(tmp_path):
    keyed = start_backend(tmp_path / "keyed", extra_args=["--api-key", "s3cret-key"])
    try:
        assert httpx.get(f"{keyed.api}/health").status_code == 200
        r = httpx.get(f"{keyed.api}/learning/jobs")
        assert r.status_code == 401 and r.json()["detail"] == "Invalid API key"
        ok = httpx.get(f"{keyed.api}/learning/jobs", headers={"Authorization": "Bearer s3cret-key"})
        assert ok.status_code == 200
    finally:
        keyed.stop()
