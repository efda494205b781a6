"""Verifiers that judge answers the way graders do: a table of equivalent and non-equivalent answer pairs scored
THROUGH ``evaluate()`` (real HTTP to the chat stub, rewards read back from the trace store), plus direct unit tests
of the math verifier, reasoning blocks, GSM8K-form references and the start-of-loop zero-score warning."""

from __future__ import annotations

import json
import threading
import time

import pytest

from chat_stub import start_chat_stub
from learning_mcp.tools import mathcheck
from learning_mcp.tools.evaluate import RetryPolicy, SamplingSettings, evaluate
from learning_mcp.tools.rewards import (
    VerifierError,
    make_verifier,
    strip_reasoning,
    zero_score_warning,
)
from learning_mcp.tools.tasks import Task, parse_task, reference_final_answer
from learning_mcp.tools.traces import TraceStore

FAST = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.02)
GSM_42 = "Afternoon: 14 * 2 = <<14*2=28>>28 pears.\nTotal: 14 + 28 = <<14+28=42>>42 pears.\n#### 42"
GSM_1234 = "1000 + 234 = <<1000+234=1234>>1234\n#### 1,234"
GSM_72 = "48 / 2 = <<48/2=24>>24\n48 + 24 = <<48+24=72>>72\n#### 72"
GSM_45 = "9 * 5 = <<9*5=45>>45\n#### 45"
GSM_18 = "3 * 6 = <<3*6=18>>18\n#### 18"

# (verifier, reference, completion, expected reward). A completion may be a dict: the whole chat message.
CASES = [
    # -- math: equivalences ------------------------------------------------------------------------------------
    ("math", "42", r"The answer is \boxed{42}", 1),
    ("math", "-0.75", r"\boxed{-\frac{3}{4}}", 1),
    ("math", r"\frac{1}{2}", r"\boxed{\dfrac12}", 1),
    ("math", "0.5", r"so the answer is $\frac{1}{2}$", 1),
    ("math", "1000", r"\boxed{1{,}000}", 1),
    ("math", "1000", "#### 1,000", 1),
    ("math", "18.90", r"\boxed{\$18.90}", 1),
    ("math", "18.9", "The final answer is $18.90.", 1),
    ("math", "5", r"\boxed{x = 5}", 1),
    ("math", "12", r"\boxed{12\text{ cm}}", 1),
    ("math", "72", "#### 72 dollars", 1),
    ("math", r"\{1, 2\}", r"\boxed{\{2, 1\}}", 1),
    ("math", "(1, 2)", r"\boxed{(1,2)}", 1),
    ("math", r"\sqrt{2}", r"\boxed{\frac{2}{\sqrt{2}}}", 1),
    ("math", GSM_42, "#### 42\nI hope this answer is helpful!", 1),
    ("math", GSM_1234, r"\boxed{1234}", 1),
    ("math", "3/4", "It is 0.75", 1),
    ("math", "7", "<think>maybe 8? \\boxed{8}</think>\n\nSo 3 + 4 = 7.", 1),
    ("math", "5", "<think>\n\n</think>\n\n5", 1),
    ("math", r"50\%", r"\boxed{50\%}", 1),
    ("math", 42, r"\boxed{42}", 1),
    ("math", ["6", "six"], r"\boxed{6}", 1),
    ("math", "x + 1", r"\boxed{1 + x}", 1),
    ("math", "[1, 3]", r"\boxed{[1,3]}", 1),
    ("math", "2", r"First \boxed{3}, no wait: \boxed{2}", 1),
    ("math", GSM_45, "#### 45 I hope this answer is helpful!", 1),
    # -- math: traps --------------------------------------------------------------------------------------------
    ("math", "42", r"\boxed{420}", 0),
    ("math", "42", r"\boxed{-42}", 0),
    ("math", "1000", r"\boxed{1.000}", 0),
    ("math", r"\frac{1}{3}", r"\boxed{0.333}", 0),
    ("math", "(1, 2)", r"\boxed{(2, 1)}", 0),
    ("math", r"\pi", r"\boxed{3.14}", 0),
    ("math", "2", r"\boxed{x^2}", 0),
    ("math", "42", r"\boxed{41} (not 42)", 0),
    ("math", "42", "<think>the answer is \\boxed{42}</think>\nThe answer is 24.", 0),
    ("math", "42", "<think>so it is \\boxed{42} and", 0),  # cut off while thinking: no answer
    ("math", GSM_72, "#### 27", 0),
    ("math", "5", "", 0),
    ("math", "3", r"\boxed{\text{three}}", 0),
    ("math", "42", "#### 42 #### 42 #### 4", 0),  # a repeating, cut-off answer: the last one counts
    # -- numeric: GSM8K references and LaTeX numbers ------------------------------------------------------------
    ("numeric", GSM_42, "Total 42 pears", 1),
    ("numeric", GSM_1234, "so 1234", 1),
    ("numeric", "1000", r"1{,}000", 1),
    ("numeric", "-0.75", r"-\frac{3}{4}", 1),
    ("numeric", "18.90", r"It costs \$18.90", 1),
    ("numeric", GSM_45, "45 pages, read in 2 parts", 0),  # numeric takes the LAST number
    ("numeric", "7", "<think>7</think>\n8", 0),
    ("numeric", "7", "<think>8</think>\n7", 1),
    ("numeric", GSM_72, "#### 27", 0),
    # -- answer: the final answer line --------------------------------------------------------------------------
    ("answer", GSM_42, "#### 42\nI hope this answer is helpful!", 1),
    ("answer", "42", "The answer is 42. I hope this answer is helpful!", 1),
    ("answer", r"\frac{3}{4}", r"Final answer: $\frac{3}{4}$", 1),
    ("answer", "42", "The answer is 41. I hope this answer is helpful!", 0),
    ("answer", GSM_18, "#### $18.00", 1),
    ("answer", "Paris", "The answer is Paris.", 1),
    ("answer", "Paris", "The answer is London.", 0),
    ("answer", "42", "#### Step 1: add\n14 + 28 = 42, so the answer is 42.", 1),
    # -- boxed -----------------------------------------------------------------------------------------------------
    ("boxed", GSM_42, r"\boxed{42}", 1),
    ("boxed", "-0.75", r"\boxed{-\frac{3}{4}}", 1),
    ("boxed", "1000", r"\boxed{1{,}000}", 1),
    ("boxed", "5", r"\boxed{4} then \boxed{5}", 1),
    ("boxed", "5", r"\boxed{5} then \boxed{4}", 0),
    ("boxed", "18.9", r"\boxed{\$18.90}", 1),
    # -- exact, with the reasoning block of Qwen3's template ----------------------------------------------------------
    ("exact", "5", "<think>\n\n</think>\n\n5", 1),
    ("exact", "5", "<think>\n\n</think>\n\n6", 0),
    # -- a separate reasoning_content is never scored -------------------------------------------------------------
    ("math", "42", {"content": r"\boxed{42}", "reasoning_content": r"maybe \boxed{41}"}, 1),
    ("math", "42", {"content": r"\boxed{41}", "reasoning_content": r"it is \boxed{42}"}, 0),
    ("exact", "5", {"content": "5", "reasoning_content": "2 + 3 is 5, so I will say 5"}, 1),
]


def _answer_for(messages, index):
    case = int(messages[-1]["content"].split()[1])
    return CASES[case][2]


@pytest.fixture(scope="module")
def stub():
    with start_chat_stub(_answer_for) as running:
        yield running


@pytest.fixture(scope="module")
def table_rewards(stub):
    """Every case scored through evaluate(): one greedy eval per verifier, rewards read back from the store."""
    import anyio

    rewards: dict[int, float] = {}

    async def run_all(store):
        for kind in sorted({c[0] for c in CASES}):
            tasks = [
                Task(id=f"c{i}", messages=[{"role": "user", "content": f"case {i}"}], answer=reference)
                for i, (verifier, reference, _, _) in enumerate(CASES) if verifier == kind
            ]
            summary = await evaluate(
                tasks, chat_url=stub.base_url + "/v1", model="stub", verifier=kind, greedy=True,
                settings=SamplingSettings(n=1, max_tokens=32), store=store, run_id="table", iteration=0,
                phase=kind, retry=FAST, concurrency=4,
            )
            assert summary.problems == len(tasks) and summary.errors == 0

    with TraceStore(":memory:") as store:
        anyio.run(run_all, store)
        for row in store.query(run_id="table"):
            rewards[int(row.problem_id[1:])] = row.reward
    return rewards


def test_table_is_large_and_balanced():
    assert len(CASES) >= 60
    assert sum(1 for c in CASES if c[3] == 0) >= 20 and sum(1 for c in CASES if c[3] == 1) >= 30
    assert sum(1 for c in CASES if isinstance(c[1], str) and "####" in c[1]) >= 10


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_answer_pair_through_eval(table_rewards, index):
    verifier, reference, completion, expected = CASES[index]
    assert table_rewards[index] == float(expected), (verifier, reference, completion)


def test_table_direct_calls_agree_with_eval(table_rewards):
    """The same verdicts from calling the verifiers directly (content only, as evaluate() scores)."""
    verifiers = {kind: make_verifier(kind) for kind in {c[0] for c in CASES}}
    for index, (kind, reference, completion, expected) in enumerate(CASES):
        text = completion["content"] if isinstance(completion, dict) else completion
        task = Task(id=f"c{index}", messages=[{"role": "user", "content": "q"}], answer=reference)
        assert verifiers[kind](task, text) == float(expected) == table_rewards[index], (kind, reference, text)


# -- the case file: GSM8K-form references -------------------------------------------------------------------------

CASE_LINES = [
    {"id": "g1", "prompt": "A shop sells 14 pears in the morning and twice as many in the afternoon. How many pears "
     "in total?", "answer": GSM_42, "split": "validation"},
    {"id": "g2", "prompt": "Tom reads 9 pages a day for 5 days. How many pages?", "answer": GSM_45,
     "split": "validation"},
]


@pytest.mark.parametrize("kind", ["numeric", "answer", "boxed", "math"])
def test_gsm8k_case_file_references_are_read_by_every_numeric_verifier(kind):
    tasks = [parse_task(json.loads(json.dumps(line))) for line in CASE_LINES]
    verifier = make_verifier(kind)
    right = {"g1": r"14 + 28 = 42, so the answer is \boxed{42}" if kind == "boxed" else "#### 42",
             "g2": r"\boxed{45}" if kind == "boxed" else "The answer is 45."}
    wrong = {"g1": r"\boxed{28}" if kind == "boxed" else "#### 28", "g2": r"\boxed{9}" if kind == "boxed" else "9"}
    for task in tasks:
        assert task.answer.endswith("#### " + reference_final_answer(task.answer))
        assert verifier(task, right[task.id]) == 1.0, (kind, task.id)
        assert verifier(task, wrong[task.id]) == 0.0, (kind, task.id)


def test_reference_final_answer():
    assert reference_final_answer(GSM_42) == "42"
    assert reference_final_answer("a\n#### 1 #### 2\n") == "2"
    assert reference_final_answer("####\n 7 \n") == "7"
    assert reference_final_answer("42") == "42" and reference_final_answer(42) == 42
    assert reference_final_answer(None) is None


# -- reasoning blocks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\n\n</think>\n\n5", "5"),
        ("<think>a</think>b<think>c</think> d", "d"),
        ("reasoning without an opening tag</think>\n42", "42"),  # the template put <think> in the prompt
        ("answer 3 <think>cut off while thi", "answer 3"),
        ("<think>cut off while thinking", ""),
        ("plain 7", "plain 7"),
        ("", ""),
    ],
)
def test_strip_reasoning(text, expected):
    assert strip_reasoning(text) == expected


def test_python_verifier_sees_the_completion_without_reasoning(tmp_path):
    path = tmp_path / "check.py"
    path.write_text("def check(completion, answer):\n    return completion == answer\n")
    verifier = make_verifier(f"{path}:check")
    task = Task(id="t", messages=[{"role": "user", "content": "q"}], answer="5")
    assert verifier(task, "<think>\nhmm\n</think>\n\n5") == 1.0


# -- the math verifier directly -----------------------------------------------------------------------------------


def test_math_spec_forms_and_options():
    verifier = make_verifier({"type": "math"})
    assert verifier.describe() == {"type": "math"} and verifier.blocking is True
    assert make_verifier("MATH").describe() == {"type": "math"}
    with pytest.raises(VerifierError) as info:
        make_verifier({"type": "math", "tolerance": 0.1})
    assert info.value.code == "invalid_verifier_option" and "tolerance" in info.value.message
    assert verifier.extract_answer(r"so \boxed{\$18.90}.") == r"\$18.90"
    assert verifier.extract_answer("#### 72 dollars\nThanks!") == "72"
    assert verifier.extract_answer("<think>x</think>") is None


def test_math_verifier_missing_dependency_is_a_clear_error(monkeypatch):
    real = mathcheck.importlib.util.find_spec
    monkeypatch.setattr(mathcheck.importlib.util, "find_spec",
                        lambda name, *a: None if name == "math_verify" else real(name, *a))
    with pytest.raises(VerifierError) as info:
        make_verifier("math")
    assert info.value.code == "missing_dependency"
    assert "pip install 'learning-mcp[math]'" in info.value.message


def test_math_verifier_in_worker_threads_and_runaway_expressions():
    """math-verify's signal alarms fail off the main thread; the helper process makes threads safe, and an
    expression SymPy would evaluate forever scores 0 within the hard timeout instead of hanging."""
    verifier = make_verifier("math")
    task = Task(id="t", messages=[{"role": "user", "content": "q"}], answer="-0.75")
    results: list[float] = []
    errors: list[BaseException] = []

    def work():
        try:
            results.append(verifier(task, r"\boxed{-\frac{3}{4}}"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and results == [1.0] * 4
    started = time.monotonic()
    huge = Task(id="h", messages=[{"role": "user", "content": "q"}], answer="1")
    assert verifier(huge, r"\boxed{10^{10^{10^{10}}}}") == 0.0
    assert time.monotonic() - started < mathcheck.HARD_TIMEOUT_S + 5
    assert verifier(task, r"\boxed{-0.75}") == 1.0  # the helper still (or again) answers


def test_math_helper_restarts_after_being_killed():
    verifier = make_verifier("math")
    task = Task(id="t", messages=[{"role": "user", "content": "q"}], answer="2")
    assert verifier(task, r"\boxed{2}") == 1.0
    proc = mathcheck._child.proc
    assert proc is not None
    proc.kill()
    proc.wait(timeout=10)
    assert verifier(task, r"\boxed{2}") == 1.0
    assert mathcheck._child.proc is not proc


# -- the start-of-loop zero-score warning ---------------------------------------------------------------------------


def test_zero_score_warning_names_the_cause_and_shows_what_was_read():
    tasks = [parse_task(line) for line in CASE_LINES]
    verifier = make_verifier("exact")
    examples = [(tasks[0], "42"), (tasks[1], "45")]
    rewards = {task.id: [verifier(task, completion)] for task, completion in examples}
    assert rewards == {"g1": [0.0], "g2": [0.0]}
    warning = zero_score_warning(rewards, verifier, examples=examples)
    assert warning is not None
    assert "exact verifier scored all 2 validation problem(s) 0 on the seed model" in warning
    assert "reference or answer format the verifier cannot read" in warning
    assert "problem g1" in warning and "#### 42" in warning and "the verifier read '42'" in warning
    assert "'math'" in warning and "`eval`" in warning


def test_zero_score_warning_only_when_nothing_scored():
    verifier = make_verifier("numeric")
    assert zero_score_warning({"a": [0.0, 1.0], "b": [0.0]}, verifier) is None
    assert zero_score_warning({}, verifier) is None
    text = zero_score_warning({"a": [0.0, 0.0], "b": [None]}, {"type": "python", "function": "m:f"})
    assert text is not None and "python (m:f) verifier scored all 2" in text
    assert zero_score_warning({"a": [0.4]}, verifier, threshold=0.5) is not None


def test_zero_score_warning_on_empty_completions_points_at_sampling():
    text = zero_score_warning({"a": [0.0], "b": [0.0]}, make_verifier("exact"), all_empty=True)
    assert text is not None and "every completion was EMPTY" in text and "max_tokens" in text
    assert "reference or answer format" not in text


# -- through the MCP `eval` tool ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_mcp_eval_tool_with_the_math_verifier_reads_gsm8k_references(backend, tiny_model, tmp_path):
    """The case file (references ending '#### N'), answered in grader-equivalent forms, through the `eval` tool."""
    from mcp import Client

    from learning_mcp.server.app import create_server
    from learning_mcp.tools.settings import Settings

    tasks = tmp_path / "gsm8k_style_references.jsonl"
    rows = CASE_LINES + [{"id": "m1", "prompt": "What is 3/4 as a decimal, negated?", "answer": "-0.75",
                          "split": "validation"}]
    tasks.write_text("".join(json.dumps(row) + "\n" for row in rows))
    answers = {"A shop": "<think>\n\n</think>\n\n14 + 28 = 42, so the answer is $\\boxed{42}$.",
               "Tom reads": "#### 45\nI hope this answer is helpful!", "What is 3/4": r"\boxed{-\frac{3}{4}}"}

    def answer(messages, index):
        return next(text for prefix, text in answers.items() if messages[-1]["content"].startswith(prefix))

    with start_chat_stub(answer) as stub:
        settings = Settings.load(backend_url=backend.url, data_dir=str(tmp_path / "mcp"))
        async with Client(create_server(settings)) as client:
            results = {}
            for verifier in ("math", "exact"):
                r = await client.call_tool("eval", {"model": str(tiny_model), "tasks": str(tasks), "verifier": verifier,
                                                    "chat_url": stub.chat_url, "wait_seconds": 40})
                assert r.structured_content["state"] == "succeeded", r.content[0].text
                results[verifier] = r.structured_content
    assert results["math"]["problems"] == 3 and results["math"]["pass_at_1"] == 1.0, results["math"]
    assert results["exact"]["pass_at_1"] == 0.0
    # an eval whose verifier scores everything 0 says so (as a loop does at its start), with what it read
    assert results["math"]["warnings"] == []
    assert len(results["exact"]["warnings"]) == 1, results["exact"]
    warning = results["exact"]["warnings"][0]
    assert "The exact verifier scored all 3 problem(s) 0 in this eval" in warning and "'math'" in warning, warning
