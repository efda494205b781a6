"""Task files: parsing, errors with line numbers, splits, round-trips."""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest

from learning_mcp.tools.rewards import make_verifier
from learning_mcp.tools.tasks import Task, TaskFileError, load_tasks, parse_task, split_tasks, write_tasks


def write_jsonl(path, records) -> str:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_load_tasks_reads_every_supported_shape(tmp_path):
    path = write_jsonl(
        tmp_path / "tasks.jsonl",
        [
            {"id": "a", "prompt": "2+3?", "system": "Answer with a number.", "answer": "5", "split": "train"},
            {"id": 7, "messages": [{"role": "user", "content": "hi"}], "reference": "hello", "split": "val",
             "difficulty": 3},
            "",
            {"id": "c", "prompt": "p", "solution": "worked steps", "answer": 9, "split": "TEST"},
            {"id": "d", "prompt": "p", "tests": ["assert f(1) == 2"], "metadata": {"source": "apps"}, "level": 1},
            {"id": "e", "prompt": "p", "target": None},
        ],
    )
    tasks = load_tasks(path)
    assert [t.id for t in tasks] == ["a", "7", "c", "d", "e"]
    a, seven, c, d, e = tasks
    assert a.messages == [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "2+3?"}]
    assert (a.answer, a.split, a.metadata) == ("5", "train", {})
    assert seven.answer == "hello" and seven.split == "validation" and seven.metadata == {"difficulty": 3}
    # `answer` wins over `solution`, which stays in metadata
    assert c.answer == 9 and c.metadata == {"solution": "worked steps"} and c.split == "test"
    assert d.answer == ["assert f(1) == 2"] and d.metadata == {"source": "apps", "level": 1} and d.split is None
    assert e.answer is None


@pytest.mark.parametrize(
    ("line", "code", "fragment"),
    [
        ('{"prompt": "x"}', "missing_id", "no `id`"),
        ('{"id": true, "prompt": "x"}', "invalid_id", "string or an integer"),
        ('{"id": " ", "prompt": "x"}', "invalid_id", "empty"),
        ('{"id": 1, "question": "x"}', "missing_prompt", "rename `question` to `prompt`"),
        ('{"id": 1, "prompt": "x", "messages": [{"role": "user", "content": "y"}]}', "ambiguous_prompt", "both"),
        ('{"id": 1, "messages": [{"role": "robot", "content": "y"}]}', "invalid_messages", "robot"),
        ('{"id": 1, "messages": [{"role": "system", "content": "y"}]}', "invalid_messages", "no user message"),
        ('{"id": 1, "messages": []}', "invalid_messages", "non-empty"),
        ('{"id": 1, "prompt": "x", "split": "holdout"}', "invalid_split", "holdout"),
        ('{"id": 1, "prompt": ""}', "invalid_prompt", "non-empty"),
        ('[1, 2]', "not_an_object", "not a JSON object"),
        ('{"id": 1, "prompt": "x"', "invalid_json", "invalid JSON"),
        (
            '{"id": 1, "system": "s", "messages": [{"role": "system", "content": "t"}, '
            '{"role": "user", "content": "u"}]}',
            "ambiguous_system",
            "keep one",
        ),
    ],
)
def test_bad_lines_are_reported_with_their_line_number(tmp_path, line, code, fragment):
    path = write_jsonl(tmp_path / "t.jsonl", ['{"id": "ok", "prompt": "fine"}', line])
    with pytest.raises(TaskFileError) as info:
        load_tasks(path)
    assert info.value.code == code
    assert "line 2:" in info.value.message
    assert fragment in info.value.message


def test_duplicate_ids_are_an_error_naming_both_lines(tmp_path):
    records = [{"id": 1, "prompt": "a"}, {"id": "2", "prompt": "b"}, {"id": "1", "prompt": "c"}]
    path = write_jsonl(tmp_path / "t.jsonl", records)
    with pytest.raises(TaskFileError) as info:
        load_tasks(path)
    assert info.value.code == "duplicate_id"
    assert "line 3" in info.value.message and "first used on line 1" in info.value.message


def test_every_problem_is_listed_at_once(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ['{"id": 1}', "not json", '{"id": 2, "prompt": "ok"}', '{"prompt": "x"}'])
    with pytest.raises(TaskFileError) as info:
        load_tasks(path)
    assert [(line, code) for line, code, _ in info.value.problems] == [
        (1, "missing_prompt"),
        (2, "invalid_json"),
        (4, "missing_id"),
    ]
    assert "3 problem(s)" in info.value.message


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(TaskFileError) as info:
        load_tasks(tmp_path / "nope.jsonl")
    assert info.value.code == "file_not_found"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(TaskFileError) as info:
        load_tasks(empty)
    assert info.value.code == "no_tasks"


def test_parse_task_is_usable_on_its_own():
    task = parse_task({"id": 3, "prompt": "p", "answer": "a"})
    assert task == Task(id="3", messages=[{"role": "user", "content": "p"}], answer="a")
    with pytest.raises(TaskFileError):
        parse_task({"prompt": "p"})


def make_tasks(count, split=None) -> list[Task]:
    return [Task(id=f"t{i}", messages=[{"role": "user", "content": str(i)}], answer=str(i), split=split)
            for i in range(count)]


def test_split_without_explicit_splits_is_seeded_and_order_independent():
    tasks = make_tasks(50)
    train, val = split_tasks(tasks, val_fraction=0.2, seed=1)
    assert len(val) == 10 and len(train) == 40
    assert {t.id for t in train}.isdisjoint({t.id for t in val})
    # file order kept within each list
    assert [t.id for t in train] == [t.id for t in tasks if t in train]
    # the same seed on a shuffled file gives the same split
    shuffled = tasks[:]
    random.Random(5).shuffle(shuffled)
    train2, val2 = split_tasks(shuffled, val_fraction=0.2, seed=1)
    assert {t.id for t in val2} == {t.id for t in val}
    # another seed gives another split
    _, val3 = split_tasks(tasks, val_fraction=0.2, seed=2)
    assert {t.id for t in val3} != {t.id for t in val}
    # adding a task (same quota) moves at most one existing task out of validation, none into it
    _, val_more = split_tasks(make_tasks(51), val_fraction=0.2, seed=1)
    old_ids, new_ids = {t.id for t in val}, {t.id for t in val_more} - {"t50"}
    assert new_ids <= old_ids and len(old_ids - new_ids) <= 1


def test_split_edge_cases():
    assert split_tasks(make_tasks(5), val_fraction=0.0) == (make_tasks(5), [])
    train, val = split_tasks(make_tasks(3), val_fraction=0.01)
    assert len(val) == 1 and len(train) == 2  # at least one validation task
    train, val = split_tasks(make_tasks(2), val_fraction=0.9)
    assert len(train) == 1  # train never empty
    assert split_tasks(make_tasks(1), val_fraction=0.5) == (make_tasks(1), [])
    with pytest.raises(ValueError):
        split_tasks(make_tasks(3), val_fraction=1.0)


def test_explicit_splits_are_used_and_test_is_held_out():
    tasks = make_tasks(2, "train") + make_tasks(0) + [
        Task(id="v", messages=[], split="validation"),
        Task(id="x", messages=[], split="test"),
        Task(id="u", messages=[]),
    ]
    train, val = split_tasks(tasks, val_fraction=0.5)
    assert [t.id for t in train] == ["t0", "t1", "u"]
    assert [t.id for t in val] == ["v"]


def test_explicit_splits_without_validation_carve_it_from_train():
    tasks = make_tasks(10, "train") + [Task(id="x", messages=[], split="test")]
    train, val = split_tasks(tasks, val_fraction=0.2, seed=0)
    assert len(val) == 2 and len(train) == 8
    assert all(t.split == "train" for t in train + val)


def test_write_tasks_round_trips(tmp_path):
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": 1, "prompt": "p", "system": "s", "answer": [1, 2], "split": "val", "extra": {"k": 1}},
            {"id": "b", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "tests": "t"},
        ],
    )
    tasks = load_tasks(source)
    out = write_tasks(tmp_path / "sub" / "out.jsonl", tasks)
    assert load_tasks(out) == tasks
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_raw_gsm8k_export_gets_the_command_that_converts_it(tmp_path):
    raw = tmp_path / "gsm8k.jsonl"
    raw.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "What is 2*3?", "answer": "2*3 = 6\n#### 6"}]) + "\n")
    with pytest.raises(TaskFileError) as info:
        load_tasks(raw)
    message = info.value.message
    assert "line 1: has no `id`, and no `prompt` (rename `question` to `prompt`)" in message
    command = message.split("Convert it: ", 1)[1].split(" (GSM8K-form", 1)[0]
    out = tmp_path / "gsm8k.tasks.jsonl"  # next to the input, never over an existing tasks.jsonl
    assert command.startswith("jq -c --slurp ") and command.endswith(f"{raw} > {out}"), command
    if shutil.which("jq"):  # run the command as the user would
        subprocess.run(command, shell=True, check=True)
    else:  # what the jq program does: index -> id, question -> prompt
        rows = [json.loads(line) for line in raw.read_text().splitlines()]
        out.write_text("".join(json.dumps({"id": i, "prompt": r["question"], "answer": r["answer"]}) + "\n"
                               for i, r in enumerate(rows)))
    tasks = load_tasks(out)
    assert [t.id for t in tasks] == ["0", "1"] and tasks[1].messages[0]["content"] == "What is 2*3?"
    assert make_verifier("numeric")(tasks[1], "The answer is 6.") == 1.0  # the GSM8K-form reference is understood
