"""Binary verifiers: extraction, comparison, python verifiers and their errors."""

from __future__ import annotations

import textwrap

import pytest

from learning_mcp.tools.rewards import (
    VerifierError,
    extract_final_answer,
    make_verifier,
    parse_number,
)
from learning_mcp.tools.tasks import Task


def task(answer, task_id="t1", **metadata) -> Task:
    return Task(id=task_id, messages=[{"role": "user", "content": "q"}], answer=answer, metadata=metadata)


# -- extraction ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{5}", "5"),
        (r"first \boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{x^{2} + {y}}", "x^{2} + {y}"),
        (r"\boxed{unbalanced", None),
        ("no box here", None),
        (r"\fbox{7}", "7"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_final_answer(text, "boxed") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Let me think.\nThe answer is 42.", "42"),
        ("work\n#### 1,234", "1,234"),
        ("**Answer:** 7", "7"),
        ("Answer: wrong\nFinal answer: $\\frac{3}{4}$", "\\frac{3}{4}"),
        ("The answer is \\boxed{9}.", "9"),
        ("answer is: yes", "yes"),
        ("This answers nothing", None),
        ("", None),
    ],
)
def test_extract_answer_forms(text, expected):
    assert extract_final_answer(text, "answer") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2 apples and 3 pears make 5", "5"),
        ("total: 1,234.", "1,234"),
        ("it is -3.5", "-3.5"),
        ("half is 1/2", "1/2"),
        ("no digits", None),
    ],
)
def test_extract_last_number(text, expected):
    assert extract_final_answer(text, "last_number") == expected


def test_extract_regex_takes_the_last_match_and_group():
    text = "RESULT=1\nnoise\nRESULT=2"
    assert extract_final_answer(text, "regex", pattern=r"RESULT=(\d+)") == "2"
    assert extract_final_answer(text, "regex", pattern=r"(?P<v>RESULT)=(\d+)", group="v") == "RESULT"
    assert extract_final_answer("nothing", "regex", pattern=r"RESULT=(\d+)") is None
    assert extract_final_answer("  padded  ", "full") == "padded"
    with pytest.raises(ValueError):
        extract_final_answer("x", "nonsense")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1,234", 1234.0), ("$5", 5.0), ("50%", 50.0), ("3/4", 0.75), (r"\frac{3}{4}", 0.75), (7, 7.0), ("x", None),
     ("1/0", None), (True, None)],
)
def test_parse_number(value, expected):
    assert parse_number(value) == expected


# -- built-in verifiers --------------------------------------------------------------------------------------------


def test_exact_strips_whitespace_and_accepts_lists():
    verify = make_verifier("exact")
    assert verify(task("Paris"), "  Paris\n") == 1.0
    assert verify(task("Paris"), "paris") == 0.0
    assert verify(task(["Paris", "paris"]), "paris") == 1.0
    assert verify(task(12), "12") == 1.0
    assert make_verifier({"type": "exact", "ignore_case": True})(task("Paris"), "PARIS") == 1.0


def test_exact_without_answer_is_an_error_naming_the_task():
    with pytest.raises(VerifierError) as info:
        make_verifier("exact")(task(None, task_id="p-9"), "x")
    assert info.value.code == "missing_answer"
    assert "p-9" in info.value.message


def test_numeric_takes_the_last_number_with_tolerance():
    verify = make_verifier({"type": "numeric", "tolerance": 0.01})
    assert verify(task("5"), "2+3 = 5") == 1.0
    assert verify(task(5), "it is 5.004") == 1.0
    assert verify(task(5), "it is 5.02") == 0.0
    assert verify(task("1,234"), "so 1234") == 1.0
    assert verify(task("1/2"), "0.5") == 1.0
    assert verify(task(5), "5 then 6") == 0.0  # the *last* number counts
    assert verify(task(5), "no number") == 0.0
    strict = make_verifier("numeric")
    assert strict(task(0.1), "0.1000001") == 1.0
    assert strict(task(0.1), "0.10001") == 0.0


def test_numeric_with_extract_mode():
    verify = make_verifier({"type": "numeric", "extract": "boxed"})
    assert verify(task(3), r"tried 4, final \boxed{3} and later 9") == 1.0
    assert verify(task(3), "3 without a box") == 0.0
    answer_line = make_verifier({"type": "numeric", "extract": "answer"})
    assert answer_line(task(12), "The answer is 12 apples. Next question has 99") == 1.0


def test_numeric_with_non_numeric_reference_is_an_error():
    with pytest.raises(VerifierError) as info:
        make_verifier("numeric")(task("abc", task_id="q1"), "1")
    assert info.value.code == "invalid_answer" and "q1" in info.value.message


def test_regex_verifier_exact_and_numeric_compare():
    verify = make_verifier({"type": "regex", "pattern": r"ANSWER:\s*(\S+)"})
    assert verify(task("b"), "ANSWER: a\nANSWER: b") == 1.0
    assert verify(task("a"), "ANSWER: a\nANSWER: b") == 0.0
    numeric = make_verifier({"type": "regex", "pattern": r"=\s*([\d.]+)", "compare": "numeric"})
    assert numeric(task(2), "x = 2.0") == 1.0


def test_boxed_and_answer_verifiers_compare_loosely():
    boxed = make_verifier("boxed")
    assert boxed(task("1/2"), r"\boxed{\frac{1}{2}}") == 1.0
    assert boxed(task("x^2"), r"\boxed{ x^2 }") == 1.0
    assert boxed(task(42), r"\boxed{42.0}") == 1.0
    assert boxed(task(42), "42") == 0.0  # nothing boxed
    answer = make_verifier("answer")
    assert answer(task("72"), "Natalia sold 48/2 = 24 clips in May.\n#### 72") == 1.0
    assert answer(task("Paris"), "The answer is Paris.") == 1.0
    assert answer(task("Paris"), "The answer is London.") == 0.0


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        ("fuzzy", "unknown_verifier"),
        ({"type": "fuzzy"}, "unknown_verifier"),
        ({"type": "numeric", "tolerence": 1}, "invalid_verifier_option"),
        ({"type": "regex"}, "invalid_verifier_option"),
        ({"type": "regex", "pattern": "("}, "invalid_regex"),
        ({"type": "regex", "pattern": "a", "group": 1}, "invalid_verifier_option"),
        ({"type": "numeric", "tolerance": -1}, "invalid_verifier_option"),
        (42, "invalid_verifier_spec"),
    ],
)
def test_bad_specs_fail_at_construction(spec, code):
    with pytest.raises(VerifierError) as info:
        make_verifier(spec)
    assert info.value.code == code


def test_describe_round_trips_through_make_verifier():
    verify = make_verifier({"type": "regex", "pattern": r"=(\d+)", "compare": "numeric", "tolerance": 0.5})
    again = make_verifier(verify.describe())
    assert again == verify
    assert again(task(3), "x=3") == 1.0


# -- python verifiers ----------------------------------------------------------------------------------------------

MODULE_SOURCE = textwrap.dedent(
    """
    def check(completion, answer, task):
        return completion.strip() == str(answer) and task["metadata"].get("ok", True)

    def partial(completion, answer, task):
        return float(completion)

    def two_args(completion, answer):
        return 1 if completion == answer else 0

    def boom(completion, answer, task):
        raise RuntimeError("tests exploded on purpose")

    def nothing(completion, answer, task):
        return None

    def too_many(a, b, c, d):
        return 1

    async def asynchronous(completion, answer, task):
        return 1

    NOT_A_FUNCTION = 3
    """
)


@pytest.fixture
def verifier_module(tmp_path, monkeypatch):
    name = f"my_verifiers_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_python_verifier_module_function(verifier_module):
    verify = make_verifier(f"{verifier_module}:check")
    assert verify(task("7"), " 7 ") == 1.0
    assert verify(task("7"), "8") == 0.0
    assert verify(task("7", ok=False), "7") == 0.0  # the task dict reaches the function
    assert verify.describe() == {"type": "python", "function": f"{verifier_module}:check"}
    assert make_verifier({"type": "python", "function": f"{verifier_module}:two_args"})(task("a"), "a") == 1.0


def test_python_verifier_results_are_clamped(verifier_module):
    verify = make_verifier(f"{verifier_module}:partial")
    assert verify(task(None), "0.25") == 0.25
    assert verify(task(None), "7") == 1.0
    assert verify(task(None), "-3") == 0.0


def test_python_verifier_from_a_file_path(tmp_path):
    folder = tmp_path / "checks"
    folder.mkdir()
    (folder / "grade.py").write_text("def grade(completion, answer, task):\n    return completion == answer\n")
    assert make_verifier(f"{folder / 'grade.py'}:grade")(task("x"), "x") == 1.0
    relative = make_verifier("checks/grade.py:grade", base_dir=tmp_path)
    assert relative(task("x"), "y") == 0.0


def test_python_verifier_that_raises_is_wrapped_with_task_id_and_text(verifier_module):
    verify = make_verifier(f"{verifier_module}:boom")
    with pytest.raises(VerifierError) as info:
        verify(task("1", task_id="prob-3"), "x")
    assert info.value.code == "verifier_raised"
    assert "prob-3" in info.value.message
    assert "RuntimeError: tests exploded on purpose" in info.value.message
    assert info.value.task_id == "prob-3"
    assert isinstance(info.value.__cause__, RuntimeError)


def test_python_verifier_returning_none_is_an_error(verifier_module):
    with pytest.raises(VerifierError) as info:
        make_verifier(f"{verifier_module}:nothing")(task("1"), "1")
    assert info.value.code == "verifier_bad_return"


def test_python_verifier_construction_errors(verifier_module, tmp_path):
    with pytest.raises(VerifierError) as info:
        make_verifier("no_such_module_xyz:check")
    assert info.value.code == "verifier_import_failed"
    assert "no_such_module_xyz" in info.value.message and "PYTHONPATH" in info.value.message

    with pytest.raises(VerifierError) as info:
        make_verifier(f"{verifier_module}:missing")
    assert info.value.code == "verifier_function_missing"
    assert "'missing'" in info.value.message and "check" in info.value.message  # lists what exists

    with pytest.raises(VerifierError) as info:
        make_verifier(f"{verifier_module}:NOT_A_FUNCTION")
    assert info.value.code == "verifier_not_callable"

    with pytest.raises(VerifierError) as info:
        make_verifier(f"{verifier_module}:too_many")
    assert info.value.code == "verifier_bad_signature"

    with pytest.raises(VerifierError) as info:
        make_verifier(f"{verifier_module}:asynchronous")
    assert info.value.code == "verifier_not_sync"

    with pytest.raises(VerifierError) as info:
        make_verifier("nowhere/grade.py:grade", base_dir=tmp_path)
    assert info.value.code == "verifier_not_found"
    assert str(tmp_path) in info.value.message

    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('needs numpy')\n")
    with pytest.raises(VerifierError) as info:
        make_verifier(f"{broken}:grade")
    assert info.value.code == "verifier_import_failed" and "needs numpy" in info.value.message

    with pytest.raises(VerifierError) as info:
        make_verifier({"type": "python"})
    assert info.value.code == "invalid_verifier_spec"


# -- grader-style final answers (issue 9) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 42\nI hope this answer is helpful!", "42"),
        ("#### 42 I hope this answer is helpful!", "42"),
        ("The answer is 42. I hope this answer is helpful!", "42"),
        ("#### 42 #### 42 #### 4", "4"),  # the LAST #### counts
        ("#### Step 1: add\n14 + 28 = 42, so the answer is 42.", "42"),  # a markdown heading is not an answer
        ("so 14 + 28 = 42. #### 42", "42"),
        ("The answer is 41.\nThe final answer is 42. Done", "42"),
        ("The answer is Paris. I hope this answer is helpful!", "Paris"),
    ],
)
def test_extract_answer_takes_the_final_answer(text, expected):
    assert extract_final_answer(text, "answer") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1{,}000", 1000.0), (r"1\,000", 1000.0), (r"\$18.90", 18.9), (r"-\frac{3}{4}", -0.75), (r"\dfrac34", 0.75),
     ("12 cm", 12.0), (r"12\text{ cm}", 12.0), ("72 dollars", 72.0), (r"50\%", 50.0), ("three", None)],
)
def test_parse_number_reads_latex_and_units(value, expected):
    assert parse_number(value) == expected


@pytest.mark.parametrize("kind", ["numeric", "answer", "boxed"])
def test_gsm8k_references_in_numeric_verifiers(kind):
    reference = "Half of 48 is <<48/2=24>>24.\n48 + 24 = <<48+24=72>>72\n#### 72"
    right = {"numeric": "so 72", "answer": "#### 72", "boxed": r"\boxed{72}"}[kind]
    wrong = {"numeric": "so 24", "answer": "#### 24", "boxed": r"\boxed{24}"}[kind]
    verifier = make_verifier(kind)
    assert verifier(task(reference), right) == 1.0
    assert verifier(task(reference), wrong) == 0.0


def test_exact_keeps_comparing_the_whole_reference_but_drops_reasoning():
    verifier = make_verifier("exact")
    assert verifier(task("rationale\n#### 5"), "5") == 0.0
    assert verifier(task("5"), "<think>\nhmm\n</think>\n\n5") == 1.0
    assert verifier(task("5"), "<think>5") == 0.0  # cut off while thinking


def test_numeric_last_number_reads_latex_fractions_and_separators():
    verifier = make_verifier("numeric")
    assert verifier(task("-0.75"), r"so it is -\frac{3}{4}") == 1.0
    assert verifier(task("1000"), r"a total of 1{,}000") == 1.0
    assert verifier(task("1000"), r"a total of 1{,}001") == 0.0
