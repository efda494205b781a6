"""The MCP server through a real ``mcp.Client``, in-process, in both protocol eras, against the embedded backend.

Every test runs twice: ``mode="auto"`` (2026-07-28, stateless) and ``mode="legacy"`` (2025-11-25 handshake).
Every tool result goes through :meth:`Session.call`, which checks the contract each result must keep:

* a successful result's ``structured_content`` validates against the tool's ``outputSchema``, its first text
  block is a one-line summary and the second is the same JSON;
* an error result is never the bare ``Error executing tool <name>`` (that would mean an unexpected exception
  leaked) and never carries a traceback; expected failures name their code in brackets, e.g. ``[unknown_job]``.

Faults (5xx, 429 with ``Retry-After``, dropped connections, a dead URL, an API that echoes the Authorization header)
are injected over real sockets by the proxy from ``test_client.py``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import jsonschema
import pytest
from mcp import Client, MCPError
from mcp.types import CallToolResult

from conftest import arithmetic_rows, free_port, write_jsonl
from learning_mcp.server.app import create_server
from learning_mcp.tools.settings import Settings

MODES = ["auto", "legacy"]
PROTOCOL = {"auto": "2026-07-28", "legacy": "2025-11-25"}
SECRET = "sk-test-SECRET123"
CORE_TOOLS = {"validate_dataset", "upload_file", "create_job", "get_job_status", "cancel_job", "list_jobs",
              "diagnose"}
JOB_TIMEOUT_S = 240


# ------------------------------------------------------------------------------------------------------
# helpers (also used by test_mcp_stdio.py)
# ------------------------------------------------------------------------------------------------------
def check_result(name: str, result: CallToolResult, output_schema: dict | None) -> None:
    """The contract every tool result keeps, success or error."""
    assert result.content, f"{name}: empty content"
    text = result.content[0].text
    if result.is_error:
        assert text.strip() != f"Error executing tool {name}", f"{name}: an unexpected exception leaked"
        assert text.startswith(f"Error executing tool {name}: ["), f"{name}: error without a [code]: {text}"
        assert "Traceback" not in text and 'File "' not in text, text
        return
    assert output_schema is not None, f"{name} has no outputSchema"
    jsonschema.validators.validator_for(output_schema)(output_schema).validate(result.structured_content)
    assert text.strip() and "\n" not in text, f"{name}: summary is not one line: {text!r}"
    assert len(result.content) == 2 and json.loads(result.content[1].text) == result.structured_content


def error_code(result: CallToolResult) -> str:
    text = result.content[0].text
    return text.split("[", 1)[1].split("]", 1)[0]


@dataclass
class Session:
    client: Client
    schemas: dict[str, dict | None]
    texts: list[str] = field(default_factory=list)  # every text and structured result seen (for secret checks)

    async def call(self, name: str, args: dict | None = None, **kwargs: Any) -> CallToolResult:
        result = await self.client.call_tool(name, args or {}, **kwargs)
        self.texts.extend(c.text for c in result.content if hasattr(c, "text"))
        if result.structured_content is not None:
            self.texts.append(json.dumps(result.structured_content))
        check_result(name, result, self.schemas.get(name))
        return result

    async def ok(self, name: str, args: dict | None = None, **kwargs: Any) -> dict:
        result = await self.call(name, args, **kwargs)
        assert not result.is_error, result.content[0].text
        return result.structured_content

    async def fails(self, name: str, args: dict | None, code: str, *needles: str, **kwargs: Any) -> str:
        """Call, expect an error with ``[code]`` and each needle in its text; returns the text."""
        result = await self.call(name, args, **kwargs)
        text = result.content[0].text
        assert result.is_error, f"{name} should have failed with [{code}], got: {text}"
        assert error_code(result) == code, text
        for needle in needles:
            assert needle in text, f"{needle!r} not in {text!r}"
        return text


async def open_session(client: Client) -> Session:
    tools = await client.list_tools()
    return Session(client, {t.name: t.output_schema for t in tools.tools})


@asynccontextmanager
async def connect(server_or_params: Any, mode: str = "auto") -> AsyncIterator[Session]:
    async with Client(server_or_params, mode=mode) as client:
        yield await open_session(client)


def sft_toml(model: str | None, *, learning_rate: str = "5e-3", variety: str = "lora", epochs: int = 1,
             extra: str = "") -> str:
    job = f'[job]\nmodel = "{model}"\n' if model else "[job]\n"
    return (f'[algorithm]\ntype = "offline"\nmethod = "sft"\nvariety = "{variety}"\n\n{job}\n'
            f"[hyperparameters]\nn_epochs = {epochs}\nper_device_batch = 8\nlearning_rate = {learning_rate}\n"
            f"{extra}")


async def poll_to_terminal(s: Session, job_id: str, *, wait_seconds: float = 10) -> tuple[dict, list[dict]]:
    """Poll with since_seq cursors until terminal; checks cursor semantics; returns (last status, all events)."""
    cursor, events = 0, []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        st = await s.ok("get_job_status", {"job_id": job_id, "since_seq": cursor, "wait_seconds": wait_seconds})
        seqs = [e["seq"] for e in st["events"]]
        assert seqs == sorted(seqs) and all(q > cursor for q in seqs), (cursor, seqs)  # only newer events, in order
        assert st["next_since_seq"] == max([cursor] + seqs)
        assert len(seqs) <= 30 and (not st["more_events"] or len(seqs) == 30)
        events.extend(st["events"])
        cursor = st["next_since_seq"]
        if st["terminal"]:
            assert st["next_poll_seconds"] is None
            return st, events
        assert st["next_poll_seconds"] and "do not create another job" in st["next_step"]
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {st}"


def backend_jobs(api: str) -> dict[str, dict]:
    body = httpx.get(f"{api}/learning/jobs", params={"limit": 500}, timeout=10).json()
    return {j["id"]: j for j in body.get("jobs") or body.get("data")}


# ------------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture
def server(backend, tmp_path):
    return create_server(Settings.load(backend_url=backend.url, data_dir=str(tmp_path / "mcp-data")))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mcp-ds")
    write_jsonl(root / "train.jsonl", arithmetic_rows(32, seed=1))
    return root


# ------------------------------------------------------------------------------------------------------
# the catalogue
# ------------------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_tools_schemas_and_annotations(server, mode, anyio_backend):
    async with Client(server, mode=mode) as client:
        assert client.protocol_version == PROTOCOL[mode]
        assert client.server_info.name == "learning-mcp"
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert CORE_TOOLS <= set(tools)
    for name, tool in tools.items():
        assert tool.output_schema and tool.output_schema.get("type") == "object", name
        assert tool.description and tool.annotations is not None, name
        jsonschema.validators.validator_for(tool.output_schema).check_schema(tool.output_schema)
    ann = {n: tools[n].annotations for n in CORE_TOOLS}
    assert ann["validate_dataset"].read_only_hint and not ann["validate_dataset"].open_world_hint
    assert ann["get_job_status"].read_only_hint and ann["list_jobs"].read_only_hint
    assert not ann["create_job"].read_only_hint and not ann["create_job"].idempotent_hint
    assert ann["cancel_job"].destructive_hint and ann["cancel_job"].idempotent_hint
    assert tools["get_job_status"].input_schema["properties"]["wait_seconds"]["maximum"] == 50


# ------------------------------------------------------------------------------------------------------
# the full flow, to a fine-tuned model
# ------------------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_full_flow_to_fine_tuned_model(server, backend, data, tiny_model, tmp_path, mode, anyio_backend):
    """auto: TOML text + training_file_id from upload_file; legacy: TOML path + dataset= (validate+upload in
    create_job). Then poll with since_seq cursors and wait_seconds to succeeded."""
    train = data / "train.jsonl"
    async with connect(server, mode) as s:
        report = await s.ok("validate_dataset", {"path": str(train)})
        assert report["ok"] and report["examples"] == 32 and report["errors"] == [] and "upload_file" in report["next_step"]

        progress: list[tuple[float, float | None]] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append((done, total))

        up = await s.ok("upload_file", {"path": str(train)}, progress_callback=on_progress)
        assert up["file_id"].startswith("file-") and up["bytes"] == train.stat().st_size
        assert up["status"] == "ready" and up["examples"] == 32 and len(up["sha256"]) == 64
        assert progress and progress[-1] == (train.stat().st_size, train.stat().st_size)

        if mode == "auto":
            created = await s.ok("create_job", {"config": sft_toml(str(tiny_model)),
                                                "training_file_id": up["file_id"]})
        else:
            config = tmp_path / "sft.toml"
            config.write_text(sft_toml(str(tiny_model)))
            created = await s.ok("create_job", {"config": str(config), "dataset": str(train)})
        job_id = created["job_id"]
        assert job_id and created["started"] and created["status"] in {"queued", "validating_files", "running"}
        assert created["training_file_id"] == up["file_id"]  # content-addressed: the same bytes, the same file
        assert created["payload"]["training_file_id"] == up["file_id"]
        assert created["payload"]["model"] == str(tiny_model) and created["payload"]["training_type"] == "sft_offline"
        assert created["payload"]["hyperparameters"]["n_epochs"] == 1
        assert "get_job_status" in created["next_step"] and not created["dry_run"]

        final, events = await poll_to_terminal(s, job_id)
        assert final["status"] == "succeeded", final
        ftm = final["fine_tuned_model"]
        assert ftm and ftm.startswith("ft:") and job_id in ftm and ftm in final["next_step"]
        assert final["failure_kind"] is None and final["error"] is None
        assert final["progress"]["step"] == final["progress"]["total_steps"] > 0
        assert "train.loss" in final["latest_metrics"]
        seqs = [e["seq"] for e in events]
        assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs)  # cursors: no event twice, none out of order
        assert any(e["type"] == "sft.progress" for e in events)

        # a terminal job does not make wait_seconds wait; the full history is there from since_seq=0
        t0 = time.monotonic()
        again = await s.ok("get_job_status", {"job_id": job_id, "since_seq": final["next_since_seq"],
                                              "wait_seconds": 20})
        assert time.monotonic() - t0 < 5 and again["events"] == [] and again["fine_tuned_model"] == ftm
        history = await s.ok("get_job_status", {"job_id": job_id})
        assert history["events"] and history["events"][0]["seq"] == min(seqs)

        listed = await s.ok("list_jobs", {"limit": 200})
        mine = {j["job_id"]: j for j in listed["jobs"]}[job_id]
        assert mine["status"] == "succeeded" and mine["fine_tuned_model"] == ftm
        only_succeeded = await s.ok("list_jobs", {"status": "succeeded", "limit": 200})
        assert job_id in {j["job_id"] for j in only_succeeded["jobs"]}
        assert {j["status"] for j in only_succeeded["jobs"]} == {"succeeded"}

        resource = await s.client.read_resource(f"learning://jobs/{job_id}")
        record = json.loads(resource.contents[0].text)
        assert record["id"] == job_id and record["status"] == "succeeded"

        # a finished job is left alone by cancel_job
        cancelled = await s.ok("cancel_job", {"job_id": job_id})
        assert cancelled["status"] == "succeeded" and cancelled["terminal"]


@pytest.mark.anyio
async def test_create_job_variants_without_training(server, backend, data, tiny_model, tmp_path, mode,
                                                    anyio_backend):
    """The two remaining combinations (TOML path + training_file_id, TOML text + dataset=), start=False; the
    bounded wait of get_job_status; cancel_job on a job that never started, twice."""
    train = data / "train.jsonl"
    config = tmp_path / "sft.toml"
    config.write_text(sft_toml(str(tiny_model)))
    async with connect(server, mode) as s:
        file_id = (await s.ok("upload_file", {"path": str(train)}))["file_id"]
        by_path = await s.ok("create_job", {"config": str(config), "training_file_id": file_id, "start": False})
        by_text = await s.ok("create_job", {"config": sft_toml(str(tiny_model)), "dataset": str(train),
                                            "start": False})
        for created in (by_path, by_text):
            assert created["job_id"] and not created["started"] and created["status"] == "queued"
            assert created["training_file_id"] == file_id and "did not start" in created["next_step"]
        assert by_path["payload"] == by_text["payload"]  # path or text, file id or dataset: the same job

        st = await s.ok("get_job_status", {"job_id": by_path["job_id"]})
        assert st["status"] == "queued" and not st["terminal"] and st["next_poll_seconds"]
        t0 = time.monotonic()  # nothing will change: the bounded wait runs out, then returns
        waited = await s.ok("get_job_status", {"job_id": by_path["job_id"], "since_seq": st["next_since_seq"],
                                               "wait_seconds": 1.5})
        assert 1.4 <= time.monotonic() - t0 < 8 and waited["events"] == [] and waited["status"] == "queued"

        for created in (by_path, by_text):
            first = await s.ok("cancel_job", {"job_id": created["job_id"]})
            assert first["status"] == "cancelled" and first["terminal"]
            second = await s.ok("cancel_job", {"job_id": created["job_id"]})  # harmless the second time
            assert second["status"] == "cancelled" and "nothing to cancel" in second["message"]
            st = await s.ok("get_job_status", {"job_id": created["job_id"]})
            assert st["status"] == "cancelled" and st["failure_kind"] == "cancelled" and st["terminal"]


@pytest.mark.anyio
async def test_cancel_a_started_job(server, data, tiny_model, mode, anyio_backend):
    async with connect(server, mode) as s:
        created = await s.ok("create_job", {"config": sft_toml(str(tiny_model), epochs=50),
                                            "dataset": str(data / "train.jsonl")})
        assert created["started"]
        cancel = await s.ok("cancel_job", {"job_id": created["job_id"]})
        assert cancel["status"] in {"cancelled", "queued", "validating_files", "running"}
        final, _ = await poll_to_terminal(s, created["job_id"], wait_seconds=5)
        assert final["status"] == "cancelled" and final["failure_kind"] == "cancelled" and not final["fine_tuned_model"]
        assert "cancelled" in final["next_step"]


@pytest.mark.anyio
async def test_dry_run_uploads_and_creates_nothing(server, backend, data, tiny_model, tmp_path, mode, anyio_backend):
    before = set(backend_jobs(backend.api))
    fresh = write_jsonl(tmp_path / "fresh.jsonl", arithmetic_rows(12, seed=77))  # bytes the backend never saw
    async with connect(server, mode) as s:
        out = await s.ok("create_job", {"config": sft_toml(str(tiny_model)), "dataset": str(fresh), "dry_run": True})
        assert out["dry_run"] and out["job_id"] is None and out["status"] == "dry_run" and not out["started"]
        assert out["payload"]["model"] == str(tiny_model) and out["payload"]["training_type"] == "sft_offline"
        assert "nothing was uploaded" in out["next_step"] and any(str(fresh) in w for w in out["warnings"])
        by_id = await s.ok("create_job", {"config": sft_toml(str(tiny_model)), "training_file_id": "file-abc",
                                          "dry_run": True})
        assert by_id["payload"]["training_file_id"] == "file-abc"
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "?"}]}\n')
        await s.fails("create_job", {"config": sft_toml(str(tiny_model)), "dataset": str(bad), "dry_run": True},
                      "dataset_invalid", "line 1", "no_assistant_message")
    assert set(backend_jobs(backend.api)) == before
    files = httpx.get(f"{backend.api}/files", params={"limit": 1000}).json()["files"]
    import hashlib

    assert hashlib.sha256(fresh.read_bytes()).hexdigest() not in {f.get("sha256") for f in files}


@pytest.mark.anyio
async def test_diagnose_and_resources(server, backend, tiny_model, tmp_path, mode, anyio_backend):
    async with connect(server, mode) as s:
        diag = await s.ok("diagnose")
        assert diag["reachable"] and diag["backend"] == "custom" and diag["api_base"] == backend.api
        assert diag["key_set"] is False and diag["data_dir"] == str(tmp_path / "mcp-data") and diag["version"]

        resources = {str(r.uri) for r in (await s.client.list_resources()).resources}
        assert {"learning://config/example", "learning://models/synth"} <= resources
        templates = {t.uri_template for t in (await s.client.list_resource_templates()).resource_templates}
        assert "learning://jobs/{job_id}" in templates

        example = (await s.client.read_resource("learning://config/example")).contents[0].text
        toml_text = example.split("```toml\n", 1)[1].split("```", 1)[0]
        assert "[algorithm]" in toml_text and "[job]" in toml_text
        # the example is a working config: with the model argument it builds a payload as it stands
        out = await s.ok("create_job", {"config": toml_text, "model": str(tiny_model), "training_file_id": "file-x",
                                        "dry_run": True})
        assert out["payload"]["model"] == str(tiny_model)

        models = json.loads((await s.client.read_resource("learning://models/synth")).contents[0].text)
        assert models["sft_supported"] and models["experimental"]

        with pytest.raises(MCPError, match="cannot read job ftjob-nope"):
            await s.client.read_resource("learning://jobs/ftjob-nope")


# ------------------------------------------------------------------------------------------------------
# bad input: every failure is a documented, actionable error
# ------------------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_missing_file_directory_and_empty_file(server, tmp_path, tiny_model, mode, anyio_backend):
    missing = tmp_path / "nope.jsonl"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    (tmp_path / "dir").mkdir()
    async with connect(server, mode) as s:
        for tool in ("validate_dataset", "upload_file"):
            await s.fails(tool, {"path": str(missing)}, "file_not_found", str(missing))
            await s.fails(tool, {"path": str(tmp_path / "dir")}, "is_directory", ".jsonl")
            await s.fails(tool, {"path": str(empty)}, "empty_file", "empty")
        await s.fails("upload_file", {"path": "relative/nope.jsonl"}, "file_not_found", "absolute path")
        # create_job checks the dataset path while it builds the plan (Synth's order): a config-level code
        text = await s.fails("create_job", {"config": sft_toml(str(tiny_model)), "dataset": str(missing)},
                             "config_dataset_not_found", str(missing))
        assert "not found" in text.lower()


BAD_ROWS = {
    # kind: (second line of the file, error code)
    "invalid_json": ('{"messages": [{"role": "user", "content": "hi"}', "invalid_json"),
    "no_messages": ('{"prompt": "hi", "completion": "there"}', "missing_messages"),
    "no_assistant": ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
                     "no_assistant_message"),
    "bad_role": ('{"messages": [{"role": "wizard", "content": "a"}, {"role": "assistant", "content": "b"}]}',
                 "unknown_role"),
    "not_an_object": ("[1, 2, 3]", "record_not_object"),
    "one_message": ('{"messages": [{"role": "assistant", "content": "b"}]}', "too_few_messages"),
    "bad_content": ('{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "b"}]}',
                    "unsupported_content_type"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
async def test_malformed_jsonl(server, tmp_path, tiny_model, mode, kind, anyio_backend):
    bad_line, code = BAD_ROWS[kind]
    good = json.dumps(arithmetic_rows(1)[0])
    path = tmp_path / f"{kind}.jsonl"
    path.write_text("\n".join([good, good, bad_line, good]) + "\n")  # the bad record is on line 3
    async with connect(server, mode) as s:
        report = await s.ok("validate_dataset", {"path": str(path)})  # a normal result, not an error
        assert report["ok"] is False and report["error_total"] >= 1 and report["error_counts"][code] >= 1
        assert report["errors"][0]["line"] == 3 and report["errors"][0]["code"] == code
        assert "nothing was uploaded" in report["next_step"]
        for tool, args in (("upload_file", {"path": str(path)}),
                           ("create_job", {"config": sft_toml(str(tiny_model)), "dataset": str(path)})):
            text = await s.fails(tool, args, "dataset_invalid", "line 3", f"[{code}]", "nothing was uploaded")
            assert "validate_dataset" in text


TOML_ERRORS = {
    "syntax": ('[algorithm]\ntype = "offline"\nmethod = sft\n', "config_invalid_toml", ["line 3", "method = sft"]),
    "qlora": (None, "config_unsupported_algorithm", ["variety='qlora'", "use_qlora = true"]),
    "missing_model": (None, "config_missing_job_model", ["[job].model is required", "Add: [job] model ="]),
    "missing_job_section": ('[algorithm]\ntype = "offline"\nmethod = "sft"\nvariety = "lora"\n',
                            "config_missing_job_model", ["[job] section is required"]),
    "learning_rate_zero": (None, "config_invalid_hyperparameter",
                           ["hyperparameters.learning_rate must be greater than zero"]),
    "missing_path": ("/no/such/dir/sft.toml", "config_not_found", ["/no/such/dir/sft.toml"]),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(TOML_ERRORS))
async def test_bad_config(server, backend, tiny_model, mode, case, anyio_backend):
    config, code, needles = TOML_ERRORS[case]
    if case == "qlora":
        config = sft_toml(str(tiny_model), variety="qlora")
    elif case == "missing_model":
        config = sft_toml(None)
    elif case == "learning_rate_zero":
        config = sft_toml(str(tiny_model), learning_rate="0")
    before = set(backend_jobs(backend.api))
    async with connect(server, mode) as s:
        await s.fails("create_job", {"config": config, "training_file_id": "file-x"}, code, *needles)
        await s.fails("create_job", {"config": config, "training_file_id": "file-x", "dry_run": True}, code)
    assert set(backend_jobs(backend.api)) == before


@pytest.mark.anyio
async def test_conflicting_and_missing_dataset_arguments(server, data, tiny_model, mode, anyio_backend):
    async with connect(server, mode) as s:
        await s.fails("create_job", {"config": sft_toml(str(tiny_model)), "dataset": str(data / "train.jsonl"),
                                     "training_file_id": "file-x"}, "conflicting_arguments", "not both")
        text = await s.fails("create_job", {"config": sft_toml(str(tiny_model))}, "config_missing_dataset_path")
        assert "dataset=" in text


@pytest.mark.anyio
async def test_unknown_job(server, mode, anyio_backend):
    async with connect(server, mode) as s:
        await s.fails("get_job_status", {"job_id": "ftjob-doesnotexist"}, "unknown_job", "'ftjob-doesnotexist'",
                      "list_jobs")
        await s.fails("get_job_status", {"job_id": "ftjob-doesnotexist", "wait_seconds": 5}, "unknown_job")
        await s.fails("cancel_job", {"job_id": "ftjob-doesnotexist"}, "unknown_job", "list_jobs")


@pytest.mark.anyio
async def test_argument_validation_is_a_tool_error(server, mode, anyio_backend):
    async with connect(server, mode) as s:
        result = await s.client.call_tool("get_job_status", {"job_id": "x", "wait_seconds": 99})
        assert result.is_error and "wait_seconds" in result.content[0].text and "less than or equal to 50" in \
            result.content[0].text


@pytest.mark.anyio
async def test_unknown_arguments_are_refused(server, mode, anyio_backend):
    """An argument the tool's schema does not declare is refused before the tool runs (a misspelt dry_run must not
    start a real loop), with the tool's own argument names and a "did you mean" for a close one."""
    async with connect(server, mode) as s:
        result = await s.client.call_tool("run_sft_loop", {"config": "model = 'x'", "dry_run": True, "bogus_arg": 5})
        text = result.content[0].text
        assert result.is_error and error_code(result) == "invalid_arguments", text
        assert "run_sft_loop: unknown argument(s) dry_run, bogus_arg; this tool takes: " in text, text
        assert "wait_seconds" in text and "config" in text
        result = await s.client.call_tool("get_job_status", {"job_id": "ftjob-x", "wait_second": 5})
        text = result.content[0].text
        assert result.is_error and "unknown argument(s) wait_second (did you mean wait_seconds?)" in text, text
        result = await s.client.call_tool("list_loops", {"x": 1})
        assert result.is_error and "list_loops: unknown argument(s) x; this tool takes: no arguments" in \
            result.content[0].text
        await s.fails("filter_traces", {"run_id": "x", "nope": 1}, "invalid_arguments", "nope")


# ------------------------------------------------------------------------------------------------------
# a backend that is down or misbehaves
# ------------------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_backend_down(tmp_path, data, tiny_model, mode, anyio_backend):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    server = create_server(Settings.load(backend_url=url, data_dir=str(tmp_path / "mcp-data")))
    train = str(data / "train.jsonl")
    async with connect(server, mode) as s:
        for tool, args in (("get_job_status", {"job_id": "ftjob-x"}), ("list_jobs", {}),
                           ("cancel_job", {"job_id": "ftjob-x"}), ("upload_file", {"path": train}),
                           ("create_job", {"config": sft_toml(str(tiny_model)), "dataset": train})):
            t0 = time.monotonic()
            await s.fails(tool, args, "backend_unreachable", url, "cannot reach", "diagnose")
            assert time.monotonic() - t0 < 8, f"{tool} took {time.monotonic() - t0:.1f}s"
        diag = await s.ok("diagnose")  # works when nothing else does
        assert diag["reachable"] is False and "cannot reach" in diag["detail"] and diag["api_base"] == f"{url}/api"
        assert (await s.ok("validate_dataset", {"path": train}))["ok"]  # local tools keep working


@pytest.fixture
def proxied_server(proxy, tmp_path):
    return create_server(Settings.load(backend_url=proxy.url, data_dir=str(tmp_path / "mcp-data")))


@pytest.mark.anyio
async def test_5xx_twice_then_success(proxied_server, proxy, data, mode, anyio_backend):
    proxy.add("GET", "/api/learning/jobs", "status", status=503, times=2)
    proxy.add("POST", "/api/learning/files", "status", status=502, times=2)
    async with connect(proxied_server, mode) as s:
        await s.ok("list_jobs")
        await s.ok("upload_file", {"path": str(data / "train.jsonl")})
    outcomes = [(m, p.split("?")[0], o) for m, p, o in proxy.log]
    assert outcomes[:3] == [("GET", "/api/learning/jobs", "503")] * 2 + [("GET", "/api/learning/jobs", "forward")]
    assert [o for m, p, o in outcomes if p == "/api/learning/files"] == ["502", "502", "forward"]


@pytest.mark.anyio
async def test_429_waits_for_retry_after(proxied_server, proxy, mode, anyio_backend):
    proxy.add("GET", "/api/learning/jobs", "status", status=429, retry_after=1.5, times=1)
    async with connect(proxied_server, mode) as s:
        t0 = time.monotonic()
        await s.ok("list_jobs")
        elapsed = time.monotonic() - t0
    assert 1.4 <= elapsed < 6, elapsed


@pytest.mark.anyio
async def test_dropped_connection_then_success(proxied_server, proxy, data, mode, anyio_backend):
    proxy.add("POST", "/api/learning/files", "drop", times=1)
    proxy.add("GET", "/api/learning/jobs", "drop", times=1)
    async with connect(proxied_server, mode) as s:
        up = await s.ok("upload_file", {"path": str(data / "train.jsonl")})
        assert up["bytes"] == (data / "train.jsonl").stat().st_size
        await s.ok("list_jobs")
    assert [o for _, _, o in proxy.log].count("drop") == 2


@pytest.mark.anyio
async def test_upload_route_fallback_through_the_tool(proxied_server, proxy, data, mode, anyio_backend):
    proxy.add("POST", "/api/learning/files", "status", status=404, times=10)
    async with connect(proxied_server, mode) as s:
        up = await s.ok("upload_file", {"path": str(data / "train.jsonl")})
    assert up["file_id"].startswith("file-")
    assert [p for m, p, o in proxy.log if m == "POST"] == ["/api/learning/files", "/api/files"]


@pytest.mark.anyio
async def test_upload_too_large_says_so(proxied_server, proxy, data, mode, anyio_backend):
    proxy.add("POST", "/api/", "status", status=413, times=10)
    async with connect(proxied_server, mode) as s:
        await s.fails("upload_file", {"path": str(data / "train.jsonl")}, "http_413", "HTTP 413", "split it")


@pytest.mark.anyio
async def test_persistent_500_is_backend_error(proxied_server, proxy, data, mode, anyio_backend):
    proxy.add("GET", "/api/learning/jobs", "status", status=500, times=1000)
    proxy.add("POST", "/api/learning/files", "status", status=500, times=1000)
    async with connect(proxied_server, mode) as s:
        await s.fails("list_jobs", {}, "backend_error", "HTTP 500", "retry later")
        await s.fails("get_job_status", {"job_id": "ftjob-x"}, "backend_error", "HTTP 500")
        await s.fails("upload_file", {"path": str(data / "train.jsonl")}, "backend_error", "HTTP 500")


@pytest.mark.anyio
async def test_records_shaped_like_other_apis(proxied_server, proxy, mode, anyio_backend):
    """Synth documents ``error`` and timestamps loosely: a string error, epoch-seconds timestamps, ``canceled``,
    ``state`` instead of ``status`` and ``event_type`` instead of ``type`` must still give valid results."""
    failed = {"id": "ftjob-synthlike", "status": "failed", "error": "CUDA out of memory on rank 0.\nTried to allocate 2.00 GiB",
              "model": "Qwen/Qwen3-0.6B", "created_at": 1795611698, "finished_at": 1795611798.5}
    canceled = {"job_id": "ftjob-canceled", "state": "canceled", "model_id": "Qwen/Qwen3-0.6B",
                "created_at": "2026-01-01T00:00:00Z"}
    proxy.canned = {
        "/api/learning/jobs/ftjob-synthlike/events": {"events": [
            {"seq": 1, "event_type": "sft.job.failed", "level": "error", "message": "CUDA out of memory",
             "created_at": 1795611797, "data": {"error": "CUDA out of memory"}}]},
        "/api/learning/jobs/ftjob-synthlike/metrics": {"points": []},
        "/api/learning/jobs/ftjob-synthlike": failed,
        "/api/learning/jobs/ftjob-canceled/events": {"data": []},
        "/api/learning/jobs/ftjob-canceled/status": {"status": "canceled"},
        "/api/learning/jobs/ftjob-canceled/metrics": {"points": []},
        "/api/learning/jobs/ftjob-canceled": canceled,
        "/api/learning/jobs": {"data": [failed, canceled]},
    }
    for prefix in proxy.canned:  # most specific first: the proxy takes the first rule that matches
        proxy.add("GET", prefix, "canned", status=200, times=1000)
    async with connect(proxied_server, mode) as s:
        st = await s.ok("get_job_status", {"job_id": "ftjob-synthlike"})
        assert st["status"] == "failed" and st["terminal"] and st["failure_kind"] == "training"
        assert "CUDA out of memory" in json.dumps(st["error"]) and st["events"][0]["type"] == "sft.job.failed"
        st = await s.ok("get_job_status", {"job_id": "ftjob-canceled"})
        assert st["status"] == "cancelled" and st["terminal"] and st["model"] == "Qwen/Qwen3-0.6B"
        jobs = (await s.ok("list_jobs"))["jobs"]
        assert [(j["job_id"], j["status"]) for j in jobs] == [("ftjob-synthlike", "failed"),
                                                               ("ftjob-canceled", "cancelled")]


@pytest.mark.anyio
async def test_api_key_never_leaks(proxy, data, tiny_model, tmp_path, monkeypatch, caplog, mode, anyio_backend):
    """The proxy answers 401/500 with the Authorization header echoed in the detail (and the error message)."""
    monkeypatch.setenv("SYNTH_API_KEY", SECRET)
    proxy.add("GET", "/api/health", "echo_auth", status=401, times=1000)
    proxy.add("GET", "/api/learning/jobs", "echo_auth", status=401, times=1000)
    proxy.add("POST", "/api/learning/jobs", "echo_auth", status=500, times=1000)
    proxy.add("POST", "/api/learning/files", "echo_auth", status=403, times=1000)
    server = create_server(Settings.load(backend_url=proxy.url, data_dir=str(tmp_path / "mcp-data")))
    caplog.set_level(logging.DEBUG)
    async with connect(server, mode) as s:
        diag = await s.ok("diagnose")
        assert diag["key_set"] is True and not diag["reachable"] and "auth_failed" in diag["detail"]
        await s.fails("list_jobs", {}, "auth_failed", "HTTP 401", "Bearer ***", "SYNTH_API_KEY")
        await s.fails("get_job_status", {"job_id": "ftjob-x"}, "auth_failed", "Bearer ***")
        await s.fails("upload_file", {"path": str(data / "train.jsonl")}, "auth_failed", "HTTP 403")
        await s.fails("cancel_job", {"job_id": "ftjob-x"}, "backend_error", "HTTP 500", "Bearer ***")
        await s.fails("create_job", {"config": sft_toml(str(tiny_model)), "training_file_id": "file-x"},
                      "backend_error", "Bearer ***")
    assert any(h.get("authorization") == f"Bearer {SECRET}" for _, _, h in proxy.requests)  # it was sent
    assert s.texts and not [t for t in s.texts if SECRET in t]
    assert "Bearer ***" in caplog.text  # the log saw the echoed header, redacted
    assert SECRET not in caplog.text


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_unknown_tool_is_a_protocol_error(tmp_path, mode):
    from mcp import Client, MCPError

    from learning_mcp.server.app import create_server

    async with Client(create_server(Settings.load(data_dir=str(tmp_path))), mode=mode) as client:
        with pytest.raises(MCPError) as info:
            await client.call_tool("no_such_tool", {})
    assert "Unknown tool: no_such_tool" in str(info.value)


# ------------------------------------------------------------------------------------------------------
# the embedded backend cannot start: the reason is the backend's own error line
# ------------------------------------------------------------------------------------------------------
BACKEND_ENV_VARS = ("SYNTH_API_KEY", "SYNTH_BACKEND_URL", "BACKEND_BASE_URL", "SYNTH_BACKEND_OVERRIDE",
                    "LEARNING_MCP_BACKEND_URL", "LEARNING_MCP_DATA_DIR", "LEARNING_MCP_INFERENCE_ENGINE")


@pytest.mark.anyio
async def test_embedded_backend_start_failure_names_the_reason(tmp_path, anyio_backend):
    """LEARNING_MCP_INFERENCE_ENGINE=vllm on a machine without vLLM (this one has neither vLLM nor a GPU): the
    tool's error carries the backend's own [vllm_unavailable] line, not a wrong install hint."""
    pytest.importorskip("torch")
    import importlib.util
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    environ = {k: v for k, v in os.environ.items() if k not in BACKEND_ENV_VARS}
    environ |= {"LEARNING_MCP_INFERENCE_ENGINE": "vllm", "SECRET_TEST_KEY": "sk-do-not-show-1234"}
    settings = Settings.load(data_dir=str(tmp_path / "data"), environ=environ)
    async with Client(create_server(settings)) as client:
        result = await client.call_tool("list_jobs", {})
    text = result.content[0].text
    assert result.is_error and "[backend_start_failed]" in text, text
    assert "[vllm_unavailable] LEARNING_MCP_INFERENCE_ENGINE=vllm but vllm is not importable" in text, text
    assert "backend.log" in text and "pip install -e '.[train]')" not in text, text


def test_start_failure_reason_reads_the_log():
    from learning_mcp.backend.launcher import start_failure_reason

    log = ("2026-01-01 10:00:00,000 INFO learning_mcp.backend.launcher: starting\n"
           "2026-01-01 10:00:01,000 ERROR learning_mcp.backend.launcher: [vllm_unavailable] no GPU; key sk-secret-99\n")
    assert start_failure_reason(log, {"X_API_KEY": "sk-secret-99"}) == ("[vllm_unavailable] no GPU; key ***", False)
    assert start_failure_reason("[invalid_setting] LEARNING_MCP_INFERENCE_ENGINE: Input should be 'auto'\n", {}) == \
        ("[invalid_setting] LEARNING_MCP_INFERENCE_ENGINE: Input should be 'auto'", False)
    trace = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
             "ModuleNotFoundError: No module named 'torch'\n")
    assert start_failure_reason(trace, {}) == ("ModuleNotFoundError: No module named 'torch'", True)
    assert start_failure_reason("", {}) == (None, False)


def test_invalid_engine_setting_has_a_code(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in BACKEND_ENV_VARS} | {
        "LEARNING_MCP_INFERENCE_ENGINE": "bogus"}
    for args in (["backend", "--port", str(free_port()), "--data-dir", str(tmp_path)], []):
        proc = subprocess.run([sys.executable, "-m", "learning_mcp", *args], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "[invalid_setting] LEARNING_MCP_INFERENCE_ENGINE: Input should be 'auto', 'transformers' or 'vllm'" \
            in proc.stderr, proc.stderr
