"""Streaming validation of SFT datasets (JSONL, OpenAI chat ``messages[]`` format, Synth's rules).

What it checks
    Synth's own rules (``synth_ai/learning/sft/data.py``: ``coerce_example`` and helpers), with Synth's
    messages word for word, plus learning-mcp's additions (learning-api.md §9 item 11, training-notes.md
    §1.6, §2.3 and §6): UTF-8, a role allow-list, at least one assistant message, ``weight`` 0/1 on
    assistant messages only, tool-call arguments, ``tool_call_id`` <-> tool-call id consistency, tool
    definitions in Synth's flat form or OpenAI's nested form, content parts and image parts (URL or
    ``data:image/...;base64,`` with valid base64), images in the wrong role, and a per-message image limit.

How a record is judged
    Synth stops at the first problem in a record, so a record that breaks one of Synth's rules gets exactly
    one error: Synth's. Our additional checks are gathered in the same pass and reported (all of them) only
    when the record passes every Synth rule. This keeps the output on a file of Synth-style defects
    identical to Synth's CLI while still listing everything we know about records Synth would accept.

Design (one pass, constant memory)
    * The file is read in binary, in fixed-size blocks, into one reused buffer; lines are memoryview slices
      of it (no per-line allocation) and only the unfinished last line of a block is carried over. A line
      longer than ``MAX_LINE_BYTES`` is reported (``line_too_long``) and skipped without being buffered,
      so memory is bounded whatever the input.
    * Line numbers follow Python's text mode (universal newlines), which is what Synth's CLI counts: a lone
      ``\\r`` also ends a line. A block is only re-split when it holds such a lone ``\\r``.
    * Records are parsed with ``orjson`` when it is installed (2-3 times faster than ``json``); bytes are
      only decoded in the rare error path. If orjson rejects a line, the line is decoded as UTF-8 and
      re-parsed with the standard library exactly as Synth does (``json.loads(line.strip())``): that gives
      Synth's error text (``Expecting value`` ...) and accepts what Synth accepts (``NaN``, huge integers,
      lone surrogates). Without orjson the same stdlib path is used for every line.
    * Checks are tight Python: exact type tests, frozensets, no regular expressions. A record made only of
      ``{role, content}`` text turns takes a fast path; others get the full check. A ``tools`` list equal
      to one checked recently is not checked again (datasets repeat the same tools on every line).
    * Statistics are counted per block in bulk (``Counter.update`` and min/max/sum built-ins); the 95th
      percentiles come from mergeable log-bucket histograms (see ``_Histogram``): constant memory.
    * Files of ``PARALLEL_MIN_BYTES`` or more, when a CPU is idle, are split into byte ranges checked by
      two worker processes (``ProcessPoolExecutor``, "spawn"). Each range starts at a line start; workers
      return counts and the first ``max_errors`` issues with range-local line numbers; results are merged
      in file order, with at most two ranges in flight per worker. The report is identical to the
      in-process one; if worker processes cannot be started, the file is checked in-process.

This module runs inside an MCP stdio server: it never prints.
"""

from __future__ import annotations

import binascii
import json
import math
import os
import tempfile
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, TypedDict

try:  # optional speed-up; everything works with the standard library alone
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    _orjson = None

__all__ = [
    "ALLOWED_ROLES",
    "DatasetFileError",
    "DatasetIssue",
    "MAX_LINE_BYTES",
    "ValidationReport",
    "validate_jsonl",
    "validate_record",
    "write_head",
]

ALLOWED_ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool")
_ALLOWED_ROLE_SET = frozenset(ALLOWED_ROLES)
_ALLOWED_ROLES_TEXT = ", ".join(ALLOWED_ROLES)
_IMAGE_PART_TYPES = frozenset(("image_url", "image"))
_IMAGE_DATA_FORMATS = frozenset(("png", "jpeg", "jpg", "webp", "gif"))
_SEQUENCE_TYPES = (list, tuple, str)  # what JSON can produce that passes Synth's ``isinstance(x, Sequence)``
_MESSAGE_CORE_KEYS = 2  # "role" and "content": such a message needs no further key look-ups

MIN_RECOMMENDED_EXAMPLES = 10  # OpenAI's minimum for a fine-tuning file
MAX_LINE_BYTES = 64 * 1024 * 1024  # a longer line is reported (line_too_long) and skipped, never buffered
_READ_BLOCK_BYTES = 4 * 1024 * 1024
_BASE64_SLICE_CHARS = 1024 * 1024  # base64 payloads are checked in slices of this many characters (multiple of 4)
_CHARS_PER_TOKEN = 4
_RECENT_TOOLS_KEPT = 4
_LISTED_LINES = 10  # line numbers a warning lists
JSON_DOCUMENT_MAX_BYTES = 256 * 1024 * 1024  # a file whose first line is not JSON is re-read as one document up to this

_OVERLONG_LINE = None  # marker yielded by the line reader in place of a line over MAX_LINE_BYTES


class DatasetIssue(TypedDict):
    line: int
    code: str
    message: str


class DatasetFileError(Exception):
    """A problem with the dataset file itself (not its content); ``code`` is a stable snake_case name."""

    def __init__(self, code: str, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path


# --------------------------------------------------------------------------------------------------
# Statistics helpers
# --------------------------------------------------------------------------------------------------


_EXACT_VALUES_LIMIT = 4096  # distinct exact values a histogram keeps before collapsing them into buckets


class _Histogram:
    """Min/mean/p95/max of non-negative integers in constant memory, fed in bulk.

    Values are appended to ``pending`` (a list append per record is the only per-record cost) and folded
    once per block: min, max and sum with C built-ins, and counts with ``Counter.update`` (C). Exact counts
    are kept for up to _EXACT_VALUES_LIMIT distinct values, then collapsed into log buckets: values below
    128 keep their own bucket, larger ones share a bucket with the values of the same exponent and top
    seven bits (relative width 1/64, under 1.6 %). At most 64 buckets exist per power of two, so memory is
    bounded whatever the number of values, and histograms of byte ranges merge exactly by adding counts
    (a reservoir sample could not). A percentile is the lower bound of its bucket, clamped to [min, max].
    """

    __slots__ = ("pending", "exact", "buckets", "count", "total", "low", "high")

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.exact: Counter[int] = Counter()
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.low: int | None = None
        self.high: int | None = None

    def add(self, value: int) -> None:
        self.pending.append(value)

    def fold(self) -> None:
        values = self.pending
        if not values:
            return
        low, high = min(values), max(values)
        if self.low is None or low < self.low:
            self.low = low
        if self.high is None or self.high < high:
            self.high = high
        self.count += len(values)
        self.total += sum(values)
        self.exact.update(values)
        values.clear()
        if len(self.exact) > _EXACT_VALUES_LIMIT:
            self._collapse()

    def _collapse(self) -> None:
        buckets = self.buckets
        for value, count in self.exact.items():
            key = _bucket_key(value)
            buckets[key] = buckets.get(key, 0) + count
        self.exact.clear()

    def merge(self, other: _Histogram) -> None:
        self.fold()
        other.fold()
        self.exact.update(other.exact)
        for key, count in other.buckets.items():
            self.buckets[key] = self.buckets.get(key, 0) + count
        self.count += other.count
        self.total += other.total
        if other.low is not None and (self.low is None or other.low < self.low):
            self.low = other.low
        if other.high is not None and (self.high is None or other.high > self.high):
            self.high = other.high
        if len(self.exact) > _EXACT_VALUES_LIMIT:
            self._collapse()

    def percentile(self, fraction: float) -> int | None:
        """The nearest-rank percentile, as the lower bound of its bucket."""
        self.fold()
        self._collapse()
        if not self.count or self.low is None or self.high is None:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for key in sorted(self.buckets):  # bucket keys sort in value order
            seen += self.buckets[key]
            if seen >= rank:
                return min(max(_bucket_floor(key), self.low), self.high)
        return self.high

    def summary(self) -> dict[str, float | int | None]:
        self.fold()
        if not self.count:
            return {"min": None, "mean": None, "p95": None, "max": None}
        return {
            "min": self.low,
            "mean": round(self.total / self.count, 2),
            "p95": self.percentile(0.95),
            "max": self.high,
        }


def _bucket_key(value: int) -> int:
    """Values below 128 are their own key; others: exponent (shift) and their top seven bits."""
    if value < 128:
        return value
    shift = value.bit_length() - 7
    return (shift << 7) | (value >> shift)  # value >> shift is in [64, 127], so keys sort like values


def _bucket_floor(key: int) -> int:
    if key < 128:
        return key
    return (key & 127) << (key >> 7)


class _Tally:
    """Counters a validation pass accumulates (everything except the errors); ranges merge in file order."""

    __slots__ = (
        "roles",
        "pending_shapes",
        "messages_hist",
        "tokens_hist",
        "images",
        "tool_calls",
        "examples_with_tools",
        "examples_with_images",
        "undefined_tool_calls",
        "undefined_tool_first",
        "images_outside_user",
        "images_outside_user_first",
        "untrainable_examples",
        "untrainable_first",
        "empty_targets",
        "empty_target_lines",
        "line",
        "recent_tools",
    )

    def __init__(self) -> None:
        self.roles: Counter[str] = Counter()
        # The roles of each accepted record, as a tuple ("shape"), not yet counted into ``roles``: datasets
        # have few distinct shapes, so counting shapes (in C) and then their roles is cheaper than per role.
        self.pending_shapes: list[tuple[str, ...]] = []
        self.messages_hist = _Histogram()
        self.tokens_hist = _Histogram()
        self.images = 0
        self.tool_calls = 0
        self.examples_with_tools = 0
        self.examples_with_images = 0
        self.undefined_tool_calls = 0
        self.undefined_tool_first: tuple[int, str] | None = None  # (line, function name)
        self.images_outside_user = 0
        self.images_outside_user_first: tuple[int, str] | None = None  # (line, role)
        self.untrainable_examples = 0
        self.untrainable_first: tuple[int, str] | None = None  # (line, "")
        self.empty_targets = 0  # trained assistant turns with empty/whitespace-only content and no tool calls
        self.empty_target_lines: list[int] = []  # the first _LISTED_LINES lines holding one
        self.line = 0  # line number of the record being checked, for the "first" fields
        self.recent_tools: list[tuple[object, set[str]]] = []  # valid ``tools`` lists seen last, with names

    def fold(self) -> None:
        """Count what was gathered per record (roles, histogram values) in bulk; called once per block."""
        if self.pending_shapes:
            roles = self.roles
            for shape, count in Counter(self.pending_shapes).items():
                for role in shape:
                    roles[role] += count
            self.pending_shapes.clear()
        self.messages_hist.fold()
        self.tokens_hist.fold()

    def merge(self, later: _Tally, line_offset: int) -> None:
        """Add the counts of the range that follows, whose line numbers start after ``line_offset``."""
        later.fold()
        self.fold()
        self.roles.update(later.roles)
        self.messages_hist.merge(later.messages_hist)
        self.tokens_hist.merge(later.tokens_hist)
        for name in (
            "images",
            "tool_calls",
            "examples_with_tools",
            "examples_with_images",
            "undefined_tool_calls",
            "images_outside_user",
            "untrainable_examples",
            "empty_targets",
        ):
            setattr(self, name, getattr(self, name) + getattr(later, name))
        room = _LISTED_LINES - len(self.empty_target_lines)
        self.empty_target_lines += [line + line_offset for line in later.empty_target_lines[:max(0, room)]]
        for name in ("undefined_tool_first", "images_outside_user_first", "untrainable_first"):
            first = getattr(later, name)
            if getattr(self, name) is None and first is not None:
                setattr(self, name, (first[0] + line_offset, first[1]))


# --------------------------------------------------------------------------------------------------
# Record checks
# --------------------------------------------------------------------------------------------------


class _SynthRuleError(Exception):
    """One of Synth's rules failed: the record gets this single error, as Synth's CLI reports it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _base64_is_valid(payload: str) -> bool:
    """True when ``payload`` is canonical, padded base64; decoded slice by slice, never all at once."""
    size = len(payload)
    if size == 0 or size % 4:
        return False
    try:
        for start in range(0, size, _BASE64_SLICE_CHARS):
            piece = payload[start : start + _BASE64_SLICE_CHARS]
            if start + _BASE64_SLICE_CHARS < size and "=" in piece:
                return False  # padding is only allowed at the very end
            binascii.a2b_base64(piece, strict_mode=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _image_url_problem(url: object) -> str | None:
    """Why an image URL is unusable for training, or None when it is fine."""
    if not isinstance(url, str) or not url.strip():
        return "has no URL (expected a non-empty string)"
    if url.startswith(("http://", "https://")):
        host = url.split("://", 1)[1].split("/", 1)[0]
        if not host or any(ch.isspace() for ch in url):
            return f"has a malformed http(s) URL {_clip(url)!r}"
        return None
    if url[:5].lower() == "data:":
        header, comma, payload = url.partition(",")
        if not comma:
            return "has a data URL without a ',' before its payload"
        header = header.lower()
        media = header[5:].split(";", 1)[0]
        if not media.startswith("image/") or media[6:] not in _IMAGE_DATA_FORMATS:
            return (
                f"has a data URL of type {media or 'unknown'!r}; use data:image/<png|jpeg|jpg|webp|gif>;base64,..."
            )
        if not header.endswith(";base64"):
            return "has a data URL that is not base64 encoded; use data:image/<format>;base64,..."
        if not _base64_is_valid(payload):
            return "has a data URL whose base64 payload is invalid (bad characters, padding or length)"
        return None
    local = os.path.expanduser(url[7:] if url.startswith("file://") else url)
    if os.path.isabs(local):  # a local image file: the embedded backend reads it (backend/vision.py)
        return None if os.path.isfile(local) else f"points at local file {_clip(local)!r}, which does not exist"
    return (f"has URL {_clip(url)!r}; use an http(s) URL, a data:image/<format>;base64,... URL or an absolute "
            "local file path")


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _image_url_of(part: dict[str, Any]) -> object:
    """The URL an image part points to, for the shapes Synth and OpenAI use (None when absent)."""
    if part.get("type") == "image_url":
        value = part.get("image_url")
    else:
        value = part.get("image", part.get("image_url", part.get("url")))
    if isinstance(value, dict):
        value = value.get("url")
    return value


def _check_content_parts(
    parts: list[Any], index: int, role: str, max_images: int | None, problems: list[tuple[str, str]]
) -> tuple[int, int]:
    """Check a list of content parts; append problems; return (characters of text, images)."""
    chars = 0
    images = 0
    for part_index, part in enumerate(parts):
        if part.__class__ is not dict:
            problems.append(
                (
                    "invalid_content_part",
                    f"message {index} content part {part_index} is not an object; use "
                    '{"type": "text", "text": "..."} or {"type": "image_url", "image_url": {"url": "..."}}',
                )
            )
            continue
        part_type = part.get("type")
        if part_type == "text":
            text = part.get("text")
            if text.__class__ is str:
                chars += len(text)
            else:
                problems.append(
                    (
                        "invalid_content_part",
                        f"message {index} content part {part_index} is a text part without a string 'text'",
                    )
                )
        elif part_type.__class__ is str and part_type in _IMAGE_PART_TYPES:
            images += 1
            problem = _image_url_problem(_image_url_of(part))
            if problem is not None:
                problems.append(
                    ("invalid_image_url", f"message {index} content part {part_index} (image) {problem}")
                )
        elif not isinstance(part_type, str) or not part_type:
            problems.append(
                (
                    "invalid_content_part",
                    f"message {index} content part {part_index} has no 'type' (expected 'text', 'image_url', ...)",
                )
            )
    if images:
        if role == "assistant":
            problems.append(
                (
                    "image_in_assistant",
                    f"message {index} is an assistant message with {images} image(s); images are only "
                    "allowed in user messages",
                )
            )
        if max_images is not None and images > max_images:
            problems.append(
                (
                    "image_limit",
                    f"message {index} has {images} images; the model allows {max_images} image(s) per "
                    "message (max_images_per_message): split the images across turns or drop some",
                )
            )
    return chars, images


def empty_target_warning(count: int, lines: list[int]) -> str:
    """The warning for ``count`` trained assistant messages with nothing to learn, found on ``lines`` (the first
    few; "…" when ``count`` is larger). Shared by the validator and ``preview_dataset``."""
    more = ", …" if count > len(lines) else ""
    return (f"{count} trained assistant message(s) are empty or whitespace-only (lines {', '.join(map(str, lines))}"
            f"{more}); training on them teaches the model to reply with nothing: write the replies or give those "
            "messages weight 0")


def count_empty_targets(messages: object) -> int:
    """How many trained (``weight`` not 0) assistant messages of one example have nothing to learn
    (:func:`_is_empty_target`); 0 for anything that is not a list of messages."""
    if not isinstance(messages, list):
        return 0
    return sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant" and m.get("weight", 1) != 0
               and _is_empty_target(m.get("content"), m.get("tool_calls")))


def _is_empty_target(content: object, tool_calls: object) -> bool:
    """An assistant target with nothing to learn: no tool calls and no text (empty or whitespace-only)
    and no image in its content."""
    if tool_calls:
        return False
    if content is None:
        return True
    if content.__class__ is str:
        return not content or content.isspace()
    parts = content if isinstance(content, list) else [content]
    for part in parts:
        if isinstance(part, str):
            if part.strip():
                return False
        elif isinstance(part, dict):
            if part.get("type") in _IMAGE_PART_TYPES or part.get("type") == "input_image":
                return False
            text = part.get("text")
            if not isinstance(text, str) or text.strip():
                return False
        else:
            return False
    return True


def _argument_problem(arguments: object) -> str | None:
    """Why a tool call's ``arguments`` is unusable, or None (a JSON object, or a string encoding one)."""
    if arguments is None or arguments.__class__ is dict:
        return None
    if arguments.__class__ is str:
        try:
            parsed = _loads_json(arguments)
        except (ValueError, RecursionError):
            return f"arguments is not valid JSON ({_clip(arguments, 40)!r})"
        if parsed.__class__ is not dict:
            return "arguments must encode a JSON object, e.g. '{\"x\": 1}'"
        return None
    return f"arguments must be a JSON string or an object, not {type(arguments).__name__}"


def _loads_json(text: str) -> Any:
    if _orjson is not None:
        try:
            return _orjson.loads(text)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(text)


def _tool_names(tools: object) -> set[str]:
    """Check a record's ``tools`` (Synth's rules, either definition form); return the function names."""
    if not isinstance(tools, _SEQUENCE_TYPES):
        raise _SynthRuleError("tools_not_list", "tools must be provided as a list when present")
    names = set()
    for tool_index, tool in enumerate(tools):
        if tool.__class__ is not dict:
            raise _SynthRuleError("tool_not_object", f"tool {tool_index} is not an object")
        names.add(_tool_definition_name(tool, tool_index))
    return names


def _tool_definition_name(tool: dict[str, Any], index: int) -> str:
    """Validate one tool definition (Synth's flat form or OpenAI's nested form); return its name."""
    name = tool.get("name")
    definition = tool
    if name is None and tool.get("type") == "function" and tool.get("function").__class__ is dict:
        definition = tool["function"]  # OpenAI form, accepted (Synth itself reads only the flat form)
        name = definition.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _SynthRuleError("tool_missing_name", f"tool {index} missing name")
    description = definition.get("description")
    if description is not None and not isinstance(description, str):
        raise _SynthRuleError(
            "tool_description_not_string", f"tool {index} description must be a string if present"
        )
    parameters = definition.get("parameters")
    if parameters is not None and parameters.__class__ is not dict:
        raise _SynthRuleError(
            "tool_parameters_not_object", f"tool {index} parameters must be an object if present"
        )
    return name


def _check_tool_calls(
    calls: object,
    index: int,
    known_call_ids: set[str],
    called_names: list[str],
    problems: list[tuple[str, str]],
) -> int:
    """Check one message's ``tool_calls``; return the characters they add to the token estimate."""
    if not isinstance(calls, (list, tuple)):
        raise _SynthRuleError("tool_calls_not_list", f"message {index} tool_calls must be a list")
    chars = 0
    for call_index, call in enumerate(calls):
        if call.__class__ is not dict:
            raise _SynthRuleError("tool_call_not_object", f"tool_call {call_index} is not an object")
        name = None
        arguments = None
        function = call.get("function")
        if function.__class__ is dict:
            candidate = function.get("name")
            if candidate.__class__ is str:
                name = candidate
            arguments = function.get("arguments")
        if name is None:
            candidate = call.get("name")
            if isinstance(candidate, str):
                name = candidate
                arguments = call.get("arguments")
        if name is None or not name.strip():
            raise _SynthRuleError("tool_call_missing_name", f"tool_call {call_index} missing function name")
        called_names.append(name)
        chars += len(name)
        if arguments.__class__ is str:
            chars += len(arguments)
        elif arguments is not None:
            chars += len(json.dumps(arguments, separators=(",", ":"), ensure_ascii=False, default=str))
        problem = _argument_problem(arguments)
        if problem is not None:
            problems.append(("invalid_tool_call", f"message {index} tool_call {call_index} {problem}"))
        call_id = call.get("id")
        if call_id is not None:
            known_call_ids.add(call_id if call_id.__class__ is str else str(call_id))
    return chars


def _check_message_extras(
    message: dict[str, Any],
    index: int,
    role: str,
    known_call_ids: set[str],
    called_names: list[str],
    problems: list[tuple[str, str]],
) -> tuple[int, int, int]:
    """Keys beyond role/content. Return (characters, tool calls, trained: False for weight 0 assistants)."""
    chars = 0
    tool_calls = 0
    trained = True
    calls = message.get("tool_calls")
    if calls is not None:
        chars += _check_tool_calls(calls, index, known_call_ids, called_names, problems)
        tool_calls = len(calls)
    if "name" in message:
        name = message["name"]
        if name is not None and name.__class__ is not str:
            raise _SynthRuleError("name_not_string", f"message {index} name must be a string if present")
    reasoning = message.get("reasoning")
    if reasoning is not None:
        if reasoning.__class__ is not str:
            raise _SynthRuleError("reasoning_not_string", f"message {index} reasoning must be a string if present")
        chars += len(reasoning)  # raw_content repeats content and reasoning, so it is not counted
    raw_content = message.get("raw_content")
    if raw_content is not None and raw_content.__class__ is not str:
        raise _SynthRuleError("raw_content_not_string", f"message {index} raw_content must be a string if present")
    weight = message.get("weight")
    if weight is not None:
        if role != "assistant":
            problems.append(
                (
                    "invalid_weight",
                    f"message {index} is a {role} message with a weight; weight (0 or 1) is only allowed "
                    "on assistant messages: remove it",
                )
            )
        elif weight.__class__ is not int or weight not in (0, 1):
            problems.append(
                (
                    "invalid_weight",
                    f"message {index} weight must be the integer 0 or 1, not {json.dumps(weight)[:40]}",
                )
            )
        elif weight == 0:
            trained = False
    if role == "tool":
        call_id = message.get("tool_call_id")
        if call_id is None:
            problems.append(
                (
                    "missing_tool_call_id",
                    f"message {index} is a tool message without tool_call_id; set it to the id of the "
                    "assistant tool call it answers",
                )
            )
        else:
            call_id = call_id if call_id.__class__ is str else str(call_id)
            if call_id not in known_call_ids:
                known = ", ".join(sorted(known_call_ids)[:5]) or "none"
                problems.append(
                    (
                        "unknown_tool_call_id",
                        f"message {index} tool_call_id {_clip(call_id, 40)!r} matches no earlier tool call "
                        f"in this example (tool call ids so far: {known})",
                    )
                )
    return chars, tool_calls, trained


def _check_record(
    record: object,
    min_messages: int,
    require_assistant: bool,
    max_images: int | None,
    tally: _Tally,
) -> list[tuple[str, str]]:
    """All problems of one parsed record as (code, message); updates ``tally`` when Synth accepts it."""
    if _is_plain_valid_record(record, min_messages, require_assistant, tally):
        return _NO_PROBLEMS
    return _check_record_fully(record, min_messages, require_assistant, max_images, tally)


def _check_record_fully(
    record: object,
    min_messages: int,
    require_assistant: bool,
    max_images: int | None,
    tally: _Tally,
) -> list[tuple[str, str]]:
    """The full check (every rule, every message), for records the fast path does not accept."""
    try:
        return _check_record_or_raise(record, min_messages, require_assistant, max_images, tally)
    except _SynthRuleError as failure:
        return [(failure.code, failure.message)]


_NO_PROBLEMS: list[tuple[str, str]] = []  # shared, never mutated
_PLAIN_ROLES = frozenset(("system", "developer", "user", "assistant"))  # "tool" needs tool_call_id checks


def _is_plain_valid_record(record: object, min_messages: int, require_assistant: bool, tally: _Tally) -> bool:
    """Fast path: True (and ``tally`` updated) for a valid record of plain text turns.

    "Plain" means: an object whose ``messages`` is a list of objects holding exactly ``role`` (system,
    developer, user or assistant) and ``content`` (a string), with no ``tools`` and an object or nothing as
    ``metadata``. Such a record passes every rule when it has enough turns and (if required) an assistant
    turn. Anything else returns False, and the full check runs and reports the problems.
    """
    if record.__class__ is not dict:
        return False
    messages = record.get("messages")
    if messages.__class__ is not list:
        return False
    count = len(messages)
    if count < min_messages or not count or record.get("tools") is not None:
        return False
    metadata = record.get("metadata")
    if metadata is not None and metadata.__class__ is not dict:
        return False
    plain_roles = _PLAIN_ROLES
    chars = 0
    try:
        for message in messages:
            if message.__class__ is not dict or len(message) != 2:
                return False
            content = message["content"]
            if content.__class__ is not str or message["role"] not in plain_roles:  # TypeError: unhashable
                return False
            if (not content or content.isspace()) and message["role"] == "assistant":
                return False  # an empty target: the full check counts it
            chars += len(content)
    except (KeyError, TypeError):
        return False
    shape = tuple([message["role"] for message in messages])
    if require_assistant and "assistant" not in shape:
        return False
    tally.pending_shapes.append(shape)
    tally.messages_hist.pending.append(count)
    tally.tokens_hist.pending.append(-(-chars // _CHARS_PER_TOKEN))
    return True


def _check_record_or_raise(
    record: object,
    min_messages: int,
    require_assistant: bool,
    max_images: int | None,
    tally: _Tally,
) -> list[tuple[str, str]]:
    if record.__class__ is not dict:
        raise _SynthRuleError("record_not_object", "record is not an object")
    messages = record.get("messages")
    if messages.__class__ is not list and not isinstance(messages, _SEQUENCE_TYPES):
        raise _SynthRuleError("missing_messages", "missing messages[] list")
    if len(messages) < min_messages:
        raise _SynthRuleError("too_few_messages", f"missing messages[] with at least {min_messages} turns")

    problems: list[tuple[str, str]] = []
    allowed_roles = _ALLOWED_ROLE_SET
    record_roles: list[str] = []
    add_role = record_roles.append  # counted only if Synth accepts the record
    known_call_ids: set[str] = set()
    called_names: list[str] = []
    chars = 0
    assistants = 0
    untrained_assistants = 0
    trained_assistants = 0
    empty_targets = 0
    images = 0
    images_outside_user = 0
    outside_user_role = ""
    tool_calls = 0
    index = -1
    for message in messages:
        index += 1
        if message.__class__ is not dict:
            raise _SynthRuleError("message_not_object", f"message {index} is not an object")
        role = message.get("role")
        if role.__class__ is not str or role not in allowed_roles:
            if not isinstance(role, str) or not role.strip():
                raise _SynthRuleError("invalid_role", f"message {index} has invalid role")
            problems.append(
                (
                    "unknown_role",
                    f"message {index} has role {_clip(role, 40)!r}; allowed roles are {_ALLOWED_ROLES_TEXT}",
                )
            )
        add_role(role)
        content = message.get("content")
        content_type = content.__class__
        if content_type is str:
            chars += len(content)
        elif content is None:
            pass
        elif content_type is list or content_type is dict:
            part_chars, part_images = _check_content_parts(
                content if content_type is list else [content], index, role, max_images, problems
            )
            chars += part_chars
            if part_images:
                images += part_images
                if role != "user" and role != "assistant":
                    images_outside_user += part_images
                    outside_user_role = outside_user_role or role
        else:  # a number or a boolean (Synth accepts str, list, dict and None)
            raise _SynthRuleError(
                "unsupported_content_type",
                f"message {index} has unsupported content type {type(content).__name__}",
            )
        if role == "assistant":
            assistants += 1
        trained = True
        # A message holding exactly "role" and "content" (the common case) needs no more look-ups.
        if len(message) > _MESSAGE_CORE_KEYS or role == "tool" or "content" not in message:
            extra_chars, extra_calls, trained = _check_message_extras(
                message, index, role, known_call_ids, called_names, problems
            )
            chars += extra_chars
            tool_calls += extra_calls
            if not trained:
                untrained_assistants += 1
        if role == "assistant" and trained:
            trained_assistants += 1
            if _is_empty_target(content, message.get("tool_calls")):
                empty_targets += 1

    tools = record.get("tools")
    tool_names: set[str] | None = None
    if tools is not None:
        # Datasets repeat a few tools lists: an equality test (in C) replaces re-checking a recent one.
        for seen_tools, seen_names in tally.recent_tools:
            if tools == seen_tools:
                tool_names = seen_names
                break
        else:
            tool_names = _tool_names(tools)
            tally.recent_tools.insert(0, (tools, tool_names))
            del tally.recent_tools[_RECENT_TOOLS_KEPT:]
    metadata = record.get("metadata")
    if metadata is not None and metadata.__class__ is not dict:
        raise _SynthRuleError("metadata_not_object", "metadata must be an object if present")

    # Synth accepts the record: add our record-level checks, then count it.
    if require_assistant and not assistants:
        problems.append(
            (
                "no_assistant_message",
                "no assistant message; each example needs at least one assistant turn to learn from",
            )
        )
    elif assistants and untrained_assistants == assistants:
        tally.untrainable_examples += 1
        if tally.untrainable_first is None:
            tally.untrainable_first = (tally.line, "")
    if empty_targets:
        tally.empty_targets += empty_targets
        if len(tally.empty_target_lines) < _LISTED_LINES:
            tally.empty_target_lines.append(tally.line)
        if empty_targets == trained_assistants:
            problems.append(
                (
                    "empty_assistant_target",
                    "every trained assistant message is empty or whitespace-only, so the example teaches the "
                    "model to reply with nothing; write the replies, or remove the example",
                )
            )
    if tool_names and called_names:
        for name in called_names:
            if name not in tool_names:
                tally.undefined_tool_calls += 1
                if tally.undefined_tool_first is None:
                    tally.undefined_tool_first = (tally.line, name)
    tally.pending_shapes.append(tuple(record_roles))
    tally.messages_hist.pending.append(index + 1)
    tally.tokens_hist.pending.append(-(-chars // _CHARS_PER_TOKEN))
    if tool_calls:
        tally.tool_calls += tool_calls
    if tools:
        tally.examples_with_tools += 1
    if images:
        tally.images += images
        tally.examples_with_images += 1
        if images_outside_user:
            tally.images_outside_user += images_outside_user
            if tally.images_outside_user_first is None:
                tally.images_outside_user_first = (tally.line, outside_user_role)
    return problems


def validate_record(
    record: object,
    *,
    min_messages: int = 2,
    max_images_per_message: int | None = None,
    require_assistant: bool = True,
    warnings: list[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """Problems of one parsed JSONL record as ``(code, message)`` pairs; empty when it is valid.

    A record breaking one of Synth's rules gets Synth's single message. Pass a list as ``warnings`` to
    also receive non-fatal findings (``undefined_tool``, ``image_outside_user``, ``untrainable_example``).
    """
    tally = _Tally()
    problems = _check_record(record, min_messages, require_assistant, max_images_per_message, tally)
    if warnings is not None:
        warnings.extend(_tally_warnings(tally))
    return list(problems)


# --------------------------------------------------------------------------------------------------
# Reading and parsing lines
# --------------------------------------------------------------------------------------------------


def _split_universal_newlines(lines: list[bytes]) -> list[bytes]:
    """Re-split lines (already split on \\n) on lone \\r, as Python's text mode does."""
    result: list[bytes] = []
    for line in lines:
        if b"\r" not in line:
            result.append(line)
            continue
        if line.endswith(b"\r"):
            line = line[:-1]  # the \r of a \r\n pair
        result.extend(line.split(b"\r"))
    return result


def _has_lone_carriage_return(buffer: bytearray, start: int, stop: int) -> bool:
    """True when buffer[start:stop] holds a \\r that is not followed by \\n (stop excluded from the pairs)."""
    if buffer.find(b"\r", start, stop) < 0:
        return False
    return buffer.count(b"\r", start, stop) != buffer.count(b"\r\n", start, stop + 1)


def _iter_line_batches(handle: Any, stop: int | None = None) -> Iterator[list[Any]]:
    """Yield the lines of ``handle`` from its position to ``stop`` (or EOF) in order, one batch per block.

    Lines are memoryview slices of one reused buffer: no per-line allocation, and no page faults on fresh
    memory for each block. A batch is only valid until the next one is requested. Blocks holding a lone
    \\r are re-split as bytes (text-mode line numbering). A line longer than MAX_LINE_BYTES comes out as
    ``_OVERLONG_LINE`` (None) and its bytes are never buffered whole.
    """
    block_bytes = _READ_BLOCK_BYTES
    buffer = bytearray(2 * block_bytes)
    view = memoryview(buffer)
    readinto = handle.readinto
    remaining = None if stop is None else max(0, stop - handle.tell())
    carried = 0  # bytes of an unfinished line at the start of the buffer
    skipping = False  # inside an over-long line: drop bytes up to the next \n
    while True:
        want = block_bytes if remaining is None else min(block_bytes, remaining)
        if carried + want > len(buffer):
            grown = bytearray(max(2 * len(buffer), carried + want))
            grown[:carried] = view[:carried]
            buffer, view = grown, memoryview(grown)
        got = readinto(view[carried : carried + want]) if want else 0
        if not got:
            break
        if remaining is not None:
            remaining -= got
        filled = carried + got
        last_newline = buffer.rfind(b"\n", carried, filled)
        if last_newline < 0:
            carried = filled
            if skipping or carried > MAX_LINE_BYTES:
                skipping, carried = True, 0
            continue
        find = buffer.find
        if _has_lone_carriage_return(buffer, 0, last_newline):
            lines: list[Any] = _split_universal_newlines(bytes(view[:last_newline]).split(b"\n"))
        else:
            lines = []
            append = lines.append
            position = 0
            while True:
                newline = find(b"\n", position, last_newline + 1)
                append(view[position:newline])
                if newline == last_newline:
                    break
                position = newline + 1
        if skipping:
            lines[0] = _OVERLONG_LINE
            skipping = False
        yield lines
        del lines
        tail = bytes(view[last_newline + 1 : filled])
        carried = len(tail)
        view[:carried] = tail
        if carried > MAX_LINE_BYTES:
            skipping, carried = True, 0
    if skipping:
        yield [_OVERLONG_LINE]
    elif carried:
        final = bytes(view[:carried])
        yield _split_universal_newlines([final]) if b"\r" in final else [final]


_BLANK = object()  # parse outcome of a blank line


def _parse_line_stdlib(raw: bytes | memoryview) -> tuple[Any, tuple[str, str] | None]:
    """Parse one line as Synth's CLI does: decode UTF-8, strip, ``json.loads``."""
    raw = bytes(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, (
            "invalid_utf8",
            f"line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "re-encode the file as UTF-8",
        )
    text = text.strip()
    if not text:
        return _BLANK, None
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, ("invalid_json", f"invalid JSON ({exc.msg})")
    except RecursionError:
        return None, ("invalid_json", "invalid JSON (nested too deeply)")
    except ValueError as exc:  # e.g. an integer literal past sys.get_int_max_str_digits() (4,300 digits)
        reason = ("an integer literal longer than 4300 digits" if "digits" in str(exc)
                  else " ".join(str(exc).split())[:120])
        return None, ("invalid_json", f"invalid JSON ({reason})")


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


@dataclass
class ValidationReport:
    """The outcome of ``validate_jsonl``: what is wrong (errors), what is odd (warnings), what is there (stats)."""

    ok: bool  # no errors (warnings allowed)
    path: str  # absolute path of the file checked
    examples: int  # non-blank records seen
    errors: list[DatasetIssue] = field(default_factory=list)  # the first max_errors, in file order
    error_total: int = 0  # all errors found
    error_counts: dict[str, int] = field(default_factory=dict)  # code -> count, uncapped
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # see _build_stats
    truncated: bool = False  # the errors list was capped

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": self.path,
            "examples": self.examples,
            "errors": [dict(issue) for issue in self.errors],
            "error_total": self.error_total,
            "error_counts": dict(self.error_counts),
            "warnings": list(self.warnings),
            "stats": json.loads(json.dumps(self.stats)),
            "truncated": self.truncated,
        }

    def summary(self) -> str:
        if self.ok:
            text = f"ok: {self.examples} examples, 0 errors"
            if self.warnings:
                text += f", {len(self.warnings)} warning{'s' if len(self.warnings) != 1 else ''}"
            return text
        first = self.errors[0] if self.errors else None
        noun = "error" if self.error_total == 1 else "errors"
        text = f"invalid: {self.error_total} {noun} in {self.examples} examples"
        if first is not None:
            where = f"line {first['line']} " if first["line"] else ""
            text += f" (first: {where}{first['code']}: {first['message']})"
        return text

    def synth_error_text(self) -> str:
        """Synth's CLI failure text for this report; empty when the report is ok."""
        if self.ok:
            return ""
        suffix = f" (showing first {len(self.errors)} issues)" if self.truncated else ""
        lines = [
            f"Line {issue['line']}: {issue['message']}" if issue["line"] else issue["message"]
            for issue in self.errors
        ]
        return f"{self.path}: Dataset validation failed{suffix}:\n - " + "\n - ".join(lines)


class _ErrorLog:
    """The capped, ordered error list plus uncapped totals."""

    __slots__ = ("issues", "limit", "total", "counts")

    def __init__(self, limit: int) -> None:
        self.issues: list[DatasetIssue] = []
        self.limit = limit
        self.total = 0
        self.counts: dict[str, int] = {}

    def add(self, line: int, code: str, message: str) -> None:
        self.total += 1
        self.counts[code] = self.counts.get(code, 0) + 1
        if len(self.issues) < self.limit:
            self.issues.append(DatasetIssue(line=line, code=code, message=message))

    def absorb(self, later: _ErrorLog, line_offset: int) -> None:
        """Append the findings of the range that follows, whose line numbers start after ``line_offset``."""
        for issue in later.issues:
            if len(self.issues) >= self.limit:
                break
            self.issues.append(
                DatasetIssue(line=issue["line"] + line_offset, code=issue["code"], message=issue["message"])
            )
        self.total += later.total
        for code, count in later.counts.items():
            self.counts[code] = self.counts.get(code, 0) + count


# --------------------------------------------------------------------------------------------------
# File handling
# --------------------------------------------------------------------------------------------------


def _resolve_dataset_path(path: str | os.PathLike[str], *, allow_empty: bool = False) -> Path:
    """The absolute path of a readable (non-empty) dataset file, or a DatasetFileError that says why not."""
    raw = os.fspath(path)
    if "\x00" in raw:
        raise DatasetFileError("invalid_path", f"Dataset path {raw[:200]!r} holds a NUL character (\\x00); no file "
                                               "name can: pass the real path of a .jsonl file", raw[:200])
    given = Path(raw).expanduser()
    resolved = given if given.is_absolute() else Path.cwd() / given
    try:
        return _check_dataset_file(resolved, given, allow_empty)
    except OSError as exc:  # a name longer than the OS allows, a loop of symlinks, an unreadable folder ...
        raise DatasetFileError("unreadable_path", f"Cannot read dataset {str(resolved)[:300]}: "
                                                  f"{exc.strerror or exc}; pass the path of a readable .jsonl file",
                               str(resolved)[:300]) from None


def _check_dataset_file(resolved: Path, given: Path, allow_empty: bool) -> Path:
    where = (
        f" (relative paths resolve against the server's working directory {Path.cwd()}; pass an absolute path)"
        if not given.is_absolute()
        else ""
    )
    if not resolved.exists():
        if where:
            hint = where
        elif not resolved.parent.is_dir():
            hint = f" (the directory {resolved.parent} does not exist either)"
        else:
            hint = " (check the file name)"
        raise DatasetFileError("file_not_found", f"Dataset not found: {resolved}{hint}", str(resolved))
    if resolved.is_dir():
        jsonl_files = sorted(child.name for child in resolved.glob("*.jsonl"))[:5]
        listing = f" It contains: {', '.join(jsonl_files)}." if jsonl_files else ""
        raise DatasetFileError(
            "is_directory",
            f"Dataset path is a directory, not a file: {resolved}; pass the path of a .jsonl file.{listing}",
            str(resolved),
        )
    if not resolved.is_file():  # /dev/zero, a FIFO, a socket: no end, or no size to check against
        raise DatasetFileError(
            "not_a_regular_file",
            f"Dataset path is not a regular file: {resolved} (a device, pipe or socket); write the data to a .jsonl "
            "file and pass that path",
            str(resolved),
        )
    if not os.access(resolved, os.R_OK):
        raise DatasetFileError(
            "permission_denied",
            f"Cannot read dataset {resolved}: permission denied (make it readable by the user running the server)",
            str(resolved),
        )
    if not allow_empty and resolved.stat().st_size == 0:
        raise DatasetFileError(
            "empty_file",
            f"Dataset file is empty (0 bytes): {resolved}; it needs one JSON object (a chat example) per line",
            str(resolved),
        )
    return resolved


def _open_dataset(path: Path) -> Any:
    try:
        return open(path, "rb", buffering=0)
    except PermissionError as exc:
        raise DatasetFileError(
            "permission_denied",
            f"Cannot read dataset {path}: permission denied (make it readable by the user running the server)",
            str(path),
        ) from exc
    except IsADirectoryError as exc:  # pragma: no cover - raced with the checks above
        raise DatasetFileError("is_directory", f"Dataset path is a directory, not a file: {path}", str(path)) from exc


# --------------------------------------------------------------------------------------------------
# Validation pass
# --------------------------------------------------------------------------------------------------


def validate_jsonl(
    path: str | os.PathLike[str],
    *,
    min_messages: int = 2,
    max_errors: int = 20,
    examples: int | None = None,
    max_images_per_message: int | None = None,
    require_assistant: bool = True,
    workers: int | None = None,
) -> ValidationReport:
    """Validate an SFT JSONL file in one streaming pass.

    ``min_messages`` is 2 by default (Synth's docs and SDK); pass 1 to reproduce Synth's CLI.
    ``examples=N`` validates only the first N non-blank records. ``workers``: processes to spread a large
    file over (None: 2 for files of PARALLEL_MIN_BYTES or more unless the CPUs are already busy, else 1;
    1: in this process). File-level problems raise DatasetFileError; everything about the content is in
    the report, which is the same whichever way the file was read.
    """
    if max_errors < 1:
        raise ValueError("max_errors must be at least 1")
    if examples is not None and examples <= 0:
        raise ValueError("Example limit must be positive")
    resolved = _resolve_dataset_path(path)
    file_bytes = resolved.stat().st_size
    options = _CheckOptions(min_messages, require_assistant, max_images_per_message, max_errors)
    process_count = _choose_workers(workers, file_bytes, examples)
    scan = None
    if process_count > 1:
        scan = _scan_in_processes(resolved, file_bytes, options, process_count)
    if scan is None:
        with _open_dataset(resolved) as handle:
            scan = _scan_lines(handle, None, options, examples)
    if scan.records == 0:
        scan.errors.add(0, "no_examples", "File contains no SFT examples")
    if examples is None and (scan.errors.counts.get("invalid_json") or scan.errors.counts.get("record_not_object")):
        document = _json_document_error(resolved, file_bytes, max_errors)
        if document is not None:
            scan.errors, scan.records = document
    error_log = scan.errors
    return ValidationReport(
        ok=error_log.total == 0,
        path=str(resolved),
        examples=scan.records,
        errors=error_log.issues,
        error_total=error_log.total,
        error_counts=error_log.counts,
        warnings=_collect_warnings(scan.records, scan.blank_lines, examples, scan.stopped_early, scan.tally),
        stats=_build_stats(scan.tally, scan.blank_lines, file_bytes),
        truncated=error_log.total > len(error_log.issues),
    )


def _json_document_error(path: Path, file_bytes: int, max_errors: int) -> tuple[_ErrorLog, int] | None:
    """One clear error (and the number of records inside) when the file is JSON but not JSONL.

    A pretty-printed JSON array, or JSON objects spanning several lines, fail line by line as one
    ``invalid_json`` per physical line; read as a whole the file decodes. Only tried when line-by-line
    parsing failed and the file is at most JSON_DOCUMENT_MAX_BYTES; None when it is not such a file.
    """
    if file_bytes > JSON_DOCUMENT_MAX_BYTES:
        return None
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = len(text) - len(text.lstrip())
    try:
        while position < len(text):
            value, position = decoder.raw_decode(text, position)
            values.append(value)
            position = len(text) - len(text[position:].lstrip())
    except (ValueError, RecursionError):
        return None
    single_array = len(values) == 1 and isinstance(values[0], list)
    if not single_array and len(values) >= sum(1 for line in text.splitlines() if line.strip()):
        return None  # one value per line: JSONL whose records are wrong, reported line by line
    log = _ErrorLog(max_errors)
    if single_array:
        records = len(values[0])
        log.add(
            0,
            "json_array",
            f"the file is one JSON array of {records} item(s), not JSONL (one JSON object per line); convert it, "
            "e.g. `jq -c '.[]' in.json > out.jsonl`, then validate the new file",
        )
    else:
        records = len(values)
        log.add(
            0,
            "multiline_json",
            f"the file holds {records} JSON value(s) written across several lines, not JSONL (one JSON object per "
            "line); convert it, e.g. `jq -c . in.json > out.jsonl`, then validate the new file",
        )
    return log, records


class _CheckOptions(NamedTuple):
    min_messages: int
    require_assistant: bool
    max_images: int | None
    max_errors: int


@dataclass
class _Scan:
    """What one pass over a file, or over one byte range of it, found (line numbers local to the range)."""

    errors: _ErrorLog
    tally: _Tally
    lines: int = 0
    records: int = 0
    blank_lines: int = 0
    stopped_early: bool = False


def _scan_lines(handle: Any, stop: int | None, options: _CheckOptions, example_limit: int | None) -> _Scan:
    """Check every line from the handle's position to ``stop`` (or EOF), or the first ``example_limit`` records."""
    min_messages, require_assistant, max_images, max_errors = options
    scan = _Scan(_ErrorLog(max_errors), _Tally())
    tally = scan.tally
    add_error = scan.errors.add
    fast_loads = _orjson.loads if _orjson is not None else None
    fast_error = _orjson.JSONDecodeError if _orjson is not None else ValueError
    is_plain = _is_plain_valid_record
    check = _check_record_fully
    line_number = 0
    records = 0
    blank_lines = 0
    limit = example_limit if example_limit is not None else -1
    for batch in _iter_line_batches(handle, stop):
        for raw in batch:
            if records == limit:
                scan.stopped_early = True
                break
            line_number += 1
            if raw is None:  # _OVERLONG_LINE
                records += 1
                add_error(
                    line_number,
                    "line_too_long",
                    f"line is longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB and was not checked; "
                    "split the example or shrink its images",
                )
                continue
            if fast_loads is not None:
                try:
                    record = fast_loads(raw)
                    failure = None
                except fast_error:
                    record, failure = _parse_line_stdlib(raw)
            else:
                record, failure = _parse_line_stdlib(raw)
            if record is _BLANK:
                blank_lines += 1
                continue
            records += 1
            if failure is not None:
                add_error(line_number, failure[0], failure[1])
                continue
            try:
                if is_plain(record, min_messages, require_assistant, tally):
                    continue
                tally.line = line_number
                problems = check(record, min_messages, require_assistant, max_images, tally)
            except RecursionError:  # a value nested ~1000 deep where the rules look inside (ids, arguments)
                problems = [("nested_too_deeply", "a value in this record is nested too deeply to check (hundreds "
                                                  "of levels of lists/objects); flatten it")]
            if problems:
                for code, message in problems:
                    add_error(line_number, code, message)
        tally.fold()
        if scan.stopped_early:
            break
    scan.lines, scan.records, scan.blank_lines = line_number, records, blank_lines
    return scan


# --------------------------------------------------------------------------------------------------
# Large files: byte ranges checked in worker processes
# --------------------------------------------------------------------------------------------------

PARALLEL_MIN_BYTES = 128 * 1024 * 1024  # smaller files are checked in-process (a worker costs ~0.1 s to start)
_PARALLEL_CHUNK_BYTES = 32 * 1024 * 1024  # byte range per task
_MAX_WORKERS = 2
_MIN_SPARE_CPUS = 0.5  # idle CPUs (CPUs minus the 1-minute load average) needed to start workers


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _choose_workers(requested: int | None, file_bytes: int, example_limit: int | None) -> int:
    if example_limit is not None:
        return 1  # "the first N records" is a sequential notion
    if requested is not None:
        return max(1, requested)
    if file_bytes < PARALLEL_MIN_BYTES:
        return 1
    # A second process pays only when CPU time is idle: on a saturated machine (and with Linux's per-session
    # scheduling groups) it adds start-up and cache contention without getting more CPU time. Workers win
    # ~1.7x when a CPU is free and lose ~10% when none is, so half an idle CPU is enough to try.
    spare_cpus = _available_cpus() - _recent_load()
    return _MAX_WORKERS if spare_cpus >= _MIN_SPARE_CPUS else 1


def _recent_load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return 0.0


def _align_to_line_start(handle: Any, offset: int) -> int:
    """The first line start at or after ``offset`` (a line starts at 0 or right after a \\n)."""
    if offset <= 0:
        return 0
    handle.seek(offset - 1)
    position = offset - 1
    while True:
        piece = handle.read(64 * 1024)
        if not piece:
            return position
        newline = piece.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(piece)


def _scan_byte_range(path: str, start: int, stop: int, options: _CheckOptions) -> _Scan:
    """Worker task: check the lines that start within [start, stop) of the file."""
    with open(path, "rb", buffering=0) as handle:
        first = _align_to_line_start(handle, start)
        end = _align_to_line_start(handle, stop)
        if first >= end:
            return _Scan(_ErrorLog(options.max_errors), _Tally())
        handle.seek(first)
        return _scan_lines(handle, end, options, None)


def _scan_in_processes(path: Path, file_bytes: int, options: _CheckOptions, process_count: int) -> _Scan | None:
    """Check the file as byte ranges in worker processes, merged in file order; None if workers are unusable.

    At most two ranges per worker are in flight, so memory stays bounded whatever the file size. Workers
    are started with "spawn" (safe in a server with threads) and send back only counts and capped errors.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ranges = [
        (start, min(start + _PARALLEL_CHUNK_BYTES, file_bytes))
        for start in range(0, file_bytes, _PARALLEL_CHUNK_BYTES)
    ]
    merged = _Scan(_ErrorLog(options.max_errors), _Tally())
    try:
        with ProcessPoolExecutor(process_count, mp_context=multiprocessing.get_context("spawn")) as pool:
            pending: deque[Any] = deque()
            next_range = 0
            while next_range < len(ranges) or pending:
                while next_range < len(ranges) and len(pending) < 2 * process_count:
                    start, stop = ranges[next_range]
                    pending.append(pool.submit(_scan_byte_range, str(path), start, stop, options))
                    next_range += 1
                _merge_scan(merged, pending.popleft().result())
    except (OSError, ImportError, BrokenProcessPool, RuntimeError):
        return None  # no usable process support here (sandbox, no semaphores): check in-process instead
    return merged


def _merge_scan(total: _Scan, part: _Scan) -> None:
    """Append a range's findings to the running total, shifting its line numbers past the lines so far."""
    offset = total.lines
    total.errors.absorb(part.errors, offset)
    total.tally.merge(part.tally, offset)
    total.lines += part.lines
    total.records += part.records
    total.blank_lines += part.blank_lines


def _tally_warnings(tally: _Tally) -> list[tuple[str, str]]:
    """Non-fatal findings gathered while checking records, as (code, message)."""
    warnings: list[tuple[str, str]] = []
    if tally.undefined_tool_calls and tally.undefined_tool_first is not None:
        line, name = tally.undefined_tool_first
        warnings.append(
            (
                "undefined_tool",
                f"{tally.undefined_tool_calls} tool call(s) name a function missing from their example's tools "
                f"(first: line {line}, {name!r}); add the function to tools or fix the name",
            )
        )
    if tally.images_outside_user and tally.images_outside_user_first is not None:
        line, role = tally.images_outside_user_first
        warnings.append(
            (
                "image_outside_user",
                f"{tally.images_outside_user} image(s) in system/developer/tool messages (first: line {line}, "
                f"a {role} message); images are normally only given in user messages",
            )
        )
    if tally.empty_targets:
        warnings.append(("empty_assistant_target", empty_target_warning(tally.empty_targets,
                                                                        tally.empty_target_lines)))
    if tally.untrainable_examples and tally.untrainable_first is not None:
        warnings.append(
            (
                "untrainable_example",
                f"{tally.untrainable_examples} example(s) have weight 0 on every assistant message (first: line "
                f"{tally.untrainable_first[0]}), so nothing in them is trained on",
            )
        )
    return warnings


def _collect_warnings(
    records: int, blank_lines: int, example_limit: int | None, stopped_early: bool, tally: _Tally
) -> list[str]:
    warnings: list[str] = []
    if example_limit is not None:
        scope = "the rest of the file was not checked" if stopped_early else "the file has no more"
        warnings.append(f"validated only the first {example_limit} examples (examples={example_limit}); {scope}")
    if blank_lines:
        warnings.append(f"{blank_lines} blank line(s) skipped")
    if 0 < records < MIN_RECOMMENDED_EXAMPLES:
        warnings.append(
            f"only {records} example(s); OpenAI requires at least {MIN_RECOMMENDED_EXAMPLES} and 50-100 are "
            "typically needed to see an improvement"
        )
    warnings.extend(message for _code, message in _tally_warnings(tally))
    return warnings


def _build_stats(tally: _Tally, blank_lines: int, file_bytes: int) -> dict[str, Any]:
    """The report's ``stats``; the per-example figures cover records that pass Synth's rules."""
    tally.fold()
    return {
        "messages_per_example": tally.messages_hist.summary(),
        "approx_tokens_per_example": tally.tokens_hist.summary(),
        "assistant_messages": tally.roles["assistant"],
        "images": tally.images,
        "tool_calls": tally.tool_calls,
        "examples_with_tools": tally.examples_with_tools,
        "examples_with_images": tally.examples_with_images,
        "blank_lines": blank_lines,
        "bytes": file_bytes,
        "roles": dict(tally.roles.most_common()),
    }


# --------------------------------------------------------------------------------------------------
# --examples N
# --------------------------------------------------------------------------------------------------


def write_head(path: str | os.PathLike[str], n: int, dest_dir: str | os.PathLike[str] | None = None) -> Path:
    """Copy the first ``n`` non-empty lines into a new file (Synth's ``--examples N``); return its path.

    The file goes to ``dest_dir`` or to a fresh ``tempfile.mkdtemp(prefix="sft_subset_")`` directory, named
    ``<stem>.head<n><suffix>``. Lines are copied byte for byte, streaming.
    """
    if n <= 0:
        raise ValueError("Example limit must be positive")
    source = _resolve_dataset_path(path, allow_empty=True)
    target_dir = Path(dest_dir) if dest_dir is not None else Path(tempfile.mkdtemp(prefix="sft_subset_"))
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{source.stem}.head{n}{source.suffix}"
    written = 0
    with _open_dataset(source) as handle, open(target, "wb") as out:
        for batch in _iter_line_batches(handle):
            for raw in batch:
                if raw is None:
                    continue  # over-long lines are not copied either
                raw = bytes(raw)
                if _is_blank_line(raw):
                    continue
                if raw.endswith(b"\r"):
                    raw = raw[:-1]  # text mode would have turned \r\n into \n
                out.write(raw)
                out.write(b"\n")
                written += 1
                if written >= n:
                    break
            if written >= n:
                break
    if written == 0:
        target.unlink(missing_ok=True)
        if dest_dir is None:
            target_dir.rmdir()
        raise ValueError("Subset dataset is empty; check limit value")
    return target


def _is_blank_line(raw: bytes) -> bool:
    """True when the line holds only whitespace as ``str.strip`` sees it (Synth's test for an empty line)."""
    stripped = raw.strip()
    if not stripped:
        return True
    if stripped[0] == 0x7B:  # "{": the usual case
        return False
    try:
        return not stripped.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False
