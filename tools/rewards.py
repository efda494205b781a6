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
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import MessageError

if TYPE_CHECKING:
    from .tasks import Task

__all__ = [
    "AnswerVerifier",
    "PythonVerifier",
    "Verifier",
    "VerifierError",
    "extract_final_answer",
    "make_verifier",
    "parse_number",
]

EXTRACT_MODES = ("full", "last_number", "boxed", "answer", "regex")
COMPARE_MODES = ("exact", "numeric", "auto")
BUILTIN_TYPES = ("exact", "numeric", "regex", "boxed", "answer")
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

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"
_NUMBER_RE = re.compile(rf"(?:{_NUMBER})(?:\s*/\s*(?:{_NUMBER}))?")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_RES = (
    re.compile(r"^[ \t]*#{4}[ \t]*(?P<value>[^\n]+)", re.MULTILINE),
    re.compile(
        r"\b(?:final[ \t]+)?answer[ \t]*(?:\*\*)?[ \t]*(?:is\b|:|=)[ \t]*:?[ \t]*(?P<value>[^\n]+)",
        re.IGNORECASE,
    ),
)
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


def _last_answer_line(text: str) -> str | None:
    best: tuple[int, str] | None = None
    for pattern in _ANSWER_RES:
        for match in pattern.finditer(text):
            if best is None or match.start() >= best[0]:
                best = (match.start(), match.group("value"))
    if best is None:
        return None
    value = _clean_answer(best[1])
    return value or None


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
        matches = _NUMBER_RE.findall(text)
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


def parse_number(text: Any) -> float | None:
    """A number from an answer-like value: ``42``, ``"1,234"``, ``"$5"``, ``"50%"``, ``"3/4"``, ``"\\frac{3}{4}"``."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    if not isinstance(text, str):
        return None
    value = text.strip().strip("$").strip()
    value = value.replace("\\!", "").replace("\\,", "").replace("\\%", "%").rstrip("%").rstrip(".").strip()
    frac = _FRAC_RE.match(value)
    if frac:
        value = f"{frac.group(1)}/{frac.group(2)}"
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
        return extract_final_answer(completion or "", self.extract, pattern=self._compiled, group=self.group)

    def __call__(self, task: Task, completion: str) -> float:
        answers = _acceptable_answers(task)
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
        got, expected_number = parse_number(_clean_answer(extracted)), parse_number(answer)
        return got is not None and expected_number is not None and _numbers_close(
            got, expected_number, self.tolerance, self.rel_tolerance
        )


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
        args: tuple[Any, ...] = (completion, task.answer, task.to_dict())[: self.arity]
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


def make_verifier(spec: str | dict, *, base_dir: str | os.PathLike[str] | None = None) -> Verifier:
    """Build a verifier from a spec (see the module docstring). Raises :class:`VerifierError` on a bad spec."""
    base = Path(base_dir).expanduser().resolve() if base_dir is not None else None
    if isinstance(spec, str):
        text = spec.strip()
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
                                "answer or python)")
        kind = kind.strip().lower()
        if kind == "python":
            unknown = sorted(set(options) - _PYTHON_OPTIONS)
            if unknown:
                raise _bad_option(f"unknown option(s) {', '.join(unknown)} for a python verifier; allowed: function")
            reference = options.get("function") or options.get("path") or options.get("module")
            if not isinstance(reference, str):
                raise VerifierError("invalid_verifier_spec", "a python verifier needs 'function': 'module:function'")
            return _make_python_verifier(reference, base)
        if kind not in BUILTIN_TYPES:
            raise VerifierError(
                "unknown_verifier", f"unknown verifier type {kind!r}; use one of {', '.join(BUILTIN_TYPES)}, python"
            )
        return _make_builtin(kind, options)
    raise VerifierError(
        "invalid_verifier_spec", f"a verifier spec must be a string or a dict, got {type(spec).__name__}"
    )
