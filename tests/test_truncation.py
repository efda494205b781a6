"""Truncated samples are not trained on: a completion cut off at ``max_tokens`` (``finish_reason == "length"``) is
recorded as truncated in the trace store and dropped by the filter unless ``[filter] keep_truncated = true``; the
filter report counts the drops. Sampled for real through ``evaluate()`` against the chat stub."""

from __future__ import annotations

import json

import anyio
import pytest

from chat_stub import start_chat_stub
from learning_mcp.tools.evaluate import RetryPolicy, SamplingSettings, evaluate
from learning_mcp.tools.filtering import FilterConfigError, FilterSpec, filter_traces, load_filter_config
from learning_mcp.tools.tasks import Task
from learning_mcp.tools.traces import TraceSample, TraceStore

FAST = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.02)


def rambler(messages, index):
    """Problem 'ramble': every sample repeats the right answer until max_tokens (scored 1.0, truncated);
    problem 'clean': even samples answer and stop, odd ones are cut off; problem 'wrong': a wrong, cut-off answer."""
    kind = messages[-1]["content"]
    if kind == "ramble":
        return "#### 42 " * 8 + "#### 42", "length"
    if kind == "clean":
        return ("#### 42", "stop") if index % 2 == 0 else (f"#### 42 and {index} more words", "length")
    return "#### 41 #### 41", "length"


@pytest.fixture(scope="module")
def sampled():
    """One real eval (4 samples per problem) into a store, shared by the filter tests."""
    tasks = [Task(id=kind, messages=[{"role": "user", "content": kind}], answer="work\n#### 42")
             for kind in ("ramble", "clean", "wrong")]
    store = TraceStore(":memory:")
    with start_chat_stub(rambler) as stub:
        summary = anyio.run(lambda: evaluate(
            tasks, chat_url=stub.base_url + "/v1", model="stub", verifier="answer", store=store, run_id="r",
            iteration=1, phase="train_eval", settings=SamplingSettings(n=4, max_tokens=16), retry=FAST,
        ))
    assert summary.samples == 12
    yield store
    store.close()


def test_truncated_samples_are_recorded_as_truncated(sampled):
    rows = sampled.query(run_id="r")
    by_problem = {kind: [r for r in rows if r.problem_id == kind] for kind in ("ramble", "clean", "wrong")}
    assert all(r.truncated and r.finish_reason == "length" and r.reward == 1.0 for r in by_problem["ramble"])
    assert [r.truncated for r in by_problem["clean"]] == [False, True, False, True]
    assert all(r.reward == 1.0 for r in by_problem["clean"])  # "#### 42 and 1 more words" still reads 42
    assert all(r.truncated and r.reward == 0.0 for r in by_problem["wrong"])
    assert all(r.to_dict()["truncated"] == r.truncated for r in rows)


def test_filter_drops_truncated_samples_by_default_and_counts_them(sampled, tmp_path):
    out = tmp_path / "kept.jsonl"
    report = filter_traces(FilterSpec(output=str(out), run_id="r", dedupe=False), sampled)
    assert report.counts["matched"] == 12 and report.counts["rewarded"] == 8
    assert report.counts["not_truncated"] == 2 and report.truncated_dropped == 6
    assert report.to_dict()["truncated_dropped"] == 6
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["messages"][-1]["content"] for line in lines] == ["#### 42", "#### 42"]
    assert {line["metadata"]["task_id"] for line in lines} == {"clean"}


def test_filter_keeps_truncated_samples_when_asked(sampled, tmp_path):
    out = tmp_path / "all.jsonl"
    config = load_filter_config(
        f'[filter]\noutput = "{out}"\nrun_id = "r"\ndedupe = false\nkeep_truncated = true\n'
    )
    assert config.keep_truncated is True
    report = filter_traces(config, sampled)
    assert report.counts["rewarded"] == report.counts["not_truncated"] == report.counts["written"] == 8
    assert report.truncated_dropped == 0
    assert {json.loads(line)["metadata"]["task_id"] for line in out.read_text().splitlines()} == {"ramble", "clean"}


def test_all_truncated_message_says_what_to_do(tmp_path):
    with TraceStore(":memory:") as store:
        store.add_samples([TraceSample(run_id="r", iteration=1, phase="p", problem_id="a", completion="#### 1 #### 1",
                                       reward=1.0, finish_reason="length", sample_index=i) for i in range(3)])
        report = filter_traces(FilterSpec(output=str(tmp_path / "k.jsonl")), store)
    assert report.counts["written"] == 0 and report.truncated_dropped == 3
    assert report.message.startswith("No sessions matched the provided filters.")
    assert "cut off at max_tokens" in report.message and "keep_truncated = true" in report.message


def test_keep_truncated_must_be_a_boolean(tmp_path):
    with pytest.raises(FilterConfigError) as info:
        load_filter_config({"filter": {"output": str(tmp_path / "k.jsonl"), "keep_truncated": "yes"}})
    assert info.value.message == "Invalid filter config: keep_truncated must be true or false"
