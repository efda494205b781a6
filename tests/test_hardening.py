"""Issue 10, tools/server side: bad input never gives a bare error, and filter_traces never deletes a file it
did not create in the call. Real MCP client, real server, real trace database (no backend needed)."""

from __future__ import annotations

import json
import os

import pytest
from fuzzing import bare_error
from mcp import Client

from learning_mcp.server.app import create_server
from learning_mcp.tools.settings import Settings
from learning_mcp.tools.traces import TraceSample, TraceStore

pytestmark = pytest.mark.anyio


def _sample(problem: str, index: int, reward: float) -> TraceSample:
    return TraceSample(run_id="run-a", iteration=1, phase="train_eval", problem_id=problem,
                       completion=f"{problem}-answer-{index}", reward=reward,
                       prompt=[{"role": "user", "content": f"question {problem}"}], split="train", model="m",
                       sample_index=index, finish_reason="stop", metadata={}, created_at=None)


def _server(tmp_path):
    # a backend URL nobody listens on: these tools must not need one
    return create_server(Settings.load(data_dir=str(tmp_path / "data"), backend_url="http://127.0.0.1:9/api"))


async def test_filter_traces_with_overwrite_and_no_match_keeps_the_users_file(tmp_path, anyio_backend):
    db = tmp_path / "traces.db"
    with TraceStore(db) as store:
        store.add_samples([_sample("p1", 0, 0.0), _sample("p2", 0, 1.0)])
    precious = tmp_path / "precious.jsonl"
    precious.write_text("keep me\n")
    async with Client(_server(tmp_path)) as client:
        r = await client.call_tool("filter_traces", {"db": str(db), "output": str(precious), "overwrite": True,
                                                     "run_id": "run-a", "reward_threshold": 1.5})
        assert not r.is_error, r.content[0].text
        assert r.structured_content["written"] == 0
        assert precious.read_text() == "keep me\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "precious.jsonl", "traces.db"]
        # a run_id with no traces at all is refused (a typo must not look like "nothing matched"), file untouched
        r = await client.call_tool("filter_traces", {"db": str(db), "output": str(precious), "overwrite": True,
                                                     "run_id": "eval-nope"})
        text = r.content[0].text
        assert r.is_error and f"[unknown_run] no traces for run_id 'eval-nope' in {db}" in text, text
        assert "eval_id" in text and "loop_id" in text and "list_loops" in text
        assert precious.read_text() == "keep me\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "precious.jsonl", "traces.db"]
        # a match with overwrite=true replaces it (that is what overwrite means), atomically
        r = await client.call_tool("filter_traces", {"db": str(db), "output": str(precious), "overwrite": True})
        assert not r.is_error and r.structured_content["written"] == 1, r.content[0].text
        assert r.structured_content["output"] == str(precious)
        assert [json.loads(line)["messages"][-1]["content"] for line in precious.read_text().splitlines()] == \
            ["p2-answer-0"]
        # no match and no file: nothing is created
        fresh = tmp_path / "fresh.jsonl"
        r = await client.call_tool("filter_traces", {"db": str(db), "output": str(fresh), "run_id": "run-a",
                                                     "reward_threshold": 1.5})
        assert not r.is_error and r.structured_content["written"] == 0 and not fresh.exists()
        r = await client.call_tool("filter_traces", {"db": str(db), "output": str(fresh), "run_id": "none"})
        assert r.is_error and "[unknown_run]" in r.content[0].text and not fresh.exists()
        assert not [p for p in tmp_path.iterdir() if ".filtering" in p.name]


async def test_bad_arguments_and_files_get_a_code(tmp_path, anyio_backend):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    surrogate = tmp_path / "s.jsonl"
    surrogate.write_text('{"messages": [{"role": "\\ud800", "content": "x"}, {"role": "assistant", "content": "y"}],'
                         ' "\\udfff": 1}\n' + '{"messages": [{"role": "user", "content": ' + "9" * 5000 + '}]}\n')
    cases = [
        ("validate_dataset", {"path": 12}, "[invalid_arguments] validate_dataset: path:"),
        ("create_job", {"config": ["x"]}, "[invalid_arguments] create_job: config:"),
        ("validate_dataset", {"path": "/dev/zero"}, "[not_a_regular_file]"),
        ("upload_file", {"path": "/dev/zero", "validate": False}, "[not_a_regular_file]"),
        ("validate_dataset", {"path": str(fifo)}, "[not_a_regular_file]"),
        ("validate_dataset", {"path": "a\x00b"}, "[invalid_path]"),
        ("validate_dataset", {"path": "x" * 5000}, "[unreadable_path]"),
        ("create_job", {"config": "\x00", "dry_run": True}, "[invalid_argument]"),
        ("create_job", {"config": "a = " + "[" * 3000 + "]" * 3000 + "\n", "dry_run": True}, "invalid_toml]"),
        ("filter_traces", {"config": "[filter]\nlimit = " + "9" * 5000 + "\n"}, "4300 digits"),
        ("run_sft_loop", {"config": "[loop]\nx = " + "{ a = " * 1000 + "1" + " }" * 1000 + "\n"}, "[invalid_toml]"),
    ]
    async with Client(_server(tmp_path)) as client:
        for name, args, expected in cases:
            r = await client.call_tool(name, args)
            text = r.content[0].text
            assert r.is_error and expected in text, (name, text[:300])
            assert bare_error(name, r) is None, text[:300]
        # lone surrogates (valid JSON escapes) in values and keys, and a 5000-digit integer: a normal report
        r = await client.call_tool("validate_dataset", {"path": str(surrogate)})
        assert not r.is_error, r.content[0].text
        report = r.structured_content
        assert report["ok"] is False and report["error_total"] >= 2
        assert "4300 digits" in json.dumps(report)


# -- sampling: timeouts scale with the work, a request the server accepted is never sent twice ---------------------
from test_evaluate import chat, make_task, run_eval, store, stub  # noqa: E402,F401 - fixtures (real chat stub)


async def test_a_read_timeout_is_not_retried_and_says_what_to_do(chat, store):
    from learning_mcp.tools.http import RetryPolicy
    from learning_mcp.tools.sampling import ChatEndpointError, SamplingSettings, request_timeout_s

    assert request_timeout_s(1, 64) == 120 + 16
    assert request_timeout_s(8, 160) == 120 + 0.25 * 8 * 160  # the n=8, max_tokens=160: 440 s, not 120 s
    assert request_timeout_s(64, 8192) == 3600
    chat.state.reset(delay_s=1.0)
    with pytest.raises(ChatEndpointError) as info:
        await run_eval(chat, store, tasks=[make_task("a", "always")], timeout_s=0.3, concurrency=1,
                       settings=SamplingSettings(n=2, max_tokens=16),
                       retry=RetryPolicy(max_attempts=4, initial_backoff_s=0.01))
    assert info.value.code == "endpoint_timeout"
    assert chat.state.requests == 1  # accepted once, never queued again on the busy engine
    assert "raise timeout_s" not in info.value.message and "n × max_tokens = 2 × 16" in info.value.message
    import anyio

    await anyio.sleep(1.2)  # let the stub finish the abandoned request before the next test shares it
