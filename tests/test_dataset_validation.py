"""Tests for learning_mcp.tools.dataset: Synth's rules and messages, our additional rules, streaming details."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from learning_mcp.tools import dataset
from learning_mcp.tools.dataset import (
    DatasetFileError,
    validate_jsonl,
    validate_record,
    write_head,
)

PNG_1X1 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PNG_DATA_URL = f"data:image/png;base64,{PNG_1X1}"


def chat(*turns: tuple[str, object], **extra: object) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns], **extra}


GOOD = chat(("user", "hi"), ("assistant", "hello"))


def write_lines(path: Path, lines: list[object]) -> Path:
    rendered = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path.write_text("\n".join(rendered) + "\n", encoding="utf-8")
    return path


def issues(report: dataset.ValidationReport) -> list[tuple[int, str, str]]:
    return [(issue["line"], issue["code"], issue["message"]) for issue in report.errors]


def codes_for(record: object, **options: object) -> list[str]:
    return [code for code, _message in validate_record(record, **options)]


# --------------------------------------------------------------------------------------------------
# Synth's own rules, word for word (learning-api.md §5.2 "Real output")
# --------------------------------------------------------------------------------------------------

SYNTH_DEFECTS = [
    GOOD,  # 1
    chat(("system", "be brief"), ("user", "hi"), ("assistant", "hello")),  # 2
    {"messages": []},  # 3
    "not json at all",  # 4
    {"prompt": "legacy"},  # 5
    [1, 2, 3],  # 6
    {"messages": [{"role": "", "content": "x"}]},  # 7
    {"messages": [{"role": "user", "content": 5}]},  # 8
    {"messages": [{"role": "assistant", "content": "x", "tool_calls": {"id": "c1"}}]},  # 9
    {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {}}]}]},  # 10
    {  # 11: a tool call named at the top level is fine for Synth (and for us)
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "name": "f", "arguments": "{}"}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ]
    },
    {"messages": [{"role": "user", "content": "x", "name": 7}]},  # 12
    {"messages": [{"role": "user", "content": "x"}], "tools": [{"description": "no name"}]},  # 13
    {"messages": [{"role": "user", "content": "x"}], "tools": {"name": "f"}},  # 14
    {"messages": [{"role": "user", "content": "x"}], "metadata": ["not", "an", "object"]},  # 15
    {"messages": [{"role": "assistant", "content": "x", "reasoning": 3}]},  # 16
    GOOD,  # 17
    GOOD,  # 18
    {"messages": "a string"},  # 19
]

SYNTH_REAL_OUTPUT = [
    "Line 3: missing messages[] with at least 1 turns",
    "Line 4: invalid JSON (Expecting value)",
    "Line 5: missing messages[] list",
    "Line 6: record is not an object",
    "Line 7: message 0 has invalid role",
    "Line 8: message 0 has unsupported content type int",
    "Line 9: message 0 tool_calls must be a list",
    "Line 10: tool_call 0 missing function name",
    "Line 12: message 0 name must be a string if present",
    "Line 13: tool 0 missing name",
    "Line 14: tools must be provided as a list when present",
    "Line 15: metadata must be an object if present",
    "Line 16: message 0 reasoning must be a string if present",
    "Line 19: message 0 is not an object",
]


@pytest.fixture
def synth_file(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "defects.jsonl", SYNTH_DEFECTS)


def test_synth_real_output_reproduced_exactly(synth_file: Path) -> None:
    report = validate_jsonl(synth_file, min_messages=1)
    assert [f"Line {line}: {message}" for line, _code, message in issues(report)] == SYNTH_REAL_OUTPUT
    assert report.ok is False
    assert report.examples == 19
    assert report.error_total == 14
    assert report.truncated is False
    assert report.error_counts["invalid_json"] == 1
    assert report.error_counts["message_not_object"] == 1


def test_synth_error_text_matches_cli_format(synth_file: Path) -> None:
    report = validate_jsonl(synth_file, min_messages=1)
    assert report.synth_error_text() == (
        f"{report.path}: Dataset validation failed:\n - " + "\n - ".join(SYNTH_REAL_OUTPUT)
    )


def test_synth_rules_with_default_min_messages_two(synth_file: Path) -> None:
    report = validate_jsonl(synth_file)
    by_line = {line: message for line, _code, message in issues(report)}
    assert by_line[3] == "missing messages[] with at least 2 turns"
    assert by_line[7] == "missing messages[] with at least 2 turns"  # one-message records fail first
    assert by_line[19] == "message 0 is not an object"  # an 8-character string passes the length check


def test_one_synth_error_per_record_even_with_our_problems() -> None:
    record = {
        "messages": [{"role": "wizard", "content": "x", "weight": 3}, {"role": "user", "content": "y", "name": 1}]
    }
    assert validate_record(record) == [("name_not_string", "message 1 name must be a string if present")]


def test_other_synth_messages() -> None:
    assert validate_record({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y",
                                           "tool_calls": ["call"]}]}) == [
        ("tool_call_not_object", "tool_call 0 is not an object")
    ]
    assert validate_record(chat(("user", "x"), ("assistant", "y"), tools=[5])) == [
        ("tool_not_object", "tool 0 is not an object")
    ]
    assert validate_record(chat(("user", "x"), ("assistant", "y"), tools=[{"name": "f", "description": 1}])) == [
        ("tool_description_not_string", "tool 0 description must be a string if present")
    ]
    assert validate_record(chat(("user", "x"), ("assistant", "y"), tools=[{"name": "f", "parameters": []}])) == [
        ("tool_parameters_not_object", "tool 0 parameters must be an object if present")
    ]
    raw = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "raw_content": 1}]}
    assert validate_record(raw) == [("raw_content_not_string", "message 1 raw_content must be a string if present")]
    assert validate_record({"messages": ""}, min_messages=1) == [
        ("too_few_messages", "missing messages[] with at least 1 turns")
    ]


def test_file_with_only_blank_lines_has_no_examples(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text("\n   \n\t\n", encoding="utf-8")
    report = validate_jsonl(path)
    assert issues(report) == [(0, "no_examples", "File contains no SFT examples")]
    assert report.examples == 0
    assert report.synth_error_text().endswith(":\n - File contains no SFT examples")


# --------------------------------------------------------------------------------------------------
# Our additional rules
# --------------------------------------------------------------------------------------------------


def test_valid_record_has_no_problems() -> None:
    assert validate_record(GOOD) == []
    assert validate_record(chat(("developer", "rules"), ("user", "q"), ("assistant", "a"), metadata={"k": 1})) == []


def test_unknown_role() -> None:
    problems = validate_record(chat(("wizard", "abracadabra"), ("assistant", "ok")))
    assert problems == [
        (
            "unknown_role",
            "message 0 has role 'wizard'; allowed roles are system, developer, user, assistant, tool",
        )
    ]


def test_no_assistant_message() -> None:
    assert codes_for(chat(("system", "s"), ("user", "u"))) == ["no_assistant_message"]
    assert validate_record(chat(("system", "s"), ("user", "u")), require_assistant=False) == []


@pytest.mark.parametrize("weight", [2, -1, 0.5, 1.0, "1", True, [1]])
def test_invalid_weight_values(weight: object) -> None:
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": weight}]}
    problems = validate_record(record)
    assert [code for code, _ in problems] == ["invalid_weight"]
    assert problems[0][1].startswith("message 1 weight must be the integer 0 or 1, not ")


def test_weight_on_non_assistant_message() -> None:
    record = {"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]}
    assert validate_record(record) == [
        (
            "invalid_weight",
            "message 0 is a user message with a weight; weight (0 or 1) is only allowed on assistant messages: "
            "remove it",
        )
    ]


def test_weight_zero_everywhere_is_a_warning() -> None:
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}
    warnings: list[tuple[str, str]] = []
    assert validate_record(record, warnings=warnings) == []
    assert [code for code, _ in warnings] == ["untrainable_example"]


def tool_conversation(arguments: object = '{"city": "Paris"}', call_id: object = "c1", answer_id: object = "c1",
                      tools: object = None) -> dict:
    call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    tool_message: dict = {"role": "tool", "content": "18C"}
    if answer_id is not None:
        tool_message["tool_call_id"] = answer_id
    record: dict = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            tool_message,
            {"role": "assistant", "content": "18C and sunny."},
        ]
    }
    if tools is not None:
        record["tools"] = tools
    return record


FLAT_TOOL = {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}
OPENAI_TOOL = {"type": "function", "function": dict(FLAT_TOOL)}


def test_tool_conversation_is_valid_in_both_tool_forms() -> None:
    assert validate_record(tool_conversation()) == []
    assert validate_record(tool_conversation(tools=[FLAT_TOOL])) == []
    assert validate_record(tool_conversation(tools=[OPENAI_TOOL])) == []
    assert validate_record(tool_conversation(arguments={"city": "Paris"})) == []  # an object is fine too


def test_openai_tool_form_is_checked_like_the_flat_form() -> None:
    nameless = {"type": "function", "function": {"description": "d"}}
    assert validate_record(tool_conversation(tools=[nameless])) == [("tool_missing_name", "tool 0 missing name")]
    bad_parameters = {"type": "function", "function": {"name": "get_weather", "parameters": "{}"}}
    assert validate_record(tool_conversation(tools=[bad_parameters])) == [
        ("tool_parameters_not_object", "tool 0 parameters must be an object if present")
    ]


def test_call_to_undefined_tool_is_a_warning_not_an_error() -> None:
    warnings: list[tuple[str, str]] = []
    record = tool_conversation(tools=[{"name": "search"}])
    assert validate_record(record, warnings=warnings) == []
    assert [code for code, _ in warnings] == ["undefined_tool"]
    assert "'get_weather'" in warnings[0][1]


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ("{not json", "arguments is not valid JSON"),
        ("[1, 2]", "arguments must encode a JSON object"),
        (["city"], "arguments must be a JSON string or an object, not list"),
        (3, "arguments must be a JSON string or an object, not int"),
    ],
)
def test_malformed_tool_call_arguments(arguments: object, fragment: str) -> None:
    problems = validate_record(tool_conversation(arguments=arguments))
    assert [code for code, _ in problems] == ["invalid_tool_call"]
    assert problems[0][1].startswith("message 1 tool_call 0 ")
    assert fragment in problems[0][1]


def test_tool_call_id_must_match_an_earlier_call() -> None:
    problems = validate_record(tool_conversation(answer_id="c2"))
    assert problems == [
        (
            "unknown_tool_call_id",
            "message 2 tool_call_id 'c2' matches no earlier tool call in this example (tool call ids so far: c1)",
        )
    ]
    assert codes_for(tool_conversation(answer_id=None)) == ["missing_tool_call_id"]
    assert validate_record(tool_conversation(call_id=7, answer_id="7")) == []  # ids compare as strings


def test_tool_message_before_its_call_is_unknown() -> None:
    record = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "tool", "tool_call_id": "c1", "content": "early"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "f"}}]},
            {"role": "assistant", "content": "done"},
        ]
    }
    assert codes_for(record) == ["unknown_tool_call_id"]


def image_message(part: object, role: str = "user") -> dict:
    return {"messages": [{"role": role, "content": [{"type": "text", "text": "look"}, part]},
                         {"role": "assistant", "content": "a cat"}]}


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
        {"type": "image_url", "image_url": "https://example.com/cat.png"},
        {"type": "image_url", "image_url": {"url": "http://example.com/cat.png", "detail": "low"}},
        {"type": "image", "image": "https://example.com/cat.png"},
        {"type": "image_url", "image_url": {"url": PNG_DATA_URL.replace("image/png", "image/JPEG")}},
    ],
)
def test_valid_image_parts(part: dict) -> None:
    assert validate_record(image_message(part)) == []


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("data:image/png;base64,iVBORw0KGgo!!!!", "base64 payload is invalid"),
        ("data:image/png;base64,iVBORw0KGgoAA", "base64 payload is invalid"),  # length not a multiple of 4
        ("data:image/png;base64,", "base64 payload is invalid"),
        ("data:image/bmp;base64," + PNG_1X1, "data URL of type 'image/bmp'"),
        ("data:text/plain;base64,aGVsbG8=", "data URL of type 'text/plain'"),
        ("data:image/png," + PNG_1X1, "not base64 encoded"),
        ("data:image/png;base64" + PNG_1X1, "without a ','"),
        ("ftp://example.com/cat.png", "use an http(s) URL"),
        ("https://", "malformed http(s) URL"),
        ("", "has no URL"),
        (None, "has no URL"),
    ],
)
def test_invalid_image_urls(url: object, fragment: str) -> None:
    problems = validate_record(image_message({"type": "image_url", "image_url": {"url": url}}))
    assert [code for code, _ in problems] == ["invalid_image_url"]
    assert problems[0][1].startswith("message 0 content part 1 (image) ")
    assert fragment in problems[0][1]


def test_base64_checked_across_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset, "_BASE64_SLICE_CHARS", 8)
    assert dataset._base64_is_valid(PNG_1X1)
    assert not dataset._base64_is_valid("QUJD" + "====" + "QUJD")  # padding before the end
    assert not dataset._base64_is_valid(PNG_1X1[:20] + "*" + PNG_1X1[21:])


def test_images_outside_user_messages() -> None:
    part = {"type": "image_url", "image_url": {"url": PNG_DATA_URL}}
    assert codes_for(image_message(part, role="assistant")) == ["image_in_assistant"]
    warnings: list[tuple[str, str]] = []
    assert validate_record(image_message(part, role="system"), warnings=warnings) == []
    assert [code for code, _ in warnings] == ["image_outside_user"]


def test_image_limit_per_message() -> None:
    part = {"type": "image_url", "image_url": {"url": PNG_DATA_URL}}
    record = {"messages": [{"role": "user", "content": [part, part]}, {"role": "assistant", "content": "two"}]}
    assert validate_record(record) == []
    assert validate_record(record, max_images_per_message=2) == []
    problems = validate_record(record, max_images_per_message=1)
    assert [code for code, _ in problems] == ["image_limit"]
    assert "the model allows 1 image(s) per message" in problems[0][1]


def test_content_parts_need_objects_with_a_type() -> None:
    assert codes_for(image_message("just a string")) == ["invalid_content_part"]
    assert codes_for(image_message({"text": "no type"})) == ["invalid_content_part"]
    assert codes_for(image_message({"type": "text", "text": 5})) == ["invalid_content_part"]
    single_part = {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}},
                                {"role": "assistant", "content": "a"}]}
    assert validate_record(single_part) == []


# --------------------------------------------------------------------------------------------------
# Lines: UTF-8, blank lines, line endings, long lines, parsers
# --------------------------------------------------------------------------------------------------


def test_invalid_utf8_line_is_reported_and_the_rest_checked(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(GOOD).encode()
    bad = json.dumps(chat(("user", "caf\u00e9"), ("assistant", "x"))).encode().replace(b"\\u00e9", b"\xe9")
    path.write_bytes(b"\n".join([good, bad, good, b"[]"]) + b"\n")
    report = validate_jsonl(path)
    assert [(line, code) for line, code, _ in issues(report)] == [(2, "invalid_utf8"), (4, "record_not_object")]
    assert "byte 0xe9" in report.errors[0]["message"]
    assert report.examples == 4


def test_blank_lines_are_skipped_counted_and_keep_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "blanks.jsonl"
    path.write_text("\n".join([json.dumps(GOOD), "", "   ", json.dumps(GOOD), "\u00a0", "{bad"]) + "\n",
                    encoding="utf-8")
    report = validate_jsonl(path)
    assert issues(report) == [(6, "invalid_json", "invalid JSON (Expecting property name enclosed in double quotes)")]
    assert report.examples == 3
    assert report.stats["blank_lines"] == 3
    assert "3 blank line(s) skipped" in report.warnings


def test_line_numbers_follow_text_mode_newlines(tmp_path: Path) -> None:
    good = json.dumps(GOOD).encode()
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(good + b"\r\n" + good + b"\r\n" + b"[]\r\n")
    assert [(line, code) for line, code, _ in issues(validate_jsonl(crlf))] == [(3, "record_not_object")]
    lone_cr = tmp_path / "cr.jsonl"
    lone_cr.write_bytes(good + b"\r" + good + b"\n" + b"[]\n")  # Python's text mode sees three lines
    assert [(line, code) for line, code, _ in issues(validate_jsonl(lone_cr))] == [(3, "record_not_object")]


def test_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "tail.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b"[1]")
    assert [(line, code) for line, code, _ in issues(validate_jsonl(path))] == [(2, "record_not_object")]


def test_lines_spanning_read_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset, "_READ_BLOCK_BYTES", 7)
    path = write_lines(tmp_path / "small_blocks.jsonl", [GOOD, "", [1], GOOD, {"messages": []}])
    report = validate_jsonl(path)
    assert [(line, code) for line, code, _ in issues(report)] == [(3, "record_not_object"), (5, "too_few_messages")]
    assert report.examples == 4


def test_overlong_line_is_reported_without_buffering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset, "_READ_BLOCK_BYTES", 16)
    monkeypatch.setattr(dataset, "MAX_LINE_BYTES", 100)
    huge = chat(("user", "x" * 500), ("assistant", "y"))
    path = write_lines(tmp_path / "long.jsonl", [GOOD, huge, GOOD, [1]])
    report = validate_jsonl(path)
    assert [(line, code) for line, code, _ in issues(report)] == [(2, "line_too_long"), (4, "record_not_object")]
    assert report.examples == 4


def test_stdlib_fallback_accepts_what_synth_accepts(tmp_path: Path) -> None:
    path = tmp_path / "lenient.jsonl"
    path.write_text(
        "\n".join(
            [
                '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], '
                '"metadata": {"score": NaN, "big": 123456789012345678901234567890}}',
                '{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "b"}]}',
                '\ufeff{"messages": []}',
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    report = validate_jsonl(path)
    assert issues(report) == [(3, "invalid_json", "invalid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig))")]


def test_same_results_without_orjson(synth_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_orjson = validate_jsonl(synth_file, min_messages=1).to_dict()
    monkeypatch.setattr(dataset, "_orjson", None)
    without = validate_jsonl(synth_file, min_messages=1).to_dict()
    assert without == with_orjson


# --------------------------------------------------------------------------------------------------
# Report: examples=N, capping, stats, summary
# --------------------------------------------------------------------------------------------------


def test_examples_limit_counts_non_blank_records(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "limit.jsonl", [GOOD, "", [1], GOOD, [2], GOOD])
    report = validate_jsonl(path, examples=3)
    assert report.examples == 3
    assert [(line, code) for line, code, _ in issues(report)] == [(3, "record_not_object")]
    assert report.warnings[0] == (
        "validated only the first 3 examples (examples=3); the rest of the file was not checked"
    )
    with pytest.raises(ValueError, match="Example limit must be positive"):
        validate_jsonl(path, examples=0)


def test_max_errors_caps_the_list_not_the_totals(tmp_path: Path) -> None:
    lines: list[object] = [[index] for index in range(25)] + ["oops"] * 5 + [GOOD]
    report = validate_jsonl(write_lines(tmp_path / "many.jsonl", lines), max_errors=5)
    assert len(report.errors) == 5
    assert [issue["line"] for issue in report.errors] == [1, 2, 3, 4, 5]
    assert report.error_total == 30
    assert report.error_counts == {"record_not_object": 25, "invalid_json": 5}
    assert report.truncated is True
    assert report.synth_error_text().startswith(f"{report.path}: Dataset validation failed (showing first 5 issues):\n")
    assert report.summary() == (
        "invalid: 30 errors in 31 examples (first: line 1 record_not_object: record is not an object)"
    )


def test_stats(tmp_path: Path) -> None:
    part = {"type": "image_url", "image_url": {"url": PNG_DATA_URL}}
    records: list[object] = [
        chat(("user", "a" * 8), ("assistant", "b" * 9)),  # 17 chars -> 5 tokens
        chat(("system", "s" * 4), ("user", "u" * 4), ("assistant", "x" * 4)),  # 12 -> 3
        tool_conversation(tools=[FLAT_TOOL]),  # 4 messages, 1 tool call
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}, part]},
                      {"role": "assistant", "content": "cat"}]},  # 7 chars -> 2, one image
        [1],  # rejected: not counted in the per-example figures
    ]
    path = write_lines(tmp_path / "stats.jsonl", records)
    report = validate_jsonl(path)
    stats = report.stats
    assert stats["messages_per_example"] == {"min": 2, "mean": 2.75, "p95": 4, "max": 4}
    tool_chars = len("Weather in Paris?") + len("get_weather") + len('{"city": "Paris"}') + len("18C") + len(
        "18C and sunny."
    )
    assert stats["approx_tokens_per_example"]["min"] == 2
    assert stats["approx_tokens_per_example"]["max"] == -(-tool_chars // 4)
    assert stats["approx_tokens_per_example"]["mean"] == round((5 + 3 + -(-tool_chars // 4) + 2) / 4, 2)
    assert stats["assistant_messages"] == 5
    assert stats["images"] == 1
    assert stats["examples_with_images"] == 1
    assert stats["tool_calls"] == 1
    assert stats["examples_with_tools"] == 1
    assert stats["roles"] == {"user": 4, "assistant": 5, "system": 1, "tool": 1}
    assert stats["bytes"] == path.stat().st_size
    assert stats["blank_lines"] == 0
    assert report.examples == 5
    assert any(warning.startswith("only 5 example(s)") for warning in report.warnings)
    json.dumps(report.to_dict())  # JSON-serialisable


def test_histogram_percentiles() -> None:
    histogram = dataset._Histogram()
    for value in range(1, 101):
        histogram.add(value)
    assert histogram.summary() == {"min": 1, "mean": 50.5, "p95": 95, "max": 100}
    large = dataset._Histogram()
    for value in range(1000, 101000, 10):
        large.add(value)
    p95 = large.percentile(0.95)
    assert p95 is not None and abs(p95 - 95_990) / 95_990 < 0.016
    merged = dataset._Histogram()
    merged.merge(histogram)
    merged.merge(large)
    assert merged.summary()["min"] == 1 and merged.summary()["max"] == 100_990


def test_summary_ok(tmp_path: Path) -> None:
    report = validate_jsonl(write_lines(tmp_path / "ok.jsonl", [GOOD] * 12))
    assert report.ok is True
    assert report.summary() == "ok: 12 examples, 0 errors"
    assert report.synth_error_text() == ""
    assert report.warnings == []


# --------------------------------------------------------------------------------------------------
# write_head (Synth's --examples N)
# --------------------------------------------------------------------------------------------------


def test_write_head_copies_first_non_empty_lines(tmp_path: Path) -> None:
    source = tmp_path / "train.jsonl"
    source.write_bytes(b'{"a": 1}\r\n\r\n  \n{"b": 2}\n{"c": 3}\n')
    head = write_head(source, 2)
    assert head.name == "train.head2.jsonl"
    assert head.parent.name.startswith("sft_subset_")
    assert head.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    into = write_head(source, 10, dest_dir=tmp_path / "out")
    assert into == tmp_path / "out" / "train.head10.jsonl"
    assert into.read_bytes().count(b"\n") == 3


def test_write_head_errors(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "train.jsonl", [GOOD])
    with pytest.raises(ValueError, match="^Example limit must be positive$"):
        write_head(source, 0)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="^Subset dataset is empty; check limit value$"):
        write_head(blank, 3, dest_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "blank.head3.jsonl").exists()


# --------------------------------------------------------------------------------------------------
# File-level errors
# --------------------------------------------------------------------------------------------------


def test_missing_file_relative_path_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetFileError) as caught:
        validate_jsonl("nope.jsonl")
    assert caught.value.code == "file_not_found"
    assert str(caught.value) == (
        f"Dataset not found: {tmp_path / 'nope.jsonl'} (relative paths resolve against the server's working "
        f"directory {tmp_path}; pass an absolute path)"
    )


def test_missing_file_absolute_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetFileError) as caught:
        validate_jsonl(tmp_path / "missing" / "x.jsonl")
    assert caught.value.code == "file_not_found"
    assert "does not exist either" in str(caught.value)


def test_directory(tmp_path: Path) -> None:
    write_lines(tmp_path / "train.jsonl", [GOOD])
    with pytest.raises(DatasetFileError) as caught:
        validate_jsonl(tmp_path)
    assert caught.value.code == "is_directory"
    assert "It contains: train.jsonl." in str(caught.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    with pytest.raises(DatasetFileError) as caught:
        validate_jsonl(path)
    assert caught.value.code == "empty_file"
    assert str(path) in str(caught.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "secret.jsonl", [GOOD])
    path.chmod(0)
    with pytest.raises(DatasetFileError) as caught:
        validate_jsonl(path)
    assert caught.value.code == "permission_denied"


# --------------------------------------------------------------------------------------------------
# Worker processes give the same report
# --------------------------------------------------------------------------------------------------


def test_parallel_byte_ranges_match_sequential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    part = {"type": "image_url", "image_url": {"url": PNG_DATA_URL}}
    records: list[object] = []
    for index in range(600):
        records.append(chat(("user", f"question {index} " * (index % 7)), ("assistant", "answer " * (index % 13))))
        if index % 50 == 7:
            records.append([index])
        if index % 90 == 3:
            records.append("")
        if index % 40 == 1:
            records.append(tool_conversation(tools=[{"name": "other"}]))
        if index % 70 == 5:
            records.append({"messages": [{"role": "system", "content": [part]}, {"role": "assistant", "content": "x",
                                                                                 "weight": 0}]})
    path = write_lines(tmp_path / "parallel.jsonl", records)
    sequential = validate_jsonl(path, workers=1, max_errors=5).to_dict()
    monkeypatch.setattr(dataset, "_PARALLEL_CHUNK_BYTES", 4096)  # many ranges, boundaries inside lines
    parallel = validate_jsonl(path, workers=2, max_errors=5).to_dict()
    assert parallel == sequential
    # issue 8: the 47 records whose only assistant reply is "answer " * 0 == "" are errors (empty target),
    # and a fifth warning counts the empty assistant messages
    assert sequential["error_total"] == 12 + 47
    assert sequential["error_counts"]["empty_assistant_target"] == 47
    assert len(sequential["warnings"]) == 5
    # and the worker processes really ran (no silent in-process fallback)
    options = dataset._CheckOptions(2, True, None, 5)
    scan = dataset._scan_in_processes(path, path.stat().st_size, options, 2)
    assert scan is not None
    assert scan.records == sequential["examples"]
