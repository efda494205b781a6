"""Task files: the problems a ReST-EM loop samples, scores and trains on.

A task file is JSONL, one problem per line::

    {"id": "gsm8k-17", "prompt": "What is 2+3?", "system": "Answer with a number.", "answer": "5", "split": "train"}
    {"id": 18, "messages": [{"role": "user", "content": "..."}], "tests": ["assert f(1) == 2"], "difficulty": 3}

* ``id`` – a string or an integer, required and unique (``1`` and ``"1"`` are the same id). Ids are kept as strings.
* the prompt – ``messages`` (a chat list) **or** ``prompt`` (a string that becomes one user message). ``system``
  (a string) is prepended as a system message; with ``messages`` it is only allowed when they have no system message.
* the reference – ``answer``; aliases ``reference``, ``target``, ``solution``, ``tests``. When several are present the
  first in that order is the reference and the others stay in ``metadata`` (MATH rows carry both a worked
  ``solution`` and a final ``answer``). A task without one is fine for task apps and python verifiers.
  A reference in GSM8K form – a worked rationale ending ``#### 72`` – is kept as written in ``answer``; verifiers
  that compare answers read its final answer with :func:`reference_final_answer` (the text after the last ``####``).
* ``split`` – ``train`` / ``validation`` (``val``, ``valid`` and ``dev`` are accepted and normalised) / ``test``,
  or absent.
* everything else goes into ``metadata``; a ``metadata`` object is merged into it (that is what :func:`write_tasks`
  writes, so files round-trip).

:func:`load_tasks` checks the whole file and raises one :class:`TaskFileError` that lists up to 20 problems, each with
its line number, so an agent can fix a file in one pass. Parsing a record is the pure :func:`parse_task`.

:func:`split_tasks` decides train vs validation:

* **Explicit splits** (any task has a ``split``): validation = tasks marked ``validation``; train = tasks marked
  ``train`` *and unmarked tasks*; ``test`` tasks are in neither (held out: the loop must not select on them –
  read them with ``[t for t in tasks if t.split == "test"]``). If the file marks splits but has no validation
  task, validation is carved out of the train pool exactly as below.
* **No splits**: a seeded, order-independent shuffle: each id is ranked by ``sha256(f"{seed}:{id}")`` and the lowest
  ``round(len * val_fraction)`` ids (at least 1 when ``val_fraction > 0`` and there are 2+ tasks; train never empty)
  are validation. Reordering the file does not change the split, and adding a task moves at most one other task.

Both lists keep the file's order.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_jsonl_atomic
from .errors import MessageError

__all__ = [
    "ANSWER_KEYS",
    "Task",
    "TaskFileError",
    "load_tasks",
    "normalize_split",
    "parse_task",
    "reference_final_answer",
    "split_tasks",
    "task_to_record",
    "write_tasks",
]

ANSWER_KEYS = ("answer", "reference", "target", "solution", "tests")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
    "test": "test",
}
MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool")
_RESERVED_KEYS = {"id", "messages", "prompt", "system", "split", "metadata", *ANSWER_KEYS}
_MAX_REPORTED_PROBLEMS = 20


@dataclass
class Task:
    id: str
    messages: list[dict]
    answer: Any = None
    split: str | None = None
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The task as a plain dict (what python verifiers receive as ``task``)."""
        return {
            "id": self.id,
            "messages": self.messages,
            "answer": self.answer,
            "split": self.split,
            "metadata": self.metadata,
        }


class TaskFileError(MessageError):
    """A task file that cannot be used. ``code`` is snake_case; ``message`` names the line(s) and what is wrong.

    ``problems`` lists every ``(line, code, message)`` found (line is None for file-level problems).
    """

    def __init__(self, code: str, message: str, problems: list[tuple[int | None, str, str]] | None = None):
        super().__init__(code, message)
        self.problems = problems or [(None, code, message)]

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


class _RecordProblem(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def reference_final_answer(reference: Any) -> Any:
    """The final answer of a reference (pure): for a string holding ``####`` (GSM8K's ``"<rationale>\\n#### 72"``),
    the text after the last ``####`` up to the end of its line, stripped; anything else unchanged.

    Source: GSM8K's answer format (Cobbe et al. 2021, ``grade-school-math``: "the final numeric solution for the
    problem, prepended with ####"), which its graders extract the same way.
    """
    if not isinstance(reference, str) or "####" not in reference:
        return reference
    tail = reference[reference.rfind("####") + 4:]
    for line in tail.split("\n"):
        if line.strip():
            return line.strip()
    return ""


def normalize_split(value: Any) -> str | None:
    """``None``/``""`` → None; ``val``/``valid``/``dev`` → ``validation``; unknown names raise ValueError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError(f"split must be a string, got {type(value).__name__}")
    split = SPLIT_ALIASES.get(value.strip().lower())
    if split is None:
        raise ValueError(f"unknown split {value!r}; use train, validation (or val) or test")
    return split


def _normalize_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _RecordProblem("invalid_id", f"`id` must be a string or an integer, got {json.dumps(value)}")
    text = str(value).strip()
    if not text:
        raise _RecordProblem("invalid_id", "`id` is empty")
    return text


def _check_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise _RecordProblem("invalid_messages", "`messages` must be a non-empty list of {role, content} objects")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _RecordProblem("invalid_messages", f"{where} is not an object")
        role = message.get("role")
        if role not in MESSAGE_ROLES:
            raise _RecordProblem(
                "invalid_messages", f"{where} has role {json.dumps(role)}; use one of {', '.join(MESSAGE_ROLES)}"
            )
        content = message.get("content")
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            raise _RecordProblem("invalid_messages", f"{where} ({role}) has no `content`")
        if content is not None and not isinstance(content, (str, list)):
            raise _RecordProblem("invalid_messages", f"{where} `content` must be a string or a list of parts")
    if not any(m["role"] == "user" for m in messages):
        raise _RecordProblem("invalid_messages", "`messages` has no user message")
    return messages


# fields other datasets use for the prompt (GSM8K: question/answer; MATH: problem/solution; Alpaca: instruction)
_PROMPT_GUESSES = ("question", "problem", "input", "instruction", "query")


def _prompt_guess(record: Mapping[str, Any]) -> str | None:
    """The field ``record`` probably holds its prompt in, when it has neither ``messages`` nor ``prompt``."""
    if "messages" in record or "prompt" in record:
        return None
    return next((guess for guess in _PROMPT_GUESSES if guess in record), None)


def _build_messages(record: Mapping[str, Any]) -> list[dict]:
    has_messages = "messages" in record
    has_prompt = "prompt" in record
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise _RecordProblem("invalid_system", "`system` must be a string")
    if has_messages and has_prompt:
        raise _RecordProblem("ambiguous_prompt", "has both `messages` and `prompt`; keep one")
    if has_prompt:
        prompt = record["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise _RecordProblem("invalid_prompt", "`prompt` must be a non-empty string")
        messages = [{"role": "user", "content": prompt}]
    elif has_messages:
        messages = [dict(message) for message in _check_messages(record["messages"])]
    else:
        keys = ", ".join(sorted(record)) or "none"
        guess = _prompt_guess(record)
        hint = f"; rename `{guess}` to `prompt`" if guess else ""
        raise _RecordProblem("missing_prompt", f"has no `messages` or `prompt` (keys: {keys}){hint}")
    if system:
        if any(m.get("role") == "system" for m in messages):
            raise _RecordProblem("ambiguous_system", "has `system` and a system message in `messages`; keep one")
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def parse_task(record: Any) -> Task:
    """One JSON record → :class:`Task` (pure). Raises ``TaskFileError`` without a line number on a bad record."""
    try:
        return _parse_record(record)
    except _RecordProblem as problem:
        raise TaskFileError(problem.code, problem.message) from None


def _parse_record(record: Any) -> Task:
    if not isinstance(record, dict):
        raise _RecordProblem("not_an_object", f"is not a JSON object (got {type(record).__name__})")
    if "id" not in record or record["id"] is None:
        guess = _prompt_guess(record)
        also = f", and no `prompt` (rename `{guess}` to `prompt`)" if guess else ""
        raise _RecordProblem("missing_id", f"has no `id`{also}; every task needs a unique string or integer id")
    task_id = _normalize_id(record["id"])
    messages = _build_messages(record)
    answer_key = next((key for key in ANSWER_KEYS if key in record), None)
    answer = record[answer_key] if answer_key else None
    try:
        split = normalize_split(record.get("split"))
    except ValueError as exc:
        raise _RecordProblem("invalid_split", str(exc)) from None
    metadata: dict[str, Any] = {}
    nested = record.get("metadata")
    if nested is not None:
        if not isinstance(nested, dict):
            raise _RecordProblem("invalid_metadata", "`metadata` must be an object")
        metadata.update(nested)
    for key, value in record.items():
        if key not in _RESERVED_KEYS or (key in ANSWER_KEYS and key != answer_key):
            metadata[key] = value
    return Task(id=task_id, messages=messages, answer=answer, split=split, metadata=metadata)


def load_tasks(path: str | os.PathLike[str]) -> list[Task]:
    """Read a JSONL task file. Raises :class:`TaskFileError` listing every problem found (with line numbers)."""
    file_path = Path(path).expanduser()
    if not file_path.is_file():
        raise TaskFileError("file_not_found", f"task file {file_path} does not exist or is not a file")
    tasks: list[Task] = []
    problems: list[tuple[int | None, str, str]] = []
    first_line_of: dict[str, int] = {}
    with file_path.open("r", encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                message = f"line {line_no}: invalid JSON ({exc.msg} at column {exc.colno})"
                problems.append((line_no, "invalid_json", message))
                continue
            try:
                task = _parse_record(record)
            except _RecordProblem as problem:
                problems.append((line_no, problem.code, f"line {line_no}: {problem.message}"))
                continue
            if task.id in first_line_of:
                problems.append(
                    (
                        line_no,
                        "duplicate_id",
                        f"line {line_no}: duplicate id {task.id!r} (first used on line {first_line_of[task.id]}); "
                        "ids must be unique",
                    )
                )
                continue
            first_line_of[task.id] = line_no
            tasks.append(task)
    if problems:
        shown = problems[:_MAX_REPORTED_PROBLEMS]
        more = len(problems) - len(shown)
        lines = [message for _, _, message in shown]
        if more:
            lines.append(f"... and {more} more")
        header = f"task file {file_path} has {len(problems)} problem(s):"
        if all(code == "missing_id" for _, code, _ in problems) and not tasks and "rename `" in problems[0][2]:
            # a raw dataset export (GSM8K's question/answer lines): one command converts the whole file
            field = problems[0][2].split("rename `", 1)[1].split("`", 1)[0]
            lines.append(f"This looks like a raw dataset export ({field}/answer). Convert it: jq -c --slurp "
                         f"'to_entries[] | {{id: .key, prompt: .value.{field}, answer: .value.answer}}' "
                         f"{file_path} > {file_path.with_name(file_path.stem + '.tasks.jsonl')} (GSM8K-form "
                         "answers ending in '#### 72' are read by the "
                         "numeric, answer, boxed and math verifiers).")
        raise TaskFileError(problems[0][1], "\n".join([header, *lines]), problems)
    if not tasks:
        raise TaskFileError("no_tasks", f"task file {file_path} contains no tasks")
    return tasks


def _hash_rank(task_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{task_id}".encode()).hexdigest()


def _carve_validation(pool: list[Task], val_fraction: float, seed: int) -> set[str]:
    if val_fraction <= 0 or len(pool) < 2:
        return set()
    count = max(1, round(len(pool) * val_fraction))
    count = min(count, len(pool) - 1)
    ranked = sorted(pool, key=lambda task: _hash_rank(task.id, seed))
    return {task.id for task in ranked[:count]}


def split_tasks(tasks: Iterable[Task], *, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """``(train, validation)``; see the module docstring for the rules. ``test`` tasks are in neither list."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    task_list = list(tasks)
    if any(task.split == "validation" for task in task_list):
        train = [task for task in task_list if task.split in (None, "train")]
        validation = [task for task in task_list if task.split == "validation"]
        return train, validation
    pool = [task for task in task_list if task.split in (None, "train")]
    val_ids = _carve_validation(pool, val_fraction, seed)
    return [t for t in pool if t.id not in val_ids], [t for t in pool if t.id in val_ids]


def task_to_record(task: Task) -> dict:
    """The JSONL record :func:`load_tasks` reads back into an equal :class:`Task`."""
    record: dict[str, Any] = {"id": task.id, "messages": task.messages, "answer": task.answer}
    if task.split is not None:
        record["split"] = task.split
    if task.metadata:
        record["metadata"] = task.metadata
    return record


def write_tasks(path: str | os.PathLike[str], tasks: Iterable[Task]) -> Path:
    """Write tasks as JSONL (atomically: temp file + rename). Returns the path written."""
    file_path = Path(path).expanduser()
    write_jsonl_atomic(file_path, (task_to_record(task) for task in tasks))
    return file_path
