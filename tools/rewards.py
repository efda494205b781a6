"""Binary reward verifiers: ``verifier(task, completion) -> float`` in ``[0, 1]`` (1.0 = correct).

ReST-EM needs a computable reward (final-answer match for MATH, unit tests for APPS). A built-in verifier is two
pure steps – **extract** the final answer from the completion, then **compare** it with ``task.answer`` (a value, or a
list of acceptable values):

=================  ===================================================  =========================================
spec               extract                                              compare
=================  ===================================================  =========================================
``"exact"``        the whole completion, whitespace-stripped            string equality
``"numeric"``      the last number (or ``extract``: boxed/answer/regex  ``|a - b| <= tolerance`` (``rel_tolerance``
                   first, then the first number inside that span)      too); answers may be ``"1/2"``, ``"1,234"``
``"regex"``        the last match's ``group`` of ``pattern``            ``compare``: exact (default)/numeric/auto
``"boxed"``        the last ``\\boxed{...}`` (nested braces handled)     auto: normalised string equality, else
                                                                         numeric equality when both parse
``"answer"``       the last ``answer: X`` / ``the answer is X`` /       auto
                   ``#### X`` line
=================  ===================================================  =========================================

Dict specs take ``{"type": ..., **options}``: ``tolerance`` (1e-6), ``rel_tolerance`` (0), ``extract``, ``pattern``,
``group`` (1), ``compare``, ``ignore_case`` (false). Unknown options are an error, so typos surface at construction.
When extraction finds nothing the reward is 0.0.

A **python** verifier is ``"module:function"``, ``"path/to/file.py:function"`` (relative paths resolve against
``base_dir``, else the working directory) or ``{"type": "python", "function": "..."}``. It is called as
``fn(completion, answer, task_dict)`` (a two-parameter ``fn(completion, answer)`` also works) and may return a
bool/int/float, which is clamped to ``[0, 1]``; ``None``, NaN or a non-number is an error.

Errors are :class:`VerifierError` ``(code, message)``: at construction for an unknown type, a bad option, an
unimportable module or a missing function (the message says what to fix); at call time when a python verifier
raises or returns garbage, or a built-in verifier meets a task with no reference answer (the message names the
task id and carries the exception text, so a loop can fail with a clear status instead of training on zero rewards).

Verifiers are small frozen objects: ``describe()`` gives a JSON-able spec to persist with a run, and ``blocking``
tells an async caller whether to run it in a worker thread (python verifiers may run unit tests).

Rules every verifier shares (the way graders read answers):

* **Reasoning is not the answer.** The completion's reasoning block is removed before anything else
  (:func:`strip_reasoning`): everything up to the last ``</think>`` (Qwen3 / DeepSeek-R1 templates; the opening tag
  may sit in the prompt), or, for a block that never closed, everything from ``<think>`` on. A chat response's
  separate ``reasoning_content`` is never scored (:mod:`.evaluate` reads ``content`` only).
* **The final answer wins.** ``answer`` extraction takes the text after the last ``####`` (GSM8K), else the last
  ``final answer: X`` / ``the final answer is X``, else the last ``answer: X`` / ``the answer is X`` whose value has a
  digit or LaTeX (else the last one at all); the value ends at the end of its line and of its sentence, so
  ``#### 42`` followed by "I hope this answer is helpful!" is ``42``. ``boxed`` takes the last ``\\boxed{}``.
* **GSM8K-form references.** A reference holding ``####`` (a worked rationale ending ``#### 72``) means the text
  after the last ``####`` (:func:`~learning_mcp.tools.tasks.reference_final_answer`) for every verifier that
  compares numbers or answers (``numeric``, ``answer``, ``boxed``, ``math``, and ``regex`` with a numeric/auto
  compare); ``exact`` compares the whole completion with the whole reference, as before.

The ``math`` verifier (``"math"`` or ``{"type": "math"}``, no options) judges mathematical equivalence with
math-verify (the optional ``math`` extra; a clear ``missing_dependency`` error when absent), run in a helper
process (:mod:`.mathcheck`) because its timeouts are signal-based. It extracts the answer span like a grader –
the last ``\\boxed{}``, else the ``####`` / final-answer line, else math-verify's own search of the whole text (the
rightmost LaTeX or number) – and accepts LaTeX vs plain numbers, fractions vs decimals (6 decimal places),
``x = 5``, ``1{,}000`` / ``1,000``, ``\\$18.90``, ``12\\text{ cm}`` / ``72 dollars``, percentages, sets (order-free)
and tuples/intervals (ordered).

:func:`zero_score_warning` turns "this verifier scored every validation problem 0 on the seed model" into a warning
that says what that usually means (a reference format the verifier cannot read), for a loop to show at its start.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import MessageError
from .mathcheck import MathVerifyMissing, math_equal, require_math_verify
from .tasks import reference_final_answer

if TYPE_CHECKING:
    from .tasks import Task

__all__ = [
    "AnswerVerifier",
    "MathVerifier",
    "PythonVerifier",
    "Verifier",
    "VerifierError",
    "extract_final_answer",
    "make_verifier",
    "parse_number",
    "strip_reasoning",
    "zero_score_warning",
]

EXTRACT_MODES = ("full", "last_number", "boxed", "answer", "regex")
COMPARE_MODES = ("exact", "numeric", "auto")
BUILTIN_TYPES = ("exact", "numeric", "regex", "boxed", "answer", "math")
_OPTIONS = {"type", "tolerance", "rel_tolerance", "extract", "pattern", "group", "compare", "ignore_case"}
_PYTHON_OPTIONS = {"type", "function", "path", "module"}


class Verifier(Protocol):
    def __call__(self, task: Task, completion: str) -> float: ...


class VerifierError(MessageError):
    """A verifier that cannot be built or that failed on a task. ``code`` is snake_case."""

    def __init__(self, code: str, message: str, *, task_id: str | None = None):
        super().__init__(code, message)
        self.task_id = task_id

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "task_id": self.task_id}


# ---------------------------------------------------------------------------------------------------------------
# Extraction (pure)

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"


def strip_reasoning(text: str) -> str:
    """The completion without its reasoning block (pure): the text after the last ``</think>``; else, when a
    ``<think>`` never closed (cut off while thinking), the text before it; else the text unchanged."""
    if not text:
        return text or ""
    close = text.rfind(_THINK_CLOSE)
    if close >= 0:
        return text[close + len(_THINK_CLOSE):].strip()
    start = text.find(_THINK_OPEN)
    if start >= 0:
        return text[:start].strip()
    return text


_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"
_NUMBER_RE = re.compile(
    rf"[-+]?\\[dt]?frac\s*\{{\s*[-+]?\d+\s*\}}\s*\{{\s*[-+]?\d+\s*\}}|\\[dt]?frac\d\d"
    rf"|(?:{_NUMBER})(?:\s*/\s*(?:{_NUMBER}))?"
)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES_RE = re.compile(r"#{4,}[ \t]*(?P<value>(?:[^\n#]|#(?!###))*)")
_HEADING_RE = re.compile(r"[A-Z][a-z]+[ \t]+\S")  # "#### Step 1: add" is a markdown heading, not an answer
_ANSWER_PHRASE_RE = re.compile(
    r"\b(?P<final>final[ \t]+)?answer[ \t]*(?:\*\*)?[ \t]*(?:is\b|:|=)[ \t]*:?[ \t]*(?P<value>[^\n]+)",
    re.IGNORECASE,
)
_SENTENCE_END_RE = re.compile(r"(?<=\S)[.!?](?:\s+|\*+\s*)(?=[A-Z(\[])")
_MATHLIKE_RE = re.compile(r"[\d\\]")
_LEADING_VALUE_RE = re.compile(r"(\S+)\s")
_LEADING_NUMBER_RE = re.compile(r"(?P<number>[-+]?\\?\$?[-+]?\d[\d,.{}/]*%?)\s+(?=[A-Z](?:[a-z]|\s))")
_FRAC_RE = re.compile(r"^\\[dt]?frac\s*\{([^{}]+)\}\s*\{([^{}]+)\}$")


def _last_boxed(text: str) -> str | None:
    matches = list(_BOXED_RE.finditer(text))
    for match in reversed(matches):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            char = text[pos]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[start:pos].strip()
    return None


def _clean_answer(value: str) -> str:
    value = value.strip()
    boxed = _last_boxed(value)
    if boxed is not None:
        return boxed
    value = value.strip("*_ \t")
    if len(value) >= 2 and value[0] == value[-1] == "$":
        value = value[1:-1].strip()
    return value.rstrip(".").strip()


def _first_sentence(value: str) -> str:
    """``"42. I hope this helps!"`` → ``"42."``, ``"42 I hope…"`` → ``"42"``: a value ends where a sentence
    starts."""
    match = _SENTENCE_END_RE.search(value)
    if match:
        value = value[: match.start() + 1]
    lead = _LEADING_NUMBER_RE.match(value)
    return lead.group("number") if lead else value


def _last_answer_line(text: str) -> str | None:
    """The final answer line's value: after the last ``####``; else the last "final answer"; else the last
    "answer is/:" whose value looks mathematical (a digit or LaTeX), else the last one."""
    hashes = [match.group("value") for match in _HASHES_RE.finditer(text)]
    hashes = [_clean_answer(_first_sentence(value.strip())) for value in hashes if not _HEADING_RE.match(value)]
    hashes = [value for value in hashes if value]
    if hashes:
        return hashes[-1]
    phrases = list(_ANSWER_PHRASE_RE.finditer(text))
    if not phrases:
        return None
    values = [(m.group("final") is not None, _clean_answer(_first_sentence(m.group("value")))) for m in phrases]
    values = [(final, value) for final, value in values if value]
    if not values:
        return None
    for wanted in (lambda f, v: f, lambda f, v: bool(_MATHLIKE_RE.search(v)), lambda f, v: True):
        chosen = [value for final, value in values if wanted(final, value)]
        if chosen:
            return chosen[-1]
    return None  # pragma: no cover


def extract_final_answer(
    text: str, mode: str, *, pattern: str | re.Pattern[str] | None = None, group: int | str = 1
) -> str | None:
    """The final answer in ``text`` according to ``mode``, or None when there is none (pure).

    Modes: ``full`` (stripped text), ``last_number`` (the last number, e.g. ``"1,234"`` or ``"-3/4"``), ``boxed``
    (the last ``\\boxed{...}``, nested braces handled), ``answer`` (the last ``answer: X`` / ``the answer is X`` /
    ``#### X``, markdown bold, ``$...$`` and a trailing period removed), ``regex`` (``group`` of the last match of
    ``pattern``).
    """
    if text is None:
        return None
    if mode == "full":
        return text.strip()
    if mode == "last_number":
        matches = _NUMBER_RE.findall(_latex_number_marks(text))
        return matches[-1].strip() if matches else None
    if mode == "boxed":
        return _last_boxed(text)
    if mode == "answer":
        return _last_answer_line(text)
    if mode == "regex":
        if pattern is None:
            raise ValueError("regex extraction needs a pattern")
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        last = None
        for last in compiled.finditer(text):
            pass
        if last is None:
            return None
        value = last.group(group)
        return value.strip() if value is not None else None
    raise ValueError(f"unknown extraction mode {mode!r}; use one of {', '.join(EXTRACT_MODES)}")


def _latex_number_marks(text: str) -> str:
    """``1{,}000`` → ``1,000``; ``1\\,000`` / ``1\\!000`` → ``1000``; ``\\$`` → ``$``; ``\\%`` → ``%``
    (pure)."""
    text = text.replace("{,}", ",").replace("\\$", "$").replace("\\%", "%")
    return re.sub(r"(?<=\d)\\[,!;: ](?=\d)", "", text)


def parse_number(text: Any) -> float | None:
    """A number from an answer-like value: ``42``, ``"1,234"``, ``"1{,}234"``, ``"$5"``, ``"\\$5"``, ``"50%"``,
    ``"3/4"``, ``"\\frac{3}{4}"``, ``"\\dfrac34"``, ``"12 cm"`` / ``"12\\text{ cm}"`` (a trailing unit word)."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    if not isinstance(text, str):
        return None
    value = _latex_number_marks(text.strip())
    value = re.sub(r"\\(?:text|mbox|mathrm)\s*\{\s*([A-Za-z .]*)\}", r" \1", value).strip()
    value = re.sub(r"(?<=[\d%])\s*[A-Za-z][A-Za-z .]*$", "", value)  # "12 cm", "72 dollars"
    value = re.sub(r"\\[dt]?frac(\d)(\d)", r"\\frac{\1}{\2}", value)
    value = value.strip().strip("$").strip()
    value = value.replace("\\!", "").replace("\\,", "").rstrip("%").rstrip(".").strip()
    sign = ""
    if value[:1] in "-+" and value[1:].lstrip().startswith("\\"):
        sign, value = value[0], value[1:].strip()
    frac = _FRAC_RE.match(value)
    if frac:
        value = f"{sign}{frac.group(1)}/{frac.group(2)}"
    else:
        value = sign + value
    value = re.sub(r"(?<=\d),(?=\d{3}\b)", "", value).replace(" ", "")
    try:
        if "/" in value:
            numerator, denominator = value.split("/", 1)
            return float(Fraction(numerator) / Fraction(denominator))
        result = float(value)
    except (ValueError, ZeroDivisionError):
        return None
    return result if math.isfinite(result) else None


# ---------------------------------------------------------------------------------------------------------------
# Comparison (pure)


def _normalize_text(value: str, ignore_case: bool) -> str:
    value = " ".join(value.split())
    return value.casefold() if ignore_case else value


def _normalize_auto(value: str, ignore_case: bool) -> str:
    value = _clean_answer(value)
    value = value.replace("\\left", "").replace("\\right", "").replace("\\!", "")
    value = re.sub(r"\\text\{([^{}]*)\}", r"\1", value)
    return _normalize_text(value, ignore_case).replace(" ", "")


def _acceptable_answers(task: Task) -> list[Any]:
    answer = task.answer
    if answer is None:
        raise VerifierError(
            "missing_answer",
            f"task {task.id!r} has no reference answer (answer/reference/target/solution/tests); "
            "add one or use a python verifier",
            task_id=task.id,
        )
    values = list(answer) if isinstance(answer, (list, tuple)) else [answer]
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise VerifierError(
                "invalid_answer",
                f"task {task.id!r}: reference answer {value!r} must be a string or a number (or a list of them)",
                task_id=task.id,
            )
    return values


def _numbers_close(a: float, b: float, tolerance: float, rel_tolerance: float) -> bool:
    return math.isclose(a, b, abs_tol=tolerance, rel_tol=rel_tolerance)


# ---------------------------------------------------------------------------------------------------------------
# Verifier objects


@dataclass(frozen=True)
class AnswerVerifier:
    """A built-in verifier: extract, then compare. Construct through :func:`make_verifier`."""

    kind: str
    extract: str = "full"
    compare: str = "exact"
    pattern: str | None = None
    group: int | str = 1
    tolerance: float = 1e-6
    rel_tolerance: float = 0.0
    ignore_case: bool = False
    blocking: bool = field(default=False, compare=False)
    _compiled: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def describe(self) -> dict:
        spec: dict[str, Any] = {"type": self.kind, "extract": self.extract, "compare": self.compare}
        if self.pattern is not None:
            spec.update(pattern=self.pattern, group=self.group)
        if self.compare in ("numeric", "auto"):
            spec.update(tolerance=self.tolerance, rel_tolerance=self.rel_tolerance)
        if self.ignore_case:
            spec["ignore_case"] = True
        return spec

    def extract_answer(self, completion: str) -> str | None:
        """The answer this verifier reads in ``completion`` (reasoning block removed first), or None."""
        text = strip_reasoning(completion or "")
        return extract_final_answer(text, self.extract, pattern=self._compiled, group=self.group)

    def __call__(self, task: Task, completion: str) -> float:
        answers = _acceptable_answers(task)
        if self.compare != "exact":
            answers = [reference_final_answer(answer) for answer in answers]
        extracted = self.extract_answer(completion)
        if extracted is None:
            return 0.0
        return 1.0 if any(self._matches(extracted, answer, task) for answer in answers) else 0.0

    def _matches(self, extracted: str, answer: Any, task: Task) -> bool:
        if self.compare == "exact":
            expected = answer if isinstance(answer, str) else str(answer)
            if self.ignore_case:
                return extracted.strip().casefold() == expected.strip().casefold()
            return extracted.strip() == expected.strip()
        if self.compare == "numeric":
            expected_number = parse_number(answer)
            if expected_number is None:
                raise VerifierError(
                    "invalid_answer",
                    f"task {task.id!r}: reference answer {answer!r} is not a number (the numeric verifier needs one)",
                    task_id=task.id,
                )
            got = parse_number(extracted)
            if got is None and self.extract != "last_number":
                # the extracted span starts with the answer ("12 apples. Then ..."): take its first number
                first = _NUMBER_RE.search(extracted)
                got = parse_number(first.group(0)) if first else None
            return got is not None and _numbers_close(got, expected_number, self.tolerance, self.rel_tolerance)
        # auto: normalised string equality, else numeric equality when both sides are numbers
        expected_text = answer if isinstance(answer, str) else str(answer)
        if _normalize_auto(extracted, self.ignore_case) == _normalize_auto(expected_text, self.ignore_case):
            return True
        expected_number = parse_number(answer)
        if expected_number is None:
            return False
        cleaned = _clean_answer(extracted)
        got = parse_number(cleaned)
        if got is None:  # "42 and that is all": a number answer is the span's leading number (GSM8K's "#### 42")
            lead = _LEADING_VALUE_RE.match(cleaned)
            got = parse_number(lead.group(1)) if lead else None
        return got is not None and _numbers_close(got, expected_number, self.tolerance, self.rel_tolerance)


@dataclass(frozen=True)
class MathVerifier:
    """Mathematical equivalence by math-verify (see the module docstring). Construct through :func:`make_verifier`.

    ``blocking`` is True: each check waits on the helper process (milliseconds; a runaway expression is cut off
    after :data:`~learning_mcp.tools.mathcheck.HARD_TIMEOUT_S` seconds and scores 0).
    """

    kind: str = "math"
    blocking: bool = field(default=True, compare=False)

    def describe(self) -> dict:
        return {"type": "math"}

    def extract_answer(self, completion: str) -> str | None:
        """The answer span handed to math-verify: the last ``\\boxed{}``, else the ``####`` / final-answer line,
        else the whole completion (math-verify then takes its rightmost LaTeX or number). None when empty."""
        found = self._answer(completion)
        return found[0] if found else None

    @staticmethod
    def _answer(completion: str) -> tuple[str, bool] | None:
        """``(span, is_free_text)``; free text is searched by math-verify, a span is parsed as one expression."""
        text = strip_reasoning(completion or "")
        span = _last_boxed(text)
        if span is None:
            span = _last_answer_line(text)
        if span is None:
            text = text.strip()
            return (text, True) if text else None
        span = _tidy_math(span)
        return (span, False) if span else None

    def __call__(self, task: Task, completion: str) -> float:
        answers = [reference_final_answer(answer) for answer in _acceptable_answers(task)]
        found = self._answer(completion)
        if found is None:
            return 0.0
        extracted, free_text = found
        try:
            for answer in answers:
                reference = _tidy_math(_clean_answer(str(answer)))
                if reference and math_equal(reference, extracted, answer_is_text=free_text):
                    return 1.0
        except MathVerifyMissing as exc:
            raise VerifierError("missing_dependency", str(exc), task_id=task.id) from None
        return 0.0


_TRAILING_WORDS_RE = re.compile(r"^(?P<number>[-+]?\\?\$?\s*[-+]?\d[\d,.{}]*%?)\s+[A-Za-z][A-Za-z .]*$")


def _tidy_math(span: str) -> str:
    """Grader-style clean-up of an answer span before math-verify parses it (pure): markdown bold, a trailing
    period, surrounding ``$…$`` / ``\\(…\\)``, and plain-text unit words after a number (``72 dollars`` →
    ``72``)."""
    value = span.strip().strip("*_ \t").strip()
    if value.startswith("\\(") and value.endswith("\\)"):
        value = value[2:-2].strip()
    if len(value) >= 2 and value[0] == value[-1] == "$":
        value = value[1:-1].strip()
    value = value.rstrip(".").strip()
    match = _TRAILING_WORDS_RE.match(value)
    return match.group("number") if match else value


@dataclass(frozen=True)
class PythonVerifier:
    """A user function ``fn(completion, answer, task_dict)`` imported from a module or a file."""

    reference: str
    function: Callable[..., Any] = field(compare=False, repr=False)
    arity: int = 3
    blocking: bool = field(default=True, compare=False)

    def describe(self) -> dict:
        return {"type": "python", "function": self.reference}

    def __call__(self, task: Task, completion: str) -> float:
        args: tuple[Any, ...] = (strip_reasoning(completion or ""), task.answer, task.to_dict())[: self.arity]
        try:
            result = self.function(*args)
        except Exception as exc:  # the user's code: report, never swallow
            raise VerifierError(
                "verifier_raised",
                f"verifier {self.reference} raised on task {task.id!r}: {type(exc).__name__}: {exc}",
                task_id=task.id,
            ) from exc
        return _coerce_reward(result, self.reference, task.id)


def _coerce_reward(result: Any, reference: str, task_id: str) -> float:
    if isinstance(result, bool):
        return 1.0 if result else 0.0
    try:
        value = float(result)
    except (TypeError, ValueError):
        raise VerifierError(
            "verifier_bad_return",
            f"verifier {reference} returned {result!r} for task {task_id!r}; return a bool or a number in [0, 1]",
            task_id=task_id,
        ) from None
    if math.isnan(value):
        raise VerifierError(
            "verifier_bad_return", f"verifier {reference} returned NaN for task {task_id!r}", task_id=task_id
        )
    return min(1.0, max(0.0, value))


# ---------------------------------------------------------------------------------------------------------------
# Construction


def _split_reference(reference: str) -> tuple[str, str]:
    target, sep, function = reference.strip().rpartition(":")
    if not sep or not target or not function or not function.isidentifier():
        raise VerifierError(
            "invalid_verifier_spec",
            f"python verifier {reference!r} must look like 'package.module:function' or 'path/to/file.py:function'",
        )
    return target, function


def _looks_like_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import_target(target: str, reference: str, base_dir: Path | None) -> Any:
    if _looks_like_path(target):
        path = Path(target).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        path = path.resolve()
        if not path.is_file():
            raise VerifierError(
                "verifier_not_found",
                f"verifier file {path} does not exist (from {reference!r}); give an absolute path or one relative "
                f"to {base_dir or Path.cwd()}",
            )
        module_name = f"_learning_mcp_verifier_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise VerifierError("verifier_import_failed", f"cannot load {path} as a python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise VerifierError(
                "verifier_import_failed",
                f"importing verifier file {path} failed: {type(exc).__name__}: {exc}",
            ) from exc
        return module
    try:
        return importlib.import_module(target)
    except Exception as exc:
        hint = (
            "; make it importable from the server's Python (install it or add its folder to PYTHONPATH) "
            "or pass a file path 'path/to/file.py:function'"
            if isinstance(exc, ModuleNotFoundError)
            else ""
        )
        raise VerifierError(
            "verifier_import_failed", f"cannot import module {target!r} for verifier {reference!r}: "
            f"{type(exc).__name__}: {exc}{hint}"
        ) from exc


def _positional_arity(function: Callable[..., Any], reference: str) -> int:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return 3
    for arity in (3, 2):
        try:
            signature.bind(*range(arity))
            return arity
        except TypeError:
            continue
    raise VerifierError(
        "verifier_bad_signature",
        f"verifier {reference} has signature {signature}; it must accept (completion, answer, task) "
        "or (completion, answer)",
    )


def _make_python_verifier(reference: str, base_dir: Path | None) -> PythonVerifier:
    target, name = _split_reference(reference)
    module = _import_target(target, reference, base_dir)
    if not hasattr(module, name):
        available = sorted(
            attr for attr, value in vars(module).items() if callable(value) and not attr.startswith("_")
        )
        raise VerifierError(
            "verifier_function_missing",
            f"{target} has no function {name!r}; define it there or name one of: {', '.join(available) or 'none'}",
        )
    function = getattr(module, name)
    if not callable(function):
        raise VerifierError("verifier_not_callable", f"{target}.{name} is a {type(function).__name__}, not a function")
    if inspect.iscoroutinefunction(function):
        raise VerifierError("verifier_not_sync", f"verifier {reference} is async; make it a regular function")
    return PythonVerifier(reference=reference, function=function, arity=_positional_arity(function, reference))


def _bad_option(message: str) -> VerifierError:
    return VerifierError("invalid_verifier_option", message)


def _make_builtin(kind: str, options: dict[str, Any]) -> AnswerVerifier:
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise _bad_option(f"unknown option(s) {', '.join(unknown)} for verifier {kind!r}; allowed: "
                          f"{', '.join(sorted(_OPTIONS - {'type'}))}")
    defaults = {
        "exact": ("full", "exact"),
        "numeric": ("last_number", "numeric"),
        "regex": ("regex", "exact"),
        "boxed": ("boxed", "auto"),
        "answer": ("answer", "auto"),
    }[kind]
    extract = options.get("extract", defaults[0])
    compare = options.get("compare", defaults[1])
    if extract not in EXTRACT_MODES:
        raise _bad_option(f"extract must be one of {', '.join(EXTRACT_MODES)}, got {extract!r}")
    if compare not in COMPARE_MODES:
        raise _bad_option(f"compare must be one of {', '.join(COMPARE_MODES)}, got {compare!r}")
    if kind == "numeric":
        compare = "numeric"
    pattern = options.get("pattern")
    group = options.get("group", 1)
    compiled = None
    if extract == "regex" or pattern is not None:
        if not isinstance(pattern, str) or not pattern:
            raise _bad_option(f"verifier {kind!r} with regex extraction needs a 'pattern' string")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise VerifierError("invalid_regex", f"pattern {pattern!r} does not compile: {exc}") from None
        if isinstance(group, bool) or not isinstance(group, (int, str)):
            raise _bad_option("group must be an integer or a group name")
        if isinstance(group, int) and not 0 <= group <= compiled.groups:
            raise _bad_option(f"pattern {pattern!r} has {compiled.groups} group(s); group {group} does not exist")
        if isinstance(group, str) and group not in compiled.groupindex:
            raise _bad_option(f"pattern {pattern!r} has no group named {group!r}")
        extract = "regex"
    numbers = {}
    for key, default in (("tolerance", 1e-6), ("rel_tolerance", 0.0)):
        value = options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise _bad_option(f"{key} must be a number >= 0, got {value!r}")
        numbers[key] = float(value)
    ignore_case = options.get("ignore_case", False)
    if not isinstance(ignore_case, bool):
        raise _bad_option("ignore_case must be true or false")
    return AnswerVerifier(
        kind=kind,
        extract=extract,
        compare=compare,
        pattern=pattern,
        group=group,
        ignore_case=ignore_case,
        _compiled=compiled,
        **numbers,
    )


def _make_math(options: dict[str, Any]) -> MathVerifier:
    unknown = sorted(set(options) - {"type"})
    if unknown:
        raise _bad_option(f"unknown option(s) {', '.join(unknown)} for verifier 'math'; it takes none (math-verify "
                          "compares to 6 decimal places)")

    try:
        require_math_verify()
    except MathVerifyMissing as exc:
        raise VerifierError("missing_dependency", str(exc)) from None
    return MathVerifier()


def make_verifier(spec: str | dict, *, base_dir: str | os.PathLike[str] | None = None) -> Verifier:
    """Build a verifier from a spec (see the module docstring). Raises :class:`VerifierError` on a bad spec."""
    base = Path(base_dir).expanduser().resolve() if base_dir is not None else None
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() == "math":
            return _make_math({})
        if text.lower() in BUILTIN_TYPES:
            return _make_builtin(text.lower(), {})
        if ":" in text:
            return _make_python_verifier(text, base)
        raise VerifierError(
            "unknown_verifier",
            f"unknown verifier {spec!r}; use one of {', '.join(BUILTIN_TYPES)}, or 'module:function' / "
            "'path/to/file.py:function' for a python verifier",
        )
    if isinstance(spec, dict):
        options = dict(spec)
        kind = options.get("type")
        if kind is None and "function" in options:
            kind = "python"
        if not isinstance(kind, str):
            raise VerifierError("unknown_verifier", "a verifier dict needs a 'type' (exact, numeric, regex, boxed, "
                                "answer, math or python)")
        kind = kind.strip().lower()
        if kind == "python":
            unknown = sorted(set(options) - _PYTHON_OPTIONS)
            if unknown:
                raise _bad_option(f"unknown option(s) {', '.join(unknown)} for a python verifier; allowed: function")
            reference = options.get("function") or options.get("path") or options.get("module")
            if not isinstance(reference, str):
                raise VerifierError("invalid_verifier_spec", "a python verifier needs 'function': 'module:function'")
            return _make_python_verifier(reference, base)
        if kind == "math":
            return _make_math(options)
        if kind not in BUILTIN_TYPES:
            raise VerifierError(
                "unknown_verifier", f"unknown verifier type {kind!r}; use one of {', '.join(BUILTIN_TYPES)}, python"
            )
        return _make_builtin(kind, options)
    raise VerifierError(
        "invalid_verifier_spec", f"a verifier spec must be a string or a dict, got {type(spec).__name__}"
    )


# ---------------------------------------------------------------------------------------------------------------
# Start-of-loop check (pure)


def _verifier_name(verifier: Any) -> str:
    describe = getattr(verifier, "describe", None)
    spec = describe() if callable(describe) else verifier
    if isinstance(spec, dict):
        kind = spec.get("type", "custom")
        return f"{kind} ({spec['function']})" if kind == "python" and spec.get("function") else str(kind)
    return str(spec) if isinstance(spec, str) else type(verifier).__name__


def _quote(value: Any, limit: int = 60) -> str:
    text = " ".join(str(value).split())
    return repr(text if len(text) <= limit else "…" + text[-limit:])


def zero_score_warning(
    rewards_by_problem: Mapping[str, Sequence[float | None]],
    verifier: Any,
    *,
    examples: Sequence[tuple[Task, str]] = (),
    threshold: float = 1.0,
    all_empty: bool = False,
    what: str = "validation problem(s) 0 on the seed model",
) -> str | None:
    """A warning when ``verifier`` scored EVERY problem 0 (no sample reached ``threshold``), else None (pure).

    Meant for the start of a loop: the seed model's validation rewards (``{problem id: [reward, ...]}``). A seed
    model that solves nothing at all is rare; a reference format the verifier cannot read (a GSM8K rationale, LaTeX,
    units, a different answer phrasing) is the usual cause, and it would otherwise cost a whole sampling round.
    ``examples`` – a few ``(task, completion)`` pairs – are shown with what the verifier read on each side
    (``verifier.extract_answer`` when it has one). ``all_empty``: every completion was empty, which points at the
    sampling (max_tokens, stop strings, the chat template), not the verifier. ``what`` words the scope (the
    ``eval`` tool passes its own). Returns None when there are no problems.
    """
    if not rewards_by_problem:
        return None
    if any(r is not None and r >= threshold for rewards in rewards_by_problem.values() for r in rewards):
        return None
    count = len(rewards_by_problem)
    name = _verifier_name(verifier)
    if all_empty:
        return (f"The {name} verifier scored all {count} {what}: every completion was "
                "EMPTY, so the model answered nothing. Check max_tokens, the stop strings and the chat template "
                "(chat_template_kwargs, e.g. a thinking block cut off), then sample again with the `eval` tool.")
    lines = [
        f"The {name} verifier scored all {count} {what}. This usually means a "
        "reference or answer format the verifier cannot read, not a model that knows nothing."
    ]
    extract = getattr(verifier, "extract_answer", None)
    exact = getattr(verifier, "compare", None) == "exact"
    for task, completion in list(examples)[:3]:
        reference = task.answer if exact else reference_final_answer(task.answer)
        read = extract(completion) if callable(extract) else None
        shown = f"; the verifier read {_quote(read)}" if callable(extract) else ""
        lines.append(
            f"- problem {task.id}: reference {_quote(task.answer)} (compared as {_quote(reference)}); "
            f"completion {_quote(completion)}{shown}"
        )
    lines.append(
        "Check a few references and completions with the `eval` tool, then pick a verifier that reads them: 'math' "
        "for GSM8K/MATH-style answers (LaTeX, fractions, units, '#### N' references), 'numeric' for the last number, "
        "'answer' for 'the answer is X' lines, or a python verifier for a custom format."
    )
    return "\n".join(lines)
