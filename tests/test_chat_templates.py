"""Assistant-only loss for every chat-template family TRL ships, on tiny offline tokenizers (issue 8).

The ORIGINAL templates (``trl/chat_templates/<family>.jinja``, what the Hub models ship, most without
``{% generation %}`` markers) plus a SmolLM2-style ChatML template with a default system prompt and no
markers are put on the tiny character-level tokenizer with each family's special tokens. For each
family: plain chat, multi-turn with ``weight: 0``, tool calls with string and object arguments, the
end-of-turn token trained, nothing from user/system/tool turns trained — asserted on the decoded
trained-token TEXT. Tokenizers are built once per session (a deep copy of one base tokenizer each).
The end of the module trains real jobs through the backend for Llama 3.2's and a no-marker ChatML
template.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from chat_families import (
    FAMILIES,
    SMOLLM2_CHATML,
    SYSTEM,
    TOOLS,
    family_tokenizer,
    tool_conversation,
    trl_template,
    user,
)
from conftest import wait_file_ready, wait_job, write_jsonl
from learning_mcp.backend.chat_template import (
    METHOD_FALLBACK,
    METHOD_FULL_SEQUENCE,
    METHOD_MARKERS,
    METHOD_PER_TURN,
    METHOD_PREFIX_DIFF,
    ToolArgumentsError,
    tokenize_conversation,
    trained_texts,
)
from learning_mcp.backend.trainer import TrainingError, load_jsonl_records, prepare_examples, tokenize_record


def check(tokenizer, example) -> list[str]:
    """The example's trained texts, after the checks every example must pass."""
    for sequence in example.sequences():
        # the token ids reproduce the rendering, and labels are the ids where trained
        assert tokenizer.decode(sequence.input_ids, clean_up_tokenization_spaces=False) == sequence.text
        assert all(label in (-100, token) for label, token in zip(sequence.labels, sequence.input_ids))
    texts = trained_texts(tokenizer, example)
    for text in texts:
        for word in ("USERWORDS", "SYSTEMWORDS", "TOOLWORDS", "<|im_start|>", "<|start_header_id|>",
                     "<start_of_turn>", "<|assistant|>", "<|user|>", "<｜Assistant｜>", "<｜User｜>"):
            assert word not in text, (word, texts)
    return texts


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_plain_chat_trains_the_reply_and_end_of_turn(name):
    family, tokenizer = FAMILIES[name], family_tokenizer(name)
    messages = ([SYSTEM] if family.system else []) + [user("2+3=?"), {"role": "assistant", "content": "5"}]
    example = tokenize_conversation(tokenizer, messages)
    assert example.method == METHOD_PREFIX_DIFF
    assert check(tokenizer, example) == [family.prefix + "5" + family.last_end]
    assert family.end in tokenizer.convert_ids_to_tokens([t for t in example.labels if t != -100])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_multi_turn_with_weight_zero(name):
    family, tokenizer = FAMILIES[name], family_tokenizer(name)
    messages = [user("1+1=?"), {"role": "assistant", "content": "3", "weight": 0}, user("wrong, again"),
                {"role": "assistant", "content": "2", "weight": 1}, user("and 2+2?"),
                {"role": "assistant", "content": "4"}]
    example = tokenize_conversation(tokenizer, messages)
    expected = [family.prefix + "2" + family.end, family.prefix + "4" + family.last_end]
    assert check(tokenizer, example) == expected
    # every turn trained: the weight-0 one joins, in conversation order
    messages[1] = {"role": "assistant", "content": "3"}
    assert check(tokenizer, tokenize_conversation(tokenizer, messages)) == [family.prefix + "3" + family.end] + expected


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("arguments", ['{"place": "Oslo"}', {"place": "Oslo"}], ids=["string", "object"])
def test_tool_calls_render_arguments_as_an_object(name, arguments):
    family, tokenizer = FAMILIES[name], family_tokenizer(name)
    record = {"messages": tool_conversation(arguments), "tools": TOOLS, "line": 7}
    if family.tool_call is None:  # the template cannot show tool calls: a clear error, never a silent empty reply
        with pytest.raises(TrainingError) as caught:
            tokenize_record(record, tokenizer, chat_template=None, max_length=None)
        assert caught.value.code == "invalid_dataset" and caught.value.message.startswith("line 7: ")
        assert family.tool_error in caught.value.message.lower() or family.tool_error in caught.value.message
        return
    example = tokenize_record(record, tokenizer, chat_template=None, max_length=None)
    texts = check(tokenizer, example)
    assert texts == [family.tool_call, family.prefix + "No rain." + family.last_end]
    assert '\\"place\\"' not in "".join(texts) and '"{' not in texts[0]


def test_qwen3_thinking_turns_are_trained_as_the_model_saw_them():
    tokenizer = family_tokenizer("qwen3")
    messages = [user("a?"), {"role": "assistant", "content": "A", "reasoning_content": "think about a"},
                user("b?"), {"role": "assistant", "content": "B", "reasoning_content": "think about b"}]
    example = tokenize_conversation(tokenizer, messages)
    # Qwen3 drops <think> from assistant turns before the last user message, so the first turn is trained in
    # its own sequence (the conversation up to it), exactly as it was generated; the full one trains turn 2
    assert example.method == METHOD_PER_TURN and len(example.extra) == 1
    assert check(tokenizer, example) == ["<think>\nthink about a\n</think>\n\nA<|im_end|>",
                                         "<think>\nthink about b\n</think>\n\nB<|im_end|>"]
    assert "think about a" not in example.text
    assert trained_texts(tokenizer, example.extra[0]) == ["<think>\nthink about a\n</think>\n\nA<|im_end|>"]


def test_default_system_prompt_is_not_trained():
    tokenizer = family_tokenizer("smollm2_chatml")
    example = tokenize_conversation(tokenizer, [user("hi"), {"role": "assistant", "content": "hello"}])
    assert "You are a helpful AI assistant named SmolLM" in example.text
    assert check(tokenizer, example) == ["hello<|im_end|>"]


@pytest.mark.parametrize("name", ["qwen2_5", "qwen3", "llama3", "gemma", "gemma3", "phi3", "phi3_5"])
def test_prefix_diff_agrees_with_trls_generation_markers(name):
    """Where TRL ships a marker-carrying training variant, its mask trains the same text (up to the
    newline TRL also marks after the end-of-turn token)."""
    tokenizer = family_tokenizer(name)
    messages = [user("1+1=?"), {"role": "assistant", "content": "3", "weight": 0}, user("again"),
                {"role": "assistant", "content": "2"}, user("2+2?"), {"role": "assistant", "content": "4"}]
    ours = tokenize_conversation(tokenizer, messages)
    marked = tokenize_conversation(tokenizer, messages, chat_template=trl_template(f"{name}_training"))
    assert marked.method == METHOD_MARKERS and ours.method in (METHOD_PREFIX_DIFF, METHOD_PER_TURN)
    assert [t.strip() for t in trained_texts(tokenizer, ours)] == [t.strip() for t in trained_texts(tokenizer, marked)]


def test_spans_that_cannot_be_found_fall_back_to_the_whole_sequence_and_are_counted():
    tokenizer = family_tokenizer("smollm2_chatml")
    # a template that renders only conversations ending with an assistant turn: no prefix renders
    training_only = ("{% if messages[-1]['role'] != 'assistant' %}{{ raise_exception('ends with a reply') }}"
                     "{% endif %}" + SMOLLM2_CHATML)
    records = [{"messages": [user("hi"), {"role": "assistant", "content": "hello"}], "line": 3}]
    data = prepare_examples(records, tokenizer, chat_template=training_only, max_length=512)
    example = data.examples[0]
    assert example.method == METHOD_FALLBACK and example.notes
    assert example.labels == example.input_ids and data.fallback_lines == [3]


def test_assistant_only_loss_false_trains_every_token():
    tokenizer = family_tokenizer("llama3_2")
    example = tokenize_conversation(tokenizer, [SYSTEM, user("hi"), {"role": "assistant", "content": "hello"}],
                                    assistant_only_loss=False)
    assert example.method == METHOD_FULL_SEQUENCE and example.labels == example.input_ids


def test_invalid_tool_call_arguments_name_the_line(tmp_path):
    tokenizer = family_tokenizer("qwen2_5")
    with pytest.raises(ToolArgumentsError):
        tokenize_conversation(tokenizer, tool_conversation('{"place": Oslo}'), TOOLS)
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [user("hi"), {"role": "assistant", "content": "x"}]},
                                                {"messages": tool_conversation('{"place": Oslo}'), "tools": TOOLS}])
    with pytest.raises(TrainingError) as caught:
        load_jsonl_records(path)
    assert caught.value.code == "invalid_dataset"
    assert caught.value.message.startswith("line 2: message 1: tool call 'get_forecast' has arguments that are not "
                                           "valid JSON")


# --------------------------------------------------------------------------------------------------
# real jobs through the backend
# --------------------------------------------------------------------------------------------------


def _family_model(root: Path, name: str) -> Path:
    from learning_mcp.backend.tiny import build_tiny_model

    family = FAMILIES[name]
    return build_tiny_model(root / name, chat_template=family.text(), special_tokens=family.specials,
                            bos_token=family.bos, eos_token=family.eos)


@pytest.mark.parametrize("name", ["llama3_2", "smollm2_chatml"])
def test_job_succeeds_with_a_template_without_markers(backend, tmp_path_factory, name):
    root = tmp_path_factory.mktemp("family-models")
    model = _family_model(root, name)
    rows = [{"messages": [{"role": "user", "content": f"{a}+{b}=?"}, {"role": "assistant", "content": str(a + b)}]}
            for a in range(4) for b in range(4)]
    dataset = write_jsonl(root / "train.jsonl", rows)
    with open(dataset, "rb") as handle:
        uploaded = httpx.post(f"{backend.api}/learning/files", files={"file": (dataset.name, handle)},
                              data={"purpose": "fine-tune"}, timeout=30).json()
    assert wait_file_ready(backend.api, uploaded["id"])["status"] != "error"
    payload = {"model": str(model), "training_type": "sft_offline", "training_file_id": uploaded["id"],
               "hyperparameters": {"n_epochs": 1, "per_device_batch": 8, "learning_rate": 5e-3},
               "metadata": {"effective_config": {"compute": {"gpu_type": "cpu", "gpu_count": 1}}}}
    job = httpx.post(f"{backend.api}/learning/jobs", json=payload).json()
    httpx.post(f"{backend.api}/learning/jobs/{job['id']}/start")
    done = wait_job(backend.api, job["id"])
    assert done["status"] == "succeeded", done
    events = httpx.get(f"{backend.api}/learning/jobs/{job['id']}/events", params={"since_seq": 0}).json()["events"]
    prepared = next(e for e in events if e["type"] == "sft.config.prepared")["data"]
    assert prepared["span_method"] == METHOD_PREFIX_DIFF and prepared["assistant_only_loss"] is True
    assert prepared["span_methods"] == {METHOD_PREFIX_DIFF: len(rows)} and prepared["fallback_lines"] == []
    # one answer digit or two, plus the end-of-turn token, per example
    assert 2 * len(rows) <= prepared["trainable_tokens"] <= 3 * len(rows)
    points = httpx.get(f"{backend.api}/learning/jobs/{job['id']}/metrics",
                       params={"name": "train.loss"}).json()["points"]
    assert points and all(isinstance(p["value"], float) and p["value"] > 0 for p in points), json.dumps(points)


def test_full_sequence_loss_is_chosen_by_hyperparameter_and_warned(tmp_path):
    from conftest_ml import RecordingReporter, make_request

    from learning_mcp.backend.trainer import run_training

    model = _family_model(tmp_path, "smollm2_chatml")
    rows = [{"messages": [{"role": "user", "content": f"{a}+1=?"}, {"role": "assistant", "content": str(a + 1)}]}
            for a in range(8)]
    reporter = RecordingReporter()
    request = make_request(job_id="job_fullseq", model=model, models_dir=tmp_path / "models",
                           train_path=write_jsonl(tmp_path / "train.jsonl", rows),
                           hyperparameters={"total_steps": 1, "per_device_batch": 8, "assistant_only_loss": False})
    run_training(request, reporter)
    prepared = reporter.of_type("sft.config.prepared")[0]
    assert prepared["level"] == "warning" and "assistant_only_loss is false" in prepared["message"]
    data = prepared["data"]
    assert data["assistant_only_loss"] is False and data["span_methods"] == {METHOD_FULL_SEQUENCE: 8}
    assert data["trainable_tokens"] == data["total_tokens"]
