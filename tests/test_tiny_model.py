"""The offline tiny model: tokenizer round trip, chat template, assistant mask, determinism, CLI."""

from __future__ import annotations

import json
import logging
import random
import string
import subprocess
import sys

try:
    from conftest_ml import ml_root, small_model_dir, tiny_model_dir, tiny_tokenizer  # noqa: F401
except ImportError:  # tests/ became a package
    from tests.conftest_ml import ml_root, small_model_dir, tiny_model_dir, tiny_tokenizer  # noqa: F401

from learning_mcp.backend.tiny import IM_END, IM_START, MODEL_SIZES, PAD_TOKEN, ROLE_WORDS, build_tiny_model, main


def _masked_text(tokenizer, messages, **kwargs) -> list[str]:
    """The assistant-mask spans of a rendered conversation, decoded."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                        **kwargs)
    ids, mask = out["input_ids"], out["assistant_masks"]
    spans, current = [], []
    for token, bit in zip(ids + [None], mask + [0]):
        if bit:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    return spans


def test_round_trip_arbitrary_ascii(tiny_tokenizer):
    rng = random.Random(0)
    samples = [string.printable, '{"a": [1, 2.5e-3, null], "b": "x\\ny"}', "12+34=46", "  two  spaces\tand tab\r\n",
               "user assistant system tool username", "<tag> & 'quotes' \"dq\" `tick`"]
    samples += ["".join(rng.choice(string.printable) for _ in range(rng.randint(1, 200))) for _ in range(200)]
    for text in samples:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tiny_tokenizer.decode(ids) == text
        assert tiny_tokenizer.unk_token_id not in ids


def test_one_token_per_character_and_role_words(tiny_tokenizer):
    for char in string.printable:
        assert len(tiny_tokenizer(char, add_special_tokens=False)["input_ids"]) == 1, repr(char)
    for word in ROLE_WORDS:
        assert len(tiny_tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    assert tiny_tokenizer("12+3", add_special_tokens=False)["input_ids"] == [
        tiny_tokenizer.convert_tokens_to_ids(c) for c in "12+3"]
    # non-ASCII still round-trips (byte level), it just takes several tokens
    assert tiny_tokenizer.decode(tiny_tokenizer("héllo ✓", add_special_tokens=False)["input_ids"]) == "héllo ✓"


def test_specials_padding_and_autotokenizer_reload(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoConfig, AutoTokenizer

    assert tiny_tokenizer.padding_side == "left"
    assert tiny_tokenizer.pad_token == PAD_TOKEN and tiny_tokenizer.eos_token == IM_END
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.pad_token_id == tiny_tokenizer.pad_token_id
    assert config.eos_token_id == tiny_tokenizer.eos_token_id
    assert config.vocab_size == len(tiny_tokenizer)
    # specials are single tokens inside text
    ids = tiny_tokenizer(f"{IM_START}user\nhi{IM_END}", add_special_tokens=False)["input_ids"]
    assert ids[0] == tiny_tokenizer.convert_tokens_to_ids(IM_START) and ids[-1] == tiny_tokenizer.eos_token_id
    # transformers 5 rebuilds qwen2 tokenizers through Qwen2Tokenizer: a fresh load must agree
    reloaded = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = string.printable + " user"
    assert reloaded(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
    batch = tiny_tokenizer(["1+1=?", "10+10=?"], padding=True, add_special_tokens=False)
    assert batch["input_ids"][0][0] == tiny_tokenizer.pad_token_id  # left padded


def test_chat_template_renders_every_role_tools_and_images(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "dev note"},
        {"role": "user", "content": [{"type": "text", "text": "what is "},
                                     {"type": "image_url", "image_url": {"url": "https://x/img.png"}},
                                     {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "3"},
        {"role": "assistant", "content": "It is 3."},
        {"role": "user", "content": "thanks"},
    ]
    tools = [{"type": "function", "function": {"name": "add", "description": "add two ints",
                                                "parameters": {"type": "object"}}}]
    text = tiny_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert '{"type": "function", "function": {"name": "add"' in text
    assert text.count("<|im_start|>system") == 1  # tools merged into the leading system message
    assert "<|im_start|>developer\ndev note<|im_end|>\n" in text
    assert "<|im_start|>user\nwhat is <image>?<|im_end|>\n" in text
    assert '<|im_start|>assistant\n<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call><|im_end|>\n' in text
    assert "<|im_start|>tool\n3<|im_end|>\n" in text
    assert text.endswith("<|im_start|>user\nthanks<|im_end|>\n<|im_start|>assistant\n")
    # string arguments are emitted verbatim; no tools → no preamble
    plain = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"},
         {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": '{"x": 1}'}}]}],
        tokenize=False)
    assert plain == ('<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n'
                     '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call><|im_end|>\n')
    assert not tiny_tokenizer.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False).endswith(
        "assistant\n")


def test_assistant_mask_is_exactly_assistant_content_and_im_end(tiny_tokenizer):
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "0+0=?"},
                {"role": "assistant", "content": "0"}, {"role": "user", "content": "1+2=?"},
                {"role": "assistant", "content": "3",
                 "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]}]
    assert _masked_text(tiny_tokenizer, messages) == [
        "0<|im_end|>", '3<tool_call>{"name": "f", "arguments": {}}</tool_call><|im_end|>']
    # TRL's own check for the stop token
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    assert has_generation_markers(tiny_tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tiny_tokenizer)


def test_sizes_and_seed_determinism(ml_root, tiny_model_dir, small_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    tiny = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    small = AutoModelForCausalLM.from_pretrained(small_model_dir)
    for model, size in ((tiny, "tiny"), (small, "small")):
        for key, value in MODEL_SIZES[size].items():
            assert getattr(model.config, key) == value
        assert model.config.max_position_embeddings >= 256
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    embedding = lambda m: m.get_input_embeddings().weight.numel()  # noqa: E731
    assert 15_000 < count(tiny) - embedding(tiny) < 25_000  # ~19k + embeddings
    assert 90_000 < count(small) - embedding(small) < 140_000
    again = AutoModelForCausalLM.from_pretrained(build_tiny_model(ml_root / "tiny-again", size="tiny", seed=0))
    other = AutoModelForCausalLM.from_pretrained(build_tiny_model(ml_root / "tiny-seed1", size="tiny", seed=1))
    state, state_again, state_other = tiny.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert not all(torch.equal(state[k], state_other[k]) for k in state)
    # a forward pass works at ~256 tokens
    ids = torch.randint(4, 100, (1, 256))
    assert torch.isfinite(tiny(input_ids=ids).logits).all()


def test_cli_writes_model_and_logs_path(tmp_path, capsys, caplog):
    target = tmp_path / "cli-model"
    with caplog.at_level(logging.INFO, logger="learning_mcp.backend.tiny"):
        assert main([str(target), "--size", "tiny", "--seed", "3"]) == 0
    assert (target / "config.json").is_file() and (target / "tokenizer.json").is_file()
    assert json.loads((target / "config.json").read_text())["hidden_size"] == 32
    assert str(target.resolve()) in caplog.text
    assert capsys.readouterr().out == ""  # stdout stays clean (MCP stdio)


def test_backend_modules_import_without_torch():
    code = ("import sys\n"
            "import learning_mcp.backend.tiny, learning_mcp.backend.modelref\n"
            "import learning_mcp.backend.trainer, learning_mcp.backend.inference\n"
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""
