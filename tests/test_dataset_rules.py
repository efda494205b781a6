"""Validator rules from issue 8: empty assistant targets, JSON that is not JSONL, tool-call argument strings.

The inputs mirror /work/shared/cases/{empty_assistant_turns,pretty_json_array,tool_call_string_arguments}.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

from learning_mcp.tools.dataset import validate_jsonl


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def rows(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def chat(*turns) -> dict:
    return {"messages": [t if isinstance(t, dict) else {"role": t[0], "content": t[1]} for t in turns]}


def test_empty_and_whitespace_targets_are_errors_when_nothing_else_is_trained(tmp_path):
    path = write(tmp_path / "empty.jsonl", rows(
        chat(("user", "Say nothing?"), ("assistant", "")),
        chat(("user", "Blank?"), ("assistant", "  \n ")),
        chat(("user", "3*3?"), ("assistant", "9")),
    ))
    report = validate_jsonl(path)
    assert not report.ok
    assert [(e["line"], e["code"]) for e in report.errors] == [(1, "empty_assistant_target"), (2, "empty_assistant_target")]
    assert "reply with nothing" in report.errors[0]["message"]
    warning = next(w for w in report.warnings if "empty or whitespace-only" in w)
    assert warning.startswith("2 trained assistant message(s)") and "(lines 1, 2)" in warning


def test_one_empty_turn_among_others_is_a_warning(tmp_path):
    path = write(tmp_path / "mixed.jsonl", rows(
        chat(("user", "a"), ("assistant", "A"), ("user", "b"), ("assistant", " ")),
        chat(("user", "c"), {"role": "assistant", "content": "", "weight": 0}, ("user", "d"), ("assistant", "D")),
        chat(("user", "e"), {"role": "assistant", "content": "",
                             "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
             {"role": "tool", "tool_call_id": "1", "content": "ok"}, ("assistant", "E")),
        chat(("user", "f"), {"role": "assistant", "content": [{"type": "text", "text": "  "}]}, ("user", "g"),
             ("assistant", "G")),
    ))
    report = validate_jsonl(path)
    assert report.ok, report.errors
    # line 2's empty turn has weight 0 and line 3's carries a tool call: neither is an empty target
    assert any(w.startswith("2 trained assistant message(s) are empty") and "(lines 1, 4)" in w
               for w in report.warnings), report.warnings


def test_pretty_printed_json_array_is_one_clear_error(tmp_path):
    records = [chat(("user", "hi"), ("assistant", "hello")) for _ in range(3)]
    path = write(tmp_path / "pretty.jsonl", json.dumps(records, indent=2) + "\n")
    report = validate_jsonl(path)
    assert (report.ok, report.error_total, report.examples) == (False, 1, 3)
    error = report.errors[0]
    assert error["code"] == "json_array" and error["line"] == 0
    assert "not JSONL" in error["message"] and "jq -c '.[]' in.json > out.jsonl" in error["message"]
    one_line = write(tmp_path / "one-line.jsonl", json.dumps(records) + "\n")
    assert [e["code"] for e in validate_jsonl(one_line).errors] == ["json_array"]


def test_objects_spanning_lines_are_one_clear_error(tmp_path):
    text = "".join(json.dumps(chat(("user", "hi"), ("assistant", "hello")), indent=1) + "\n" for _ in range(2))
    report = validate_jsonl(write(tmp_path / "multi.jsonl", text))
    assert [e["code"] for e in report.errors] == ["multiline_json"] and report.examples == 2
    assert "jq -c . in.json > out.jsonl" in report.errors[0]["message"]


def test_jsonl_with_wrong_records_is_still_reported_line_by_line(tmp_path):
    report = validate_jsonl(write(tmp_path / "arrays.jsonl", "[1]\n[2]\n{not json\n"))
    assert [(e["line"], e["code"]) for e in report.errors] == [(1, "record_not_object"), (2, "record_not_object"),
                                                               (3, "invalid_json")]


def test_tool_call_arguments_strings_must_be_json(tmp_path):
    def record(arguments: str) -> dict:
        return {"messages": [
            {"role": "user", "content": "Forecast?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c0", "type": "function", "function": {"name": "get_forecast", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "c0", "content": "{\"rain_mm\": 0}"},
            {"role": "assistant", "content": "0 mm of rain."}],
            "tools": [{"type": "function", "function": {"name": "get_forecast", "parameters": {"type": "object"}}}]}

    report = validate_jsonl(write(tmp_path / "tools.jsonl", rows(record('{"place": "town 0"}'),
                                                                 record('{"place": town 1}'))))
    assert [(e["line"], e["code"]) for e in report.errors] == [(2, "invalid_tool_call")]
    assert "not valid JSON" in report.errors[0]["message"]
