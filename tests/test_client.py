"""``LearningClient`` over real sockets: against the embedded backend directly and behind the fault proxy.

What is pinned here: base-URL normalisation (never ``/api/api``), the upload path fallback
(``/learning/files`` → ``/files`` on 404/405), ``wait_for_file`` semantics, retries (5xx, 429 with
``Retry-After``, dropped connections) and their limits, the ``Idempotency-Key`` on job creation (a create whose
answer is lost after the backend made the job is retried and still yields one job), the shape of
``LearningAPIError`` and the status aliases.

The ``proxy`` fixture (conftest) is a ``fault_proxy.ScriptedProxy`` in front of the session backend.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from conftest import arithmetic_rows, free_port, wait_file_ready, write_jsonl
from fault_proxy import ScriptedProxy
from learning_mcp.tools.client import (FILE_READY, STATUS_ALIASES, LearningAPIError, LearningClient, RetryPolicy,
                                       job_id_of, normalize_status)
from learning_mcp.tools.settings import Target, ensure_api_base, resolve_target

FAST_RETRY = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("client-ds") / "train.jsonl", arithmetic_rows(24, seed=3))


def client_for(url: str, *, key: str | None = None, retry: RetryPolicy | None = FAST_RETRY) -> LearningClient:
    return LearningClient(Target(ensure_api_base(url), "custom", key), retry=retry)


def paths(proxy: ScriptedProxy) -> list[tuple[str, str, str]]:
    return [(m, p.split("?")[0], outcome) for m, p, outcome in proxy.log]


# ------------------------------------------------------------------------------------------------------
# base URLs
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("given, expected", [
    ("http://127.0.0.1:9", "http://127.0.0.1:9/api"),
    ("http://127.0.0.1:9/", "http://127.0.0.1:9/api"),
    ("http://127.0.0.1:9/api", "http://127.0.0.1:9/api"),
    ("http://127.0.0.1:9/api/", "http://127.0.0.1:9/api"),
    ("  https://api.usesynth.ai//  ", "https://api.usesynth.ai/api"),
    ("https://host/prefix", "https://host/prefix/api"),
])
def test_ensure_api_base(given, expected):
    assert ensure_api_base(given) == expected
    assert ensure_api_base(ensure_api_base(given)) == expected  # idempotent: never /api/api
    assert resolve_target(backend_url=given, env={}).api_base == expected


@pytest.mark.anyio
@pytest.mark.parametrize("suffix", ["", "/", "/api", "/api/"])
async def test_requests_never_go_to_api_api(proxy, anyio_backend, suffix):
    async with client_for(proxy.url + suffix) as api:
        assert (await api.health())["status"] == "ok"
        await api._json("GET", "/api/health", retry=False)   # a caller that spells the prefix out
        await api._json("GET", "api/learning/jobs", retry=False)
        await api.list_jobs(limit=1)
    seen = [p for _, p, _ in paths(proxy)]
    assert seen == ["/api/health", "/api/health", "/api/learning/jobs", "/api/learning/jobs"]
    assert not any("/api/api" in p for p in seen)


# ------------------------------------------------------------------------------------------------------
# uploads and files
# ------------------------------------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("status", [404, 405])
async def test_upload_falls_back_to_files_route(proxy, dataset, anyio_backend, status):
    proxy.add("POST", "/api/learning/files", "status", status=status, times=10)
    seen_progress: list[tuple[int, int]] = []

    async def on_progress(done: int, total: int) -> None:
        seen_progress.append((done, total))

    async with client_for(proxy.url) as api:
        record = await api.upload_file(dataset, on_progress=on_progress)
    assert record["id"].startswith("file-") and record["bytes"] == dataset.stat().st_size
    assert paths(proxy) == [("POST", "/api/learning/files", str(status)), ("POST", "/api/files", "forward")]
    size = dataset.stat().st_size
    assert seen_progress[-1] == (size, size)
    assert all(total == size for _, total in seen_progress)


@pytest.mark.anyio
async def test_upload_error_other_than_404_is_not_masked(proxy, dataset, anyio_backend):
    proxy.add("POST", "/api/learning/files", "status", status=413, times=10)
    async with client_for(proxy.url) as api:
        with pytest.raises(LearningAPIError) as err:
            await api.upload_file(dataset)
    assert err.value.status == 413 and err.value.path == "/learning/files"
    assert [p for _, p, _ in paths(proxy)] == ["/api/learning/files"]  # no fallback, no retry on a 4xx


@pytest.mark.anyio
async def test_upload_retried_after_a_dropped_connection(proxy, dataset, anyio_backend):
    proxy.add("POST", "/api/learning/files", "drop", times=1)
    proxy.add("POST", "/api/learning/files", "status", status=503, times=1)
    async with client_for(proxy.url) as api:
        record = await api.upload_file(dataset)
    assert record["sha256"] and record["bytes"] == dataset.stat().st_size
    assert [o for _, _, o in paths(proxy)] == ["drop", "503", "forward"]
    # the retried body was complete (the reader is rebuilt per attempt): same content-addressed id as a direct upload
    direct = httpx.post(f"http://127.0.0.1:{proxy.upstream_port}/api/files",
                        files={"file": (dataset.name, dataset.read_bytes())}, data={"purpose": "fine-tune"}).json()
    assert direct["id"] == record["id"]


@pytest.mark.anyio
async def test_wait_for_file_ready_error_and_unknown(backend, tmp_path, dataset, anyio_backend):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    async with client_for(backend.url) as api:
        good = await api.upload_file(dataset)
        ready = await api.wait_for_file(good["id"], timeout_s=20, interval_s=0.1)
        assert ready["status"] in FILE_READY and ready["status"] == "ready" and ready["examples"] == 24

        rejected = await api.wait_for_file((await api.upload_file(bad))["id"], timeout_s=20, interval_s=0.1)
        assert rejected["status"] == "error" and rejected["status_details"]

        t0 = time.monotonic()
        unknown = await api.wait_for_file("file-doesnotexist", timeout_s=0.6, interval_s=0.1)
        elapsed = time.monotonic() - t0
    # a 404 is not fatal (a just-uploaded file may not be visible yet): it polls until the deadline, then
    # returns what it knows instead of raising
    assert unknown == {"id": "file-doesnotexist", "status": "unknown"}
    assert 0.5 <= elapsed < 5


@pytest.mark.anyio
async def test_wait_for_file_raises_on_auth_errors(proxy, dataset, anyio_backend):
    async with client_for(proxy.url) as api:
        file_id = (await api.upload_file(dataset))["id"]
        proxy.add("GET", "/api/learning/files/", "status", status=401, times=10)
        t0 = time.monotonic()
        with pytest.raises(LearningAPIError) as err:
            await api.wait_for_file(file_id, timeout_s=30, interval_s=0.1)
    assert err.value.status == 401 and time.monotonic() - t0 < 5  # at once, not after the timeout


@pytest.mark.anyio
async def test_get_file_falls_back_to_files_route(proxy, dataset, anyio_backend):
    async with client_for(proxy.url) as api:
        file_id = (await api.upload_file(dataset))["id"]
        wait_file_ready(f"http://127.0.0.1:{proxy.upstream_port}/api", file_id)
        proxy.add("GET", "/api/learning/files/", "status", status=404, times=1)
        record = await api.wait_for_file(file_id, timeout_s=5, interval_s=0.1)
    assert record["status"] == "ready"
    assert paths(proxy)[-2:] == [("GET", f"/api/learning/files/{file_id}", "404"),
                                 ("GET", f"/api/files/{file_id}", "forward")]


# ------------------------------------------------------------------------------------------------------
# jobs: idempotent create
# ------------------------------------------------------------------------------------------------------
def small_payload(model: str, file_id: str) -> dict:
    return {"model": model, "training_type": "sft_offline", "training_file_id": file_id,
            "hyperparameters": {"n_epochs": 1, "per_device_batch": 8, "learning_rate": 5e-3}}


@pytest.mark.anyio
async def test_create_carries_an_idempotency_key(proxy, dataset, tiny_model, anyio_backend):
    async with client_for(proxy.url) as api:
        file_id = (await api.upload_file(dataset))["id"]
        first = await api.create_job(small_payload(str(tiny_model), file_id))
        second = await api.create_job(small_payload(str(tiny_model), file_id))
        for job in (first, second):
            await api.cancel_job(job_id_of(job))
    keys = [h.get("idempotency-key") for m, p, h in proxy.requests if m == "POST" and p == "/api/learning/jobs"]
    assert len(keys) == 2 and all(keys) and keys[0] != keys[1]  # a fresh key per create: two jobs
    assert job_id_of(first) != job_id_of(second)


@pytest.mark.anyio
async def test_create_retried_after_a_lost_answer_yields_one_job(proxy, dataset, tiny_model, anyio_backend):
    async with client_for(proxy.url) as api:
        file_id = (await api.upload_file(dataset))["id"]
        before = {job_id_of(j) for j in await api.list_jobs(limit=200)}
        proxy.add("POST", "/api/learning/jobs", "forward_then_drop", times=1)
        job = await api.create_job(small_payload(str(tiny_model), file_id), idempotency_key="test-key-lost-answer")
        after = {job_id_of(j) for j in await api.list_jobs(limit=200)}
        again = await api.create_job(small_payload(str(tiny_model), file_id), idempotency_key="test-key-lost-answer")
        await api.cancel_job(job_id_of(job))
    outcomes = [o for m, p, o in proxy.log if m == "POST" and p == "/api/learning/jobs"]
    keys = [h.get("idempotency-key") for m, p, h in proxy.requests if m == "POST" and p == "/api/learning/jobs"]
    assert outcomes == ["forward_then_drop", "forward", "forward"]
    assert keys == ["test-key-lost-answer"] * 3  # the retry (and the second call) reused the key
    # the backend did create a job on the first attempt; the retry got that same job back
    lost = json.loads(proxy.dropped_answers[0].split(b"\r\n\r\n", 1)[1])
    assert job_id_of(lost) == job_id_of(job)
    assert after - before == {job_id_of(job)}  # exactly one new job
    assert job_id_of(again) == job_id_of(job)


# ------------------------------------------------------------------------------------------------------
# retries and error objects
# ------------------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_5xx_then_success(proxy, anyio_backend):
    proxy.add("GET", "/api/learning/jobs", "status", status=503, times=2)
    async with client_for(proxy.url) as api:
        jobs = await api.list_jobs()
    assert isinstance(jobs, list)
    assert [o for _, _, o in paths(proxy)] == ["503", "503", "forward"]


@pytest.mark.anyio
async def test_429_waits_for_retry_after(proxy, anyio_backend):
    proxy.add("GET", "/api/health", "status", status=429, retry_after=1.2, times=1)
    async with client_for(proxy.url) as api:
        t0 = time.monotonic()
        body = await api._json("GET", "health", retry=True)
        elapsed = time.monotonic() - t0
    assert body["status"] == "ok"
    assert 1.1 <= elapsed < 4, elapsed  # waited ≈ Retry-After, not the (tiny) backoff


@pytest.mark.anyio
async def test_retry_after_is_capped(proxy, anyio_backend):
    proxy.add("GET", "/api/health", "status", status=429, retry_after=3600, times=1)
    async with client_for(proxy.url, retry=RetryPolicy(attempts=2, max_retry_after_s=0.3)) as api:
        t0 = time.monotonic()
        await api._json("GET", "health", retry=True)
    assert time.monotonic() - t0 < 3


@pytest.mark.anyio
async def test_dropped_connection_then_success(proxy, anyio_backend):
    proxy.add("GET", "/api/learning/jobs", "drop", times=2)
    async with client_for(proxy.url) as api:
        await api.list_jobs()
    assert [o for _, _, o in paths(proxy)] == ["drop", "drop", "forward"]


@pytest.mark.anyio
async def test_persistent_5xx_gives_up_with_the_last_error(proxy, anyio_backend):
    proxy.add("GET", "/api/learning/jobs/ftjob-x", "status", status=500, times=100)
    async with client_for(proxy.url, retry=RetryPolicy(attempts=3, base_delay_s=0.01)) as api:
        with pytest.raises(LearningAPIError) as err:
            await api.get_job("ftjob-x")
    e = err.value
    assert (e.status, e.method, e.path, e.detail, e.code) == (500, "GET", "/learning/jobs/ftjob-x", "injected 500",
                                                              "http_500")
    assert len(proxy.log) == 3
    assert str(e) == "GET /learning/jobs/ftjob-x -> HTTP 500: injected 500"


@pytest.mark.anyio
async def test_4xx_is_not_retried_and_keeps_detail_code_param(backend, dataset, tiny_model, anyio_backend):
    async with client_for(backend.url) as api:
        with pytest.raises(LearningAPIError) as err:
            await api.get_job("ftjob-nope")
        assert err.value.status == 404 and err.value.path == "/learning/jobs/ftjob-nope"
        assert "not found" in err.value.detail and not err.value.unreachable

        file_id = (await api.upload_file(dataset))["id"]
        payload = small_payload(str(tiny_model), file_id)
        payload["hyperparameters"]["learning_rate"] = 0
        with pytest.raises(LearningAPIError) as err:
            await api.create_job(payload)
    e = err.value
    assert e.status == 400 and e.method == "POST" and e.path == "/learning/jobs"
    assert e.param == "hyperparameters.learning_rate"
    assert "hyperparameters.learning_rate must be greater than zero" in e.detail


@pytest.mark.anyio
async def test_unreachable_error(anyio_backend):
    url = f"http://127.0.0.1:{free_port()}"
    async with client_for(url, retry=RetryPolicy(attempts=2, base_delay_s=0.01)) as api:
        t0 = time.monotonic()
        with pytest.raises(LearningAPIError) as err:
            await api.list_jobs()
    e = err.value
    assert e.unreachable and e.status is None and e.code == "unreachable" and e.path == "/learning/jobs"
    assert url in e.detail and "cannot reach the learning API" in e.detail
    assert time.monotonic() - t0 < 3


@pytest.mark.anyio
async def test_error_details_never_carry_the_key(proxy, anyio_backend):
    key = "sk-test-SECRET123"
    proxy.add("GET", "/api/learning/jobs", "echo_auth", status=401, times=1)
    proxy.add("GET", "/api/health", "echo_auth", status=500, times=100)
    async with client_for(proxy.url, key=key) as api:
        with pytest.raises(LearningAPIError) as auth_err:
            await api.list_jobs()
        with pytest.raises(LearningAPIError) as server_err:
            await api._json("GET", "health", retry=True)
    assert proxy.requests[0][2]["authorization"] == f"Bearer {key}"  # the key was sent, and echoed back
    for e in (auth_err.value, server_err.value):
        assert "Bearer ***" in e.detail
        assert key not in e.detail and key not in str(e) and key not in repr(e)
    assert key not in repr(api.target)


@pytest.mark.anyio
@pytest.mark.parametrize("cut_at", [3, 9, 15])
async def test_no_part_of_the_key_survives_detail_truncation(proxy, anyio_backend, cut_at):
    """Details are capped at 1000 characters: a key cut in two by the cap must not leak its first part."""
    key = "sk-test-SECRET123"
    proxy.echo_padding = 1000 - len("rejected credentials Bearer ") - cut_at  # the cap falls inside the key
    proxy.add("GET", "/api/learning/jobs", "echo_auth", status=401, times=1)
    async with client_for(proxy.url, key=key) as api:
        with pytest.raises(LearningAPIError) as err:
            await api.list_jobs()
    assert len(err.value.detail) <= 1000
    assert key[:cut_at] not in err.value.detail and "Bearer ***" in err.value.detail


@pytest.mark.parametrize("raw, expected", [
    ("canceled", "cancelled"), ("CANCELED", "cancelled"), ("completed", "succeeded"), ("error", "failed"),
    ("Running", "running"), ("queued", "queued"), ("validating_files", "validating_files"), (None, ""), ("", ""),
])
def test_normalize_status(raw, expected):
    assert normalize_status(raw) == expected


def test_status_aliases_only_map_to_terminal_states():
    assert set(STATUS_ALIASES.values()) <= {"succeeded", "failed", "cancelled"}


@pytest.mark.anyio
async def test_job_records_are_normalised(backend, dataset, tiny_model, anyio_backend):
    async with client_for(backend.url) as api:
        file_id = (await api.upload_file(dataset))["id"]
        job = await api.create_job(small_payload(str(tiny_model), file_id))
        cancelled = await api.cancel_job(job_id_of(job))
        record = await api.get_job(job_id_of(job))
        listed = {job_id_of(j): j for j in await api.list_jobs(limit=200)}
    assert cancelled["status"] == "cancelled" == record["status"]
    assert listed[job_id_of(job)]["status"] == "cancelled"
