"""The trace store (SQLite) and the filter step that turns stored samples into SFT JSONL."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from learning_mcp.tools.filtering import (
    FilterConfigError,
    FilterSpec,
    filter_traces,
    load_filter_config,
)
from learning_mcp.tools.traces import TraceSample, TraceStore, summarize_rewards

PROMPT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]


def sample(problem, index, reward, *, completion=None, iteration=1, phase="train_eval", run_id="run-a", **extra):
    return TraceSample(
        run_id=run_id,
        iteration=iteration,
        phase=phase,
        problem_id=problem,
        completion=completion if completion is not None else f"{problem}-answer-{index}",
        reward=reward,
        prompt=[{"role": "user", "content": f"question {problem}"}],
        split=extra.pop("split", "train"),
        model=extra.pop("model", "base-model"),
        sample_index=index,
        finish_reason="stop",
        metadata=extra.pop("metadata", {"temperature": 0.7}),
        created_at=extra.pop("created_at", None),
    )


@pytest.fixture
def store(tmp_path):
    with TraceStore(tmp_path / "traces.db") as opened:
        yield opened


# -- store ---------------------------------------------------------------------------------------------------------


def test_schema_indexes_and_wal(store, tmp_path):
    assert store.journal_mode == "wal"
    conn = sqlite3.connect(tmp_path / "traces.db")
    columns = [row[1] for row in conn.execute("PRAGMA table_info(samples)")]
    assert columns == [
        "id", "run_id", "iteration", "phase", "problem_id", "split", "model", "sample_index", "prompt",
        "completion", "reward", "finish_reason", "metadata", "created_at",
    ]
    indexes = {row[1]: [c[2] for c in conn.execute(f"PRAGMA index_info({row[1]})")]
               for row in conn.execute("PRAGMA index_list(samples)")}
    assert ["run_id", "iteration", "phase"] in indexes.values()
    assert ["problem_id"] in indexes.values()
    conn.close()


def test_add_query_round_trip_and_selectors(store):
    store.add_samples([sample("p1", 0, 1.0), sample("p1", 1, 0.0), sample("p2", 0, 1.0, split="validation")])
    store.add_samples([sample("p1", 0, 1.0, iteration=2, phase="val_eval", model="ft:m")])
    rows = store.query()
    assert [r.id for r in rows] == [1, 2, 3, 4]
    first = rows[0]
    assert first.prompt == [{"role": "user", "content": "question p1"}]
    assert first.metadata == {"temperature": 0.7} and first.finish_reason == "stop"
    assert first.created_at == pytest.approx(time.time(), abs=60)
    assert len(store.query(run_id="run-a", iterations=1, phases="train_eval")) == 3
    assert [r.problem_id for r in store.query(splits=["validation"])] == ["p2"]
    assert [r.iteration for r in store.query(models="ft:m")] == [2]
    assert len(store.query(problem_ids=["p1"], min_reward=0.5)) == 2
    assert len(store.query(max_reward=0.5)) == 1
    assert [r.id for r in store.query(limit=2, offset=1)] == [2, 3]
    assert store.count(run_id="run-a", iterations=[1, 2]) == 4
    assert store.query(run_id="other") == []


def test_summary_numbers(store):
    store.add_samples([sample("p1", i, r) for i, r in enumerate([1, 0, 0, 1])])
    store.add_samples([sample("p2", i, 0.0) for i in range(4)])
    store.add_samples([sample("p3", i, 1.0) for i in range(2)])
    summary = store.summary("run-a", 1, "train_eval")
    assert summary == {
        "problems": 3,
        "samples": 10,
        "correct": 4,
        "solved_any": 2,
        "pass_at_1": pytest.approx((0.5 + 0 + 1) / 3),
        "pass_at_n": pytest.approx(2 / 3),
        "mean_reward": pytest.approx(0.4),
    }
    assert store.summary("run-a", 9, "train_eval")["problems"] == 0


def test_summarize_rewards_threshold_and_empty_problems():
    numbers = summarize_rewards({"a": [0.6, 1.0], "b": [], "c": [0.2]}, threshold=0.5)
    assert numbers["correct"] == 2 and numbers["solved_any"] == 1
    assert numbers["pass_at_1"] == pytest.approx(1 / 3)  # b has no samples and counts as unsolved
    assert numbers["mean_reward"] == pytest.approx(1.8 / 3)


def test_a_failing_batch_commits_nothing(store):
    bad = sample("p9", 1, 1.0)
    bad.problem_id = None
    with pytest.raises(ValueError):
        store.add_samples([sample("p9", 0, 1.0), bad])
    assert store.count() == 0
    with pytest.raises(ValueError):
        store.add_samples([sample("p9", 0, float("nan"))])
    assert store.count() == 0


def test_concurrent_writers_and_reopen(tmp_path):
    path = tmp_path / "deep" / "dir" / "t.db"
    store = TraceStore(path)

    def write(thread_index):
        for batch in range(10):
            store.add_samples([sample(f"p{thread_index}-{batch}", i, 1.0) for i in range(5)])

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    with TraceStore(path) as reopened:
        assert reopened.count() == 200
        assert len({r.problem_id for r in reopened.query()}) == 40


def test_delete_one_eval(store):
    store.add_samples([sample("p1", 0, 1.0), sample("p1", 0, 1.0, iteration=2)])
    assert store.delete("run-a", iteration=2, phase="train_eval") == 1
    assert [r.iteration for r in store.query()] == [1]


# -- filter --------------------------------------------------------------------------------------------------------


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_filter_stages_and_output_shape(store, tmp_path):
    rows = [
        sample("p1", 0, 1.0, completion="four"),
        sample("p1", 1, 1.0, completion="  four \n"),  # duplicate after whitespace normalisation
        sample("p1", 2, 1.0, completion="4"),
        sample("p1", 3, 1.0, completion="IV"),
        sample("p1", 4, 0.0, completion="five"),
        sample("p2", 0, 1.0, completion="x"),
        sample("p3", 0, 0.0, completion="y"),
        sample("p1", 0, 1.0, completion="other run", run_id="run-b"),
        sample("p1", 0, 1.0, completion="val phase", phase="val_eval"),
    ]
    store.add_samples(rows)
    out = tmp_path / "out" / "kept.jsonl"
    spec = FilterSpec(output=str(out), run_id="run-a", phases=["train_eval"], max_per_problem=2)
    report = filter_traces(spec, store)
    assert report.counts == {"matched": 7, "rewarded": 5, "not_truncated": 5, "deduped": 4, "capped": 3, "limited": 3,
                             "written": 3}
    assert list(report.counts) == ["matched", "rewarded", "not_truncated", "deduped", "capped", "limited", "written"]
    assert report.problems == 2 and report.per_problem_max == 2
    assert report.output == str(out.resolve())
    assert report.message == f"Wrote 3 examples -> {out.resolve()}"
    lines = read_jsonl(out)
    assert [line["messages"][-1]["content"] for line in lines] == ["four", "4", "x"]  # first K by sample index
    first = lines[0]
    assert first["messages"] == [
        {"role": "user", "content": "question p1"},
        {"role": "assistant", "content": "four"},
    ]
    metadata = first["metadata"]
    assert set(metadata) == {"session_id", "seed", "total_reward", "model", "created_at", "task_id", "split",
                             "iteration"}
    assert metadata["seed"] == 0 and metadata["total_reward"] == 1.0 and metadata["task_id"] == "p1"
    assert metadata["model"] == "base-model" and metadata["split"] == "train" and metadata["iteration"] == 1
    assert metadata["session_id"] == "run-a:1:train_eval:1"
    assert metadata["created_at"].endswith("+00:00")
    assert report.to_dict()["counts"]["written"] == 3


def test_filter_without_dedupe_threshold_and_system_prompt(store, tmp_path):
    store.add_samples([sample("p1", 0, 0.5, completion="a"), sample("p1", 1, 0.5, completion="a"),
                       sample("p1", 2, 0.2, completion="b")])
    store.add_samples([TraceSample(run_id="run-a", iteration=1, phase="train_eval", problem_id="p2",
                                   completion="c", reward=1.0, prompt=PROMPT)])
    out = tmp_path / "k.jsonl"
    report = filter_traces(
        FilterSpec(output=str(out), reward_threshold=0.5, dedupe=False, system_prompt="You are terse."), store
    )
    assert report.counts["rewarded"] == 3 and report.counts["written"] == 3
    lines = read_jsonl(out)
    assert all(line["messages"][0] == {"role": "system", "content": "You are terse."} for line in lines)
    p2 = [line for line in lines if line["metadata"]["task_id"] == "p2"][0]
    assert [m["role"] for m in p2["messages"]] == ["system", "user", "assistant"]  # replaced, not duplicated


def test_filter_limit_offset_and_seeded_shuffle(store, tmp_path):
    store.add_samples([sample(f"p{i:02d}", 0, 1.0) for i in range(20)])
    out = tmp_path / "k.jsonl"
    report = filter_traces(FilterSpec(output=str(out), offset=5, limit=3), store)
    assert report.counts["limited"] == 3
    assert [l["metadata"]["task_id"] for l in read_jsonl(out)] == ["p05", "p06", "p07"]

    def shuffled(seed):
        filter_traces(FilterSpec(output=str(out), shuffle=True, shuffle_seed=seed), store)
        return [l["metadata"]["task_id"] for l in read_jsonl(out)]

    assert shuffled(3) == shuffled(3)
    assert shuffled(3) != shuffled(4)
    assert sorted(shuffled(3)) == [f"p{i:02d}" for i in range(20)]


def test_filter_official_score_bounds_use_task_app_scores(store, tmp_path):
    store.add_samples([
        sample("s0", 0, 1.0, metadata={"official_score": 0.9}),
        sample("s1", 0, 1.0, metadata={"official_score": 1.0}),
        sample("s2", 0, 1.0),  # no official score: the reward stands in
    ])
    report = filter_traces(FilterSpec(output=str(tmp_path / "k.jsonl"), min_official_score=0.95), store)
    assert report.counts["rewarded"] == 2
    assert {l["metadata"]["task_id"] for l in read_jsonl(tmp_path / "k.jsonl")} == {"s1", "s2"}
    report = filter_traces(FilterSpec(output=str(tmp_path / "k.jsonl"), max_official_score=0.95), store)
    assert report.counts["rewarded"] == 1


def test_filter_created_at_bounds(store, tmp_path):
    store.add_samples([sample("old", 0, 1.0, created_at=1_600_000_000),
                       sample("new", 0, 1.0, created_at=1_700_000_000)])
    report = filter_traces(FilterSpec(output=str(tmp_path / "k.jsonl"), min_created_at="2021-01-01T00:00:00Z"), store)
    assert report.counts["matched"] == 1
    report = filter_traces(FilterSpec(output=str(tmp_path / "k.jsonl"), max_created_at=1_650_000_000), store)
    assert [l["metadata"]["task_id"] for l in read_jsonl(tmp_path / "k.jsonl")] == ["old"]


def test_empty_result_writes_an_empty_file_and_explains(store, tmp_path):
    store.add_samples([sample("p1", 0, 0.0)])
    out = tmp_path / "k.jsonl"
    out.write_text("stale\n")
    report = filter_traces(FilterSpec(output=str(out)), store)
    assert report.counts["matched"] == 1 and report.counts["written"] == 0
    assert report.problems == 0 and report.per_problem_max == 0
    assert report.message.startswith("No sessions matched the provided filters.")
    assert "reward >= 1" in report.message
    assert out.read_text() == ""
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    report = filter_traces(FilterSpec(output=str(out), run_id="nope"), store)
    assert "selectors" in report.message


def test_filter_opens_the_db_from_the_spec(tmp_path):
    db = tmp_path / "t.db"
    with TraceStore(db) as store:
        store.add_samples([sample("p1", 0, 1.0)])
    report = filter_traces(FilterSpec(output=str(tmp_path / "k.jsonl"), db=f"sqlite+aiosqlite:///{db}"))
    assert report.counts["written"] == 1
    with pytest.raises(FilterConfigError) as info:
        filter_traces(FilterSpec(output=str(tmp_path / "k.jsonl"), db=str(tmp_path / "missing.db")))
    assert info.value.code == "db_not_found"
    with pytest.raises(FilterConfigError):
        filter_traces(FilterSpec(output=str(tmp_path / "k.jsonl")))


# -- config --------------------------------------------------------------------------------------------------------


def test_load_filter_config_from_text_path_and_dict(tmp_path):
    text = """
    [filter]
    db = "traces.db"
    output = "ft/kept.jsonl"
    splits = ["train"]
    run_id = "run-a"
    iterations = [1, 2]
    phases = ["train_eval"]
    max_per_problem = 4
    min_created_at = "2024-01-01"
    shuffle = true
    shuffle_seed = 7
    """
    spec = load_filter_config(text)
    assert spec.output == "ft/kept.jsonl" and spec.db == "traces.db"
    assert spec.iterations == [1, 2] and spec.max_per_problem == 4 and spec.reward_threshold == 1.0
    assert spec.min_created_at == pytest.approx(1704067200.0)
    path = tmp_path / "configs" / "filter.toml"
    path.parent.mkdir()
    path.write_text(text)
    from_file = load_filter_config(path)
    assert from_file.output == str(path.parent / "ft/kept.jsonl")  # relative to the config file
    assert from_file.db == str(path.parent / "traces.db")
    assert load_filter_config(str(path)).output == from_file.output
    as_dict = load_filter_config({"filter": {"output": "a.json", "task_ids": ["1", 2]}})
    assert as_dict.task_ids == ["1", "2"]
    assert load_filter_config({"output": "a.jsonl", "limit": 3}).limit == 3


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[eval]\nseeds = [1]\n", "Config must contain a [filter] table."),
        ('[filter]\noutput = "a.jsonl"\nlimit = 0\n', "Invalid filter config: limit must be >= 1"),
        ('[filter]\noutput = "a.jsonl"\noffset = -1\n', "Invalid filter config: offset must be >= 0"),
        (
            '[filter]\noutput = "a.jsonl"\nshuffle_seed = 3\n',
            "Invalid filter config: shuffle_seed requires shuffle=true",
        ),
        ('[filter]\noutput = "a.txt"\n', "Invalid filter config: output must be a .jsonl or .json file, got: a.txt"),
        ('[filter]\ndb = "x.db"\n', "Invalid filter config: output (JSONL file path) is required"),
        (
            '[filter]\noutput = "a.jsonl"\nmin_official_score = 0.9\nmax_official_score = 0.1\n',
            "Invalid filter config: min_official_score cannot be greater than max_official_score",
        ),
        ('[filter]\noutput = "a.jsonl"\nreward_treshold = 0.5\n', "unknown key(s) reward_treshold"),
        ('[filter]\noutput = "a.jsonl"\nmax_per_problem = 0\n', "max_per_problem must be >= 1"),
        ('[filter]\noutput = "a.jsonl"\nmin_judge_scores = {a = 1.0}\n', "not supported"),
        ('[filter]\noutput = "a.jsonl"\nmin_created_at = "yesterday"\n', "min_created_at"),
        ('[filter]\noutput = "a.jsonl"\ndb = "postgres://x/y"\n', "SQLite"),
        ("[filter\n", "Failed to parse TOML"),
    ],
)
def test_load_filter_config_validates_like_synth(config, message):
    with pytest.raises(FilterConfigError) as info:
        load_filter_config(config)
    assert message in info.value.message


def test_missing_config_file(tmp_path):
    with pytest.raises(FilterConfigError) as info:
        load_filter_config(tmp_path / "nope.toml")
    assert info.value.message == f"Filter config not found: {tmp_path / 'nope.toml'}"
