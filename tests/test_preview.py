"""``preview_dataset`` (backend/preview.py): the trainer's rendering, shown before training (issue 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chat_families import FAMILIES, TOOLS, family_tokenizer, tool_conversation
from conftest import write_jsonl
from learning_mcp.backend.preview import DatasetPreview, preview_dataset
from learning_mcp.backend.trainer import load_jsonl_records, prepare_examples
from learning_mcp.tools.errors import LearningMCPError


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from learning_mcp.backend.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("preview-models")
    built = {}
    for name in ("qwen2_5", "qwen3"):
        family = FAMILIES[name]
        built[name] = build_tiny_model(root / name, chat_template=family.text(), special_tokens=family.specials,
                                       bos_token=family.bos, eos_token=family.eos)
    return built


def tool_rows(n: int) -> list[dict]:
    """OpenAI-format tool calls with JSON-string arguments (as /work/shared/cases/tool_call_string_arguments)."""
    rows = []
    for i in range(n):
        messages = tool_conversation(json.dumps({"place": f"town {i}"}))
        rows.append({"messages": messages, "tools": TOOLS})
    return rows


def test_tool_call_arguments_show_as_an_object_and_totals_match_the_trainer(models, tmp_path):
    path = write_jsonl(tmp_path / "tools.jsonl", tool_rows(5))
    before = sorted(p.name for p in tmp_path.iterdir()), sorted(p.name for p in models["qwen2_5"].iterdir())
    preview = preview_dataset(path, str(models["qwen2_5"]), examples=2, models_dir=tmp_path)
    assert isinstance(preview, DatasetPreview) and len(preview.examples) == 2
    first = preview.examples[0]
    assert first.line == 1 and first.span_method == "prefix-diff" and not first.truncated and not first.dropped
    assert first.trained_text == [
        '<tool_call>\n{"name": "get_forecast", "arguments": {"place": "town 0"}}\n</tool_call><|im_end|>',
        "No rain.<|im_end|>"]
    assert "USERWORDS rain in Oslo?" in first.rendered_text and "<|im_start|>assistant\n" in first.rendered_text
    tokenizer = family_tokenizer("qwen2_5")
    assert first.trained_tokens == sum(len(tokenizer(t, add_special_tokens=False)["input_ids"])
                                       for t in first.trained_text)

    # the same code path as the trainer: identical totals
    data = prepare_examples(load_jsonl_records(path), tokenizer, chat_template=None,
                            max_length=preview.sequence_length)
    totals = preview.totals
    assert (totals.records, totals.complete, totals.sequences) == (5, True, len(data.examples))
    assert totals.trained_tokens == data.trainable_tokens and totals.tokens == data.total_tokens
    assert totals.trained_token_share == round(data.trainable_tokens / data.total_tokens, 4)
    assert totals.token_lengths.min <= totals.token_lengths.p50 <= totals.token_lengths.p99 <= totals.token_lengths.max
    assert totals.span_methods == {"prefix-diff": 5} and totals.truncated == totals.dropped == 0
    assert preview.sequence_length == 1024 and preview.assistant_only_loss and not preview.chat_template_markers
    json.loads(preview.model_dump_json())  # JSON-able
    # read-only
    assert (sorted(p.name for p in tmp_path.iterdir()), sorted(p.name for p in models["qwen2_5"].iterdir())) == before


def test_truncation_and_dropped_examples_at_sequence_length(models, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q" * n}, {"role": "assistant", "content": "answer"}]}
            for n in (5, 200, 900)]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    preview = preview_dataset(path, str(models["qwen2_5"]), examples=3, sequence_length=180, models_dir=tmp_path)
    # the default system prompt (~70 tokens) + 200 "q" already exceed 180 tokens: lines 2 and 3 are cut
    # before the reply and dropped; line 1 keeps its reply
    assert preview.sequence_length == 180
    assert preview.totals.truncated_lines == [2, 3] and preview.totals.dropped_lines == [2, 3]
    assert [e.dropped for e in preview.examples] == [False, True, True]
    assert preview.examples[0].trained_text == ["answer<|im_end|>"] and preview.examples[2].trained_text == []
    assert preview.totals.sequences == 1 and preview.totals.token_lengths.max > 900
    assert any("truncated" in w for w in preview.warnings) and any("skipped" in w for w in preview.warnings)


def test_config_hyperparameters_and_full_sequence_loss(models, tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl",
                       [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    preview = preview_dataset(path, str(models["qwen2_5"]), examples=1, models_dir=tmp_path,
                              config={"hyperparameters": {"sequence_length": 300, "assistant_only_loss": False}})
    assert preview.sequence_length == 300 and preview.assistant_only_loss is False
    assert preview.examples[0].span_method == "full-sequence"
    assert preview.examples[0].trained_text == [preview.examples[0].rendered_text]
    assert preview.totals.trained_token_share == 1.0
    assert any("assistant_only_loss is false" in w for w in preview.warnings)


def test_qwen3_earlier_turns_show_their_own_sequence(models, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "A"},
                          {"role": "user", "content": "b?"}, {"role": "assistant", "content": "B"}]}]
    path = write_jsonl(tmp_path / "qwen3.jsonl", rows)
    preview = preview_dataset(path, str(models["qwen3"]), examples=1, models_dir=tmp_path)
    example = preview.examples[0]
    assert example.span_method == "per-turn" and len(example.extra_sequences) == 1
    assert example.trained_text == ["<think>\n\n</think>\n\nA<|im_end|>", "<think>\n\n</think>\n\nB<|im_end|>"]
    assert preview.totals.sequences == 2 and any("own sequence" in w for w in preview.warnings)


def test_time_budget_reports_partial_totals(models, tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", tool_rows(4))
    preview = preview_dataset(path, str(models["qwen2_5"]), examples=1, models_dir=tmp_path, time_budget_s=0)
    assert preview.totals.complete is False and preview.totals.records == 1 and len(preview.examples) == 1
    assert any("time budget" in w for w in preview.warnings)


@pytest.mark.parametrize("kwargs, code, param", [
    ({"model": "/nonexistent/model"}, "model_not_loadable", "model"),
    ({"examples": -1}, "invalid_request", "examples"),
    ({"config": {"sequence_length": 2}}, "invalid_hyperparameters", "hyperparameters.sequence_length"),
])
def test_errors_name_the_argument(models, tmp_path, kwargs, code, param):
    path = write_jsonl(tmp_path / "ok.jsonl",
                       [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    arguments = {"path": path, "model": str(models["qwen2_5"]), "models_dir": tmp_path, **kwargs}
    with pytest.raises(LearningMCPError) as caught:
        preview_dataset(**arguments)
    assert caught.value.code == code and caught.value.param == param


def test_invalid_arguments_json_is_an_error_with_the_line(models, tmp_path):
    rows = tool_rows(2)
    rows[1]["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"place": town}'
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(LearningMCPError) as caught:
        preview_dataset(path, str(models["qwen2_5"]), models_dir=tmp_path)
    assert caught.value.code == "invalid_dataset" and caught.value.param == "path"
    assert caught.value.message.startswith("line 2: message 1: tool call 'get_forecast' has arguments that are not")


def test_empty_replies_get_the_validators_warning(models, tmp_path):
    from learning_mcp.tools.dataset import validate_jsonl

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}]}
            for reply in ("hello", "", "  \n", "ok")]
    rows.append({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "weight": 0},
                              {"role": "user", "content": "y"}, {"role": "assistant", "content": "z"}]})
    path = write_jsonl(tmp_path / "empty.jsonl", rows)
    preview = preview_dataset(path, str(models["qwen2_5"]), examples=2, models_dir=tmp_path)
    expected = "2 trained assistant message(s) are empty or whitespace-only (lines 2, 3)"
    assert any(w.startswith(expected) for w in preview.warnings), preview.warnings
    report = validate_jsonl(path)
    assert any(expected in str(w) for w in report.warnings), report.warnings  # the same text as the validator's
