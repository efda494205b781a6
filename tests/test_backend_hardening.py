"""Issue 10, backend side: limits enforced while the body streams, start-up sweeps and expiry, information
exposure, abandoned generations stopped, checkpoints and resume — each against a real backend over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import arithmetic_rows, free_port, start_backend, wait_file_ready, wait_job, write_jsonl

MB = 1024 * 1024


def _upload(api: str, path: Path, headers: dict | None = None) -> str:
    with open(path, "rb") as fh:
        r = httpx.post(f"{api}/learning/files", files={"file": (path.name, fh, "application/jsonl")},
                       data={"purpose": "fine-tune"}, timeout=30, headers=headers)
    assert r.status_code == 200, r.text
    file_id = r.json()["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"{api}/learning/files/{file_id}", headers=headers).json()["status"] != "processing":
            return file_id
        time.sleep(0.1)
    raise AssertionError("file stayed processing")


def _first_event(api: str, job_id: str, type_: str, timeout: float = 180) -> dict:
    """The job's first event of ``type_``, polled every 0.1 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = httpx.get(f"{api}/learning/jobs/{job_id}/events", params={"limit": 1000}).json()["events"]
        found = next((e for e in events if e["type"] == type_), None)
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}: no {type_} event within {timeout:.0f} s")


def _payload(model: str, file_id: str, **hp) -> dict:
    return {"model": model, "training_type": "sft_offline", "training_file_id": file_id,
            "hyperparameters": {"n_epochs": 1, "per_device_batch": 8, "learning_rate": 5e-3, **hp},
            "metadata": {"effective_config": {"compute": {"gpu_type": "cpu", "gpu_count": 1}}}}


# -- 1. limits while streaming ---------------------------------------------------------------------------------


class SpoolWatcher:
    """Peak bytes held in files the backend process has open under ``dirs`` (its upload spool: Python's unnamed
    temporary files in TMPDIR, and ``files/.incoming``), sampled from /proc/<pid>/fd every few milliseconds."""

    def __init__(self, pid: int, dirs: list[Path]):
        self.pid, self.dirs = pid, [str(d.resolve()) for d in dirs]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        fd_dir = f"/proc/{self.pid}/fd"
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
                if any(target.startswith(d) for d in self.dirs):
                    total += os.stat(f"{fd_dir}/{fd}").st_size
            except OSError:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _raw_post(port: int, path: str, headers: dict[str, str], chunks, *, chunked: bool) -> tuple[int, dict, int]:
    """POST over a raw socket, writing ``chunks`` from a thread while the answer is read: (status, body, bytes
    the client managed to send before the server answered and closed)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
    sock.sendall((head + "\r\n").encode())
    sent = [0]

    def writer():
        try:
            for chunk in chunks:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent[0] += len(chunk)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    finally:
        sock.close()
        thread.join(timeout=30)
    status = int(data.split(b" ", 2)[1])
    body = data.split(b"\r\n\r\n", 1)[1]
    return status, json.loads(body[:_length(data)] or b"{}"), sent[0]


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _multipart(total: int, boundary: str = "limitboundary"):
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
           "Content-Type: application/jsonl\r\n\r\n").encode()
    line = b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n'
    block = line * (MB // len(line))
    sent = 0
    while sent < total:
        yield block
        sent += len(block)
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.fixture
def limited(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    running = start_backend(tmp_path / "data", env={"LEARNING_MCP_MAX_UPLOAD_BYTES": str(10 * MB), "TMPDIR": str(spool),
                                                    "LEARNING_MCP_MAX_REQUEST_BYTES": str(1 * MB)})
    running.spool = spool
    yield running
    running.stop()


def test_streamed_upload_over_the_limit_is_refused_before_the_disk_fills(limited):
    """200 MB chunked (no Content-Length) against a 10 MB limit: 413, and at most limit + one chunk spooled."""
    headers = {"Content-Type": "multipart/form-data; boundary=limitboundary"}
    with SpoolWatcher(limited.proc.pid, [limited.spool, limited.data_dir / "files" / ".incoming"]) as watch:
        status, body, sent = _raw_post(limited.port, "/api/learning/files", headers, _multipart(200 * MB),
                                       chunked=True)
    print(f"over-limit upload: peak bytes on disk {watch.peak}, client sent {sent} of 200 MB")
    assert status == 413 and body["error"]["code"] == "file_too_large", body
    assert "10485760 bytes" in body["detail"] and "LEARNING_MCP_MAX_UPLOAD_BYTES" in body["detail"]
    assert watch.peak <= 10 * MB + 2 * MB, f"{watch.peak} bytes written for a 10 MB limit"
    assert sent < 100 * MB  # the server stopped reading long before the end
    assert list((limited.data_dir / "files" / ".incoming").iterdir()) == []
    assert httpx.get(f"{limited.api}/files").json()["files"] == []


def test_content_length_over_the_limit_is_refused_unread(limited):
    headers = {"Content-Type": "multipart/form-data; boundary=limitboundary", "Content-Length": str(200 * MB)}
    started = time.monotonic()
    status, body, _ = _raw_post(limited.port, "/api/files", headers, iter([b"x" * 1024]), chunked=False)
    assert status == 413 and body["error"]["code"] == "file_too_large"
    assert str(200 * MB) in body["detail"] and time.monotonic() - started < 5


def test_json_bodies_have_a_size_limit_checked_before_parsing(limited, tiny_model):
    big = {"model": str(tiny_model), "training_type": "sft_offline", "training_file_id": "file-x",
           "metadata": {"blob": "x" * (2 * MB)}}
    r = httpx.post(f"{limited.api}/learning/jobs", json=big, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert "LEARNING_MCP_MAX_REQUEST_BYTES" in r.json()["detail"]
    # no Content-Length (chunked): counted while it streams
    status, body, _ = _raw_post(limited.port, "/api/learning/jobs", {"Content-Type": "application/json"},
                                iter([json.dumps(big).encode()[i:i + 65536] for i in range(0, 2 * MB + 200, 65536)]),
                                chunked=True)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert httpx.get(f"{limited.api}/learning/jobs").json()["jobs"] == []
    small = httpx.post(f"{limited.api}/learning/jobs", json={**big, "metadata": {}})
    assert small.status_code == 400 and small.json()["error"]["param"] == "training_file_id"  # parsed as usual


def test_an_oversized_prompt_is_refused_before_tokenising(backend, tiny_model):
    prompt = "7+8=? " * 200_000  # 1.2 MB; the tiny model's context is 1024 tokens
    r = httpx.post(f"{backend.url}/v1/chat/completions", timeout=60,
                   json={"model": str(tiny_model), "messages": [{"role": "user", "content": prompt}], "max_tokens": 1})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded" and "characters" in r.json()["detail"]


# -- 2. sweeps at start-up, expiry of jobs never started ---------------------------------------------------------


def test_start_up_sweeps_leftovers_and_unstarted_jobs_expire(tmp_path, tiny_model):
    data = tmp_path / "data"
    (data / "files" / ".incoming").mkdir(parents=True)
    (data / "models" / ".ftjob-gone0000000000000000.partial-1a2b3c4d").mkdir(parents=True)
    (data / "files" / ".incoming" / "abc.part").write_bytes(b"x" * 1000)
    running = start_backend(data, env={"LEARNING_MCP_JOB_START_EXPIRY_S": "2"})
    try:
        assert list((data / "files" / ".incoming").iterdir()) == []
        assert not list((data / "models").glob(".*.partial-*"))
        file_id = _upload(running.api, write_jsonl(tmp_path / "t.jsonl", arithmetic_rows(8)))
        job = httpx.post(f"{running.api}/learning/jobs", json=_payload(str(tiny_model), file_id)).json()
        done = wait_job(running.api, job["id"], timeout=30)
        assert done["status"] == "cancelled" and done["error"]["code"] == "job_expired", done
        events = httpx.get(f"{running.api}/learning/jobs/{job['id']}/events").json()["events"]
        assert [e["type"] for e in events][-3:] == ["sft.expired", "sft.job.cancelled", "workflow.cancelled"]
    finally:
        running.stop()


# -- 3. information exposure -------------------------------------------------------------------------------------


def test_health_says_only_ok_without_the_key(tmp_path):
    running = start_backend(tmp_path / "data", env={"LEARNING_MCP_BACKEND_KEY": "sekret-key"})
    try:
        assert httpx.get(f"{running.api}/health").json() == {"status": "ok"}
        assert httpx.get(f"{running.api}/health", headers={"Authorization": "Bearer wrong"}).json() == {"status": "ok"}
        full = httpx.get(f"{running.api}/health", headers={"Authorization": "Bearer sekret-key"}).json()
        assert full["status"] == "ok" and Path(full["data_dir"]) == (tmp_path / "data").resolve()
    finally:
        running.stop()


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing interface
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_model_paths_outside_the_roots_are_not_probed_for_untrusted_callers(tmp_path, tiny_model):
    """A caller that is neither on loopback nor holding a key cannot learn whether a host path exists; the data
    dir and LEARNING_MCP_MODEL_ROOTS stay usable. Served by uvicorn on 0.0.0.0, called via a non-loopback address."""
    import uvicorn

    from learning_mcp.backend.app import create_app
    from learning_mcp.tools.settings import Settings

    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    roots = tmp_path / "roots"
    shutil.copytree(tiny_model, roots / "tiny")
    app = create_app(tmp_path / "data", settings=Settings(model_roots=str(roots)), run_scheduler=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="0.0.0.0", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        api = f"http://{address}:{port}/api"
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        file_id = _upload(api, write_jsonl(tmp_path / "t.jsonl", arithmetic_rows(8)))
        answers = {}
        for model in ("/etc", str(tiny_model), "/does/not/exist"):
            r = httpx.post(f"{api}/learning/jobs", json=_payload(model, file_id))
            assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_loadable", r.text
            answers[model] = r.json()["detail"].replace(repr(model), "MODEL")
        assert len(set(answers.values())) == 1, answers  # existing and missing paths read the same
        assert "LEARNING_MCP_MODEL_ROOTS" in answers["/etc"]
        ok = httpx.post(f"{api}/learning/jobs", json=_payload(str(roots / "tiny"), file_id))
        assert ok.status_code == 200, ok.text
        chat = httpx.post(f"http://{address}:{port}/v1/chat/completions",
                          json={"model": "/etc", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 400 and chat.json()["error"]["code"] == "model_not_loadable"
        # the same request from loopback (trusted without a configured key) is checked as before
        local = httpx.post(f"http://127.0.0.1:{port}/api/learning/jobs", json=_payload("/etc", file_id))
        assert local.status_code == 400 and "config.json" in local.json()["detail"]
    finally:
        server.should_exit = True
        thread.join(timeout=15)


# -- 4. work nobody waits for is stopped -------------------------------------------------------------------------


def test_an_abandoned_generation_is_stopped_and_the_next_request_answers_quickly(tmp_path, tiny_model):
    running = start_backend(tmp_path / "data")
    try:
        url = f"{running.url}/v1/chat/completions"
        one = {"model": str(tiny_model), "messages": [{"role": "user", "content": "1+1=?"}], "max_tokens": 1,
               "temperature": 0}
        assert httpx.post(url, json=one, timeout=120).status_code == 200  # model loaded
        long = {"model": str(tiny_model), "messages": [{"role": "user", "content": "2+2=?"}], "max_tokens": 1000,
                "n": 64, "temperature": 1.0, "seed": 1}
        with pytest.raises(httpx.TimeoutException):
            httpx.post(url, json=long, timeout=1.5)  # the client gives up and disconnects
        started = time.monotonic()
        r = httpx.post(url, json=one, timeout=120)
        quick = time.monotonic() - started
        assert r.status_code == 200
        stats = httpx.get(f"{running.api}/health").json()["inference"]
        print(f"1-token request behind an abandoned one: {quick:.2f} s; stats {stats}")
        assert stats["abandoned_requests"] >= 1 and stats["queued"] == 0
        assert stats["decode_steps"] < 1000, stats  # the 1000-token batch was cut short
        assert quick < 10, f"the 1-token request waited {quick:.1f} s"
    finally:
        running.stop()


# -- 6. checkpoints and resume -----------------------------------------------------------------------------------


def test_a_worker_killed_mid_job_resumes_from_its_last_checkpoint(tmp_path, tiny_model):
    running = start_backend(tmp_path / "data")
    try:
        file_id = _upload(running.api, write_jsonl(tmp_path / "t.jsonl", arithmetic_rows(64, seed=5)))
        job = httpx.post(f"{running.api}/learning/jobs",
                         json=_payload(str(tiny_model), file_id, max_steps=40, per_device_batch=4, save_steps=5,
                                       save_total_limit=2)).json()
        assert job["hyperparameters"]["save_steps"] == 5
        httpx.post(f"{running.api}/learning/jobs/{job['id']}/start")
        events_url = f"{running.api}/learning/jobs/{job['id']}/events"
        saved = _first_event(running.api, job["id"], "sft.checkpoint.saved")["data"]["step"]
        pid = _first_event(running.api, job["id"], "sft.running")["data"]["pid"]
        os.kill(pid, 9)
        done = wait_job(running.api, job["id"], timeout=300)
        events = httpx.get(events_url, params={"limit": 1000}).json()["events"]
        types = [e["type"] for e in events]
        assert done["status"] == "succeeded", (done, types)
        resuming = next(e for e in events if e["type"] == "sft.resuming")
        resumed = next(e for e in events if e["type"] == "sft.resumed")
        assert resumed["data"]["step"] >= saved and resuming["data"]["step"] == resumed["data"]["step"]
        assert "killed by SIGKILL" in resuming["message"]
        print(f"killed after checkpoint step {saved}; resumed at step {resumed['data']['step']}")
        assert not (running.data_dir / "models" / ".checkpoints" / job["id"]).exists()  # removed when it ended
        assert not list((running.data_dir / "models").glob(".*.partial-*"))
    finally:
        running.stop()


# -- 5. provenance of a fine-tuned model's base ------------------------------------------------------------------


def test_a_lora_whose_base_path_is_gone_loads_by_its_recorded_hub_id(tmp_path):
    from learning_mcp.backend.modelref import ResolvedModel, base_provenance, resolve_model, write_manifest

    snapshot = tmp_path / "cache-a" / "hub" / "models--acme--tiny-base" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    provenance = base_provenance(str(snapshot), ResolvedModel(id=str(snapshot), kind="base", path=str(snapshot),
                                                              base_model=None, tokenizer_path=str(snapshot)))
    assert provenance == {"base_model_path": str(snapshot), "base_model_hub_id": "acme/tiny-base"}
    adapter = tmp_path / "models" / "ftjob-aaaaaaaaaaaaaaaaaaaa"
    adapter.mkdir(parents=True)
    write_manifest(adapter, {"id": "ft:x:ftjob-aaaaaaaaaaaaaaaaaaaa", "kind": "lora", "base_model": str(snapshot),
                             **provenance})
    assert resolve_model(str(adapter), tmp_path / "models").base_model == str(snapshot)  # found where recorded
    shutil.rmtree(tmp_path / "cache-a")  # another machine / another HF cache
    assert resolve_model(str(adapter), tmp_path / "models").base_model == "acme/tiny-base"


def test_offline_is_detected_once_with_one_quick_probe(tmp_path):
    """HF_HUB_OFFLINE unset and no network (the endpoint refuses): one probe, then the process is offline."""
    import subprocess
    import sys

    code = ("import os, time\n"
            "from learning_mcp.backend import modelref\n"
            "t = time.monotonic(); first = modelref.hub_offline(); took = time.monotonic() - t\n"
            "t = time.monotonic(); again = modelref.hub_offline(); took2 = time.monotonic() - t\n"
            "import huggingface_hub.constants as c\n"
            "print(first, again, os.environ.get('HF_HUB_OFFLINE'), c.HF_HUB_OFFLINE, round(took, 2), round(took2, 4))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    first, again, env_value, constant, took, took2 = out.stdout.split()
    assert (first, again, env_value, constant) == ("True", "True", "1", "True"), out.stderr
    assert float(took) < 3 and float(took2) < 0.01
    assert out.stderr.count("running offline") == 1


def test_stop_waits_for_the_backend_to_exit_and_a_cancelled_job_leaves_no_partial(tmp_path, tiny_model):
    import subprocess
    import sys

    running = start_backend(tmp_path / "data")
    try:
        file_id = _upload(running.api, write_jsonl(tmp_path / "t.jsonl", arithmetic_rows(64, seed=7)))
        job = httpx.post(f"{running.api}/learning/jobs", json=_payload(str(tiny_model), file_id, n_epochs=2000)).json()
        httpx.post(f"{running.api}/learning/jobs/{job['id']}/start")
        _first_event(running.api, job["id"], "sft.progress")
        httpx.post(f"{running.api}/learning/jobs/{job['id']}/cancel")
        assert wait_job(running.api, job["id"], timeout=60)["status"] == "cancelled"
        deadline = time.monotonic() + 10
        while list((running.data_dir / "models").glob(".*.partial-*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not list((running.data_dir / "models").glob(".*.partial-*"))
        assert not (running.data_dir / "models" / job["id"]).exists()
        stop = subprocess.run([sys.executable, "-m", "learning_mcp", "backend", "--stop", "--data-dir",
                               str(running.data_dir)], capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0 and "stopped the backend" in stop.stderr, stop.stderr
        assert running.proc.poll() is not None  # it has exited by the time --stop returns
    finally:
        if running.proc.poll() is None:
            running.stop()
