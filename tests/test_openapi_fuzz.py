"""Schemathesis against the backend's published OpenAPI spec: no request, however odd, gets a 500.

A real backend (``learning-mcp backend``) is started on loopback and every operation of its ``/openapi.json`` is
fuzzed over HTTP — positive and negative data, ~25 examples per operation, derandomized so a run is repeatable;
operations with a ``{file_id}``/``{job_id}`` are tried again with real ids, so they get past the 404. Plain
Hypothesis closes what Schemathesis cannot reach: job-create and chat bodies with any JSON in any slot (the spec
declares their request schemas — the SFT contract's ``SFTJobPayload`` and ``ChatCompletionRequest`` — which
Schemathesis fuzzes too, but only within and just outside the schema), raw and malformed multipart uploads, and
integer query parameters past 2**63 (SQLite's integer range; 25 Schemathesis examples never draw that far).

A failure names the operation and the request, and carries the traceback the backend logged (its whole log is
``<data dir>/test-backend.log``).
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from conftest import RunningBackend, start_backend

MAX_EXAMPLES = 25
FUZZ_SETTINGS = settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
                         suppress_health_check=list(HealthCheck), print_blob=False)


@pytest.fixture(scope="module")
def fuzz_backend(tmp_path_factory) -> RunningBackend:
    running = start_backend(tmp_path_factory.mktemp("fuzz-backend"))
    yield running
    running.stop()


def published_spec() -> dict:
    """The OpenAPI document the backend serves at ``/openapi.json`` (built from the app, no server needed).

    Schemathesis's lazy ``from_fixture`` loader (which could read it from the live backend) is broken under
    pytest 9 (``request.node._nodeid``), so the spec is built at collection time and
    :func:`test_the_fuzzed_spec_is_the_served_one` proves it is the one the live backend publishes.
    """
    import tempfile

    from learning_mcp.backend.app import create_app

    with tempfile.TemporaryDirectory(prefix="learning-mcp-openapi-") as data_dir:
        return create_app(data_dir, run_scheduler=False).openapi()


SPEC = published_spec()
schema = schemathesis.openapi.from_dict(SPEC)
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True, modes=list(schemathesis.GenerationMode))


def backend_tracebacks(backend: RunningBackend, since: int) -> str:
    """The first traceback the backend logged since offset ``since`` (what a failing request raised)."""
    lines = (backend.data_dir / "test-backend.log").read_text(errors="replace")[since:].splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Traceback")), None)
    if start is None:
        return "(no traceback logged)"
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()), len(lines) - 1)
    return "\n".join(lines[max(0, start - 1):end + 1])[-5000:]


def log_size(backend: RunningBackend) -> int:
    return len((backend.data_dir / "test-backend.log").read_text(errors="replace"))


@pytest.fixture(scope="module")
def known_ids(fuzz_backend, tiny_model) -> dict:
    """A real file and a real (queued, never started) job, so path parameters also reach past the 404s."""
    body = b'{"messages": [{"role": "user", "content": "2+2=?"}, {"role": "assistant", "content": "4"}]}\n'
    file = httpx.post(f"{fuzz_backend.api}/files", files={"file": ("known.jsonl", body)}, timeout=30).json()
    job = httpx.post(f"{fuzz_backend.api}/learning/jobs", timeout=60, json={
        "model": str(tiny_model), "training_file_id": file["id"], "hyperparameters": {"n_epochs": 1}}).json()
    yield {"file_id": file["id"], "job_id": job["id"]}
    httpx.post(f"{fuzz_backend.api}/learning/jobs/{job['id']}/cancel", timeout=30)


# Real ids are not substituted where that would destroy them or start training.
KEEP_RANDOM_IDS = {"DELETE /api/files/{file_id}", "DELETE /api/learning/files/{file_id}",
                   "POST /api/learning/jobs/{job_id}/start"}


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_operation_answers_500(case, fuzz_backend, known_ids):
    """Every operation, as generated and — for ``{file_id}``/``{job_id}`` paths — again with a real id."""
    def call() -> None:
        before = log_size(fuzz_backend)
        try:
            case.call_and_validate(base_url=fuzz_backend.url, checks=[not_a_server_error], timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- backend log ---\n{backend_tracebacks(fuzz_backend, before)}") from None

    call()
    params = case.path_parameters or {}
    real = {name: known_ids[name] for name in params if name in known_ids}
    if real and f"{case.method.upper()} {case.operation.path}" not in KEEP_RANDOM_IDS:
        case.path_parameters = {**params, **real}
        call()


def test_the_fuzzed_spec_is_the_served_one(fuzz_backend):
    assert httpx.get(f"{fuzz_backend.url}/openapi.json").json() == SPEC


def test_the_spec_covers_every_route_clients_use():
    spec = SPEC
    operations = {f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item}
    for needed in ("POST /api/learning/files", "POST /api/files", "GET /api/files/{file_id}",
                   "POST /api/learning/jobs", "POST /api/learning/jobs/{job_id}/start",
                   "GET /api/learning/jobs/{job_id}", "GET /api/learning/jobs/{job_id}/events",
                   "GET /api/learning/jobs/{job_id}/metrics", "GET /api/learning/jobs/{job_id}/timeline",
                   "POST /api/learning/jobs/{job_id}/cancel", "GET /api/learning/models",
                   "POST /api/inference/v1/chat/completions", "GET /api/health"):
        assert needed in operations, sorted(operations)


def test_the_spec_shows_request_schemas_for_job_creation_and_chat():
    def request_schema(path: str) -> dict:
        body = SPEC["paths"][path]["post"]["requestBody"]
        ref = body["content"]["application/json"]["schema"]["$ref"]
        return SPEC["components"]["schemas"][ref.rsplit("/", 1)[-1]]

    job = request_schema("/api/learning/jobs")
    assert {"model", "training_file_id"} <= set(job["required"])
    assert {"model", "training_type", "training_file_id", "validation_file_id", "hyperparameters",
            "metadata"} <= set(job["properties"])
    hyperparameters = SPEC["components"]["schemas"]["SFTHyperparameters"]["properties"]
    assert {"sequence_length", "lora_dropout", "learning_rate", "n_epochs"} <= set(hyperparameters)
    chat = request_schema("/api/inference/v1/chat/completions")
    assert chat["required"] == ["model", "messages"] and {"n", "temperature", "max_tokens"} <= set(chat["properties"])


# --------------------------------------------------------------------------------------------------------------
# integer query parameters of any size (Schemathesis's 25 examples never draw past 2**63, SQLite's limit)
# --------------------------------------------------------------------------------------------------------------


def _integer_query_params(operation: dict) -> list[str]:
    names = []
    for param in operation.get("parameters", []):
        schema_ = param.get("schema", {})
        types = {schema_.get("type")} | {s.get("type") for s in schema_.get("anyOf", [])}
        if param["in"] == "query" and "integer" in types:
            names.append(param["name"])
    return names


INT_QUERY_OPERATIONS = [(method.upper(), path, names) for path, item in SPEC["paths"].items()
                        for method, operation in item.items() if (names := _integer_query_params(operation))]
HUGE_INTS = [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1]


@pytest.mark.parametrize("method, path, names", INT_QUERY_OPERATIONS,
                         ids=[f"{m} {p}" for m, p, _ in INT_QUERY_OPERATIONS])
def test_integer_query_parameters_of_any_size(fuzz_backend, known_ids, method, path, names):
    url = fuzz_backend.url + path.format(**known_ids)
    ints = st.integers() | st.sampled_from(HUGE_INTS)

    def run(params):
        before = log_size(fuzz_backend)
        r = httpx.request(method, url, params=params, timeout=30)
        assert r.status_code < 500, (f"{method} {url} params={params} -> {r.status_code}: {r.text[:300]}\n"
                                     f"--- backend log ---\n{backend_tracebacks(fuzz_backend, before)}")

    run = given(params=st.fixed_dictionaries({}, optional={name: ints for name in names}))(run)
    for name in names:  # each boundary on its own, whatever the random draws hit
        for value in HUGE_INTS:
            run = example(params={name: value})(run)
    FUZZ_SETTINGS(run)()


# --------------------------------------------------------------------------------------------------------------
# bodies with any JSON in any slot (beyond what the request schemas describe)
# --------------------------------------------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                | st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=12)


def job_like(file_id: st.SearchStrategy) -> st.SearchStrategy:
    """Bodies shaped like Synth's create-job payload, with any value in any slot (and extra keys)."""
    hp = st.fixed_dictionaries({}, optional={k: json_values | st.integers(-3, 10) for k in (
        "n_epochs", "per_device_batch", "batch_size", "global_batch", "gradient_accumulation_steps",
        "sequence_length", "learning_rate", "warmup_ratio", "weight_decay", "train_kind", "lora_rank",
        "lora_alpha", "lora_dropout", "lora_target_modules", "evaluation_strategy", "eval_steps", "parallelism")})
    metadata = st.fixed_dictionaries({}, optional={"effective_config": json_values | st.fixed_dictionaries(
        {}, optional={"compute": json_values, "data": json_values | st.fixed_dictionaries(
            {}, optional={"validation_files": json_values}), "training": json_values})})
    return st.fixed_dictionaries({}, optional={
        "model": json_values | st.sampled_from(["Qwen/Qwen3-0.6B", "ft:x:y", "", ".", "/", "a/b/c", "ft::"]),
        "training_type": json_values | st.sampled_from(["sft_offline", "SFT", "rl_online"]),
        "training_file_id": json_values | file_id, "training_file": json_values | file_id,
        "validation_file": json_values | file_id, "hyperparameters": json_values | hp,
        "metadata": json_values | metadata})


@pytest.fixture(scope="module")
def uploaded_file_id(fuzz_backend) -> str:
    body = b'{"messages": [{"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "2"}]}\n'
    r = httpx.post(f"{fuzz_backend.api}/learning/files", files={"file": ("a.jsonl", body)},
                   data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def post_and_check(backend: RunningBackend, path: str, **kwargs) -> httpx.Response:
    before = log_size(backend)
    r = httpx.post(f"{backend.api}{path}", timeout=60, **kwargs)
    assert r.status_code < 500, (f"POST {path} -> {r.status_code}: {r.text[:500]}\nrequest: {kwargs!r:.1500}\n"
                                 f"--- backend log ---\n{backend_tracebacks(backend, before)}")
    return r


def test_create_job_with_any_json_body_never_500s(fuzz_backend, uploaded_file_id):
    created: list[str] = []

    keys = st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)

    @FUZZ_SETTINGS
    @given(body=json_values | job_like(st.just(uploaded_file_id)), key=keys)
    def run(body, key):
        headers = {"content-type": "application/json", **({"Idempotency-Key": key} if key else {})}
        r = post_and_check(fuzz_backend, "/learning/jobs", content=json.dumps(body), headers=headers)
        if r.status_code == 200:
            created.append(r.json()["id"])

    try:
        run()
    finally:  # never let a fuzzed job train
        for job_id in created:
            httpx.post(f"{fuzz_backend.api}/learning/jobs/{job_id}/cancel", timeout=30)


def test_chat_with_any_json_body_never_500s(fuzz_backend):
    message = st.fixed_dictionaries({}, optional={"role": json_values | st.sampled_from(["user", "assistant"]),
                                                  "content": json_values})
    chat_like = st.fixed_dictionaries({}, optional={
        "model": json_values | st.sampled_from(["ft:x:ftjob-missing", "Qwen/Qwen3-0.6B", "", "."]),
        "messages": json_values | st.lists(message, max_size=3), "n": json_values, "max_tokens": json_values,
        "temperature": json_values, "seed": json_values, "stop": json_values})

    @FUZZ_SETTINGS
    @given(body=json_values | chat_like)
    def run(body):
        post_and_check(fuzz_backend, "/inference/v1/chat/completions", content=json.dumps(body),
                       headers={"content-type": "application/json"})

    run()


# --------------------------------------------------------------------------------------------------------------
# raw multipart uploads
# --------------------------------------------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_characters='"\r\n'), max_size=20)
boundaries = st.text(st.sampled_from("abcXYZ0123456789-_'()+,./:=?"), min_size=1, max_size=40)
jsonl = st.lists(json_values, min_size=1, max_size=3).map(
    lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode())
MANGLES = ("none", "none", "none", "truncated", "no closing boundary", "other boundary in header", "no boundary",
           "not multipart", "random bytes", "no file part", "file without filename", "empty file")


@st.composite
def multipart_bodies(draw) -> tuple[bytes, str, str]:
    """``(body, content type, how it was mangled)``: half well-formed uploads, half broken in one way each."""
    boundary, mangle = draw(boundaries), draw(st.sampled_from(MANGLES))

    def part(name: str, content: bytes, filename: str | None) -> bytes:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"Content-Disposition: {disposition}\r\n"
        if draw(st.booleans()):
            head += f"Content-Type: {draw(st.sampled_from(['application/jsonl', 'text/plain']) | names)}\r\n"
        return f"--{boundary}\r\n{head}\r\n".encode() + content + b"\r\n"

    content = b"" if mangle == "empty file" else draw(jsonl | st.binary(min_size=1, max_size=200))
    parts = [] if mangle == "no file part" else [
        part("file", content, None if mangle == "file without filename" else draw(names))]
    if draw(st.booleans()):
        purpose = draw(st.sampled_from([b"fine-tune", b"validation"]) | st.binary(max_size=20))
        parts.append(part("purpose", purpose, None))
    for _ in range(draw(st.integers(0, 2))):
        extra = draw(names.filter(lambda name: name not in ("file", "purpose")))
        parts.insert(draw(st.integers(0, len(parts))), part(extra, draw(st.binary(max_size=50)),
                                                            draw(st.none() | names)))
    body = b"".join(parts) + (b"" if mangle == "no closing boundary" else f"--{boundary}--\r\n".encode())
    content_type = f"multipart/form-data; boundary={boundary}"
    if mangle == "truncated":
        body = body[:draw(st.integers(0, max(0, len(body) - 1)))]
    elif mangle == "other boundary in header":
        content_type = f"multipart/form-data; boundary={draw(boundaries)}"
    elif mangle == "no boundary":
        content_type = "multipart/form-data"
    elif mangle == "not multipart":
        content_type = draw(st.sampled_from([
            "application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
    elif mangle == "random bytes":
        body = draw(st.binary(max_size=300))
    return body, content_type, mangle


@pytest.mark.parametrize("route", ["/learning/files", "/files"])
def test_random_multipart_uploads_never_500(fuzz_backend, route):
    @settings(FUZZ_SETTINGS, max_examples=2 * MAX_EXAMPLES)  # the issue names uploads explicitly
    @given(upload=multipart_bodies())
    def run(upload):
        body, content_type, mangle = upload
        headers = {"content-type": content_type} if content_type else {}
        r = post_and_check(fuzz_backend, route, content=body, headers=headers)
        if mangle == "none" and b'name="file"' in body:
            assert r.status_code in (200, 400), (r.status_code, r.text, content_type, body[:400])  # 400: bad `purpose`
        if r.status_code == 200:
            assert r.json()["id"].startswith("file-") and r.json()["bytes"] > 0

    run()
