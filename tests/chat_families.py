"""Chat-template families for the template tests: TRL's original templates (plus a SmolLM2-style
ChatML one) put on the tiny character-level tokenizer with each family's special tokens.

Imported by ``test_chat_templates.py`` and ``test_preview.py`` (not a test module). ``family_tokenizer``
builds each family's tokenizer once per session (a deep copy of one base tokenizer).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path


def trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


SMOLLM2_CHATML = (  # SmolLM2-Instruct's template: a default system prompt, no markers, no tools
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CHATML = ["<|im_start|>", "<|im_end|>"]
LLAMA = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]
GEMMA = ["<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>"]
PHI = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"]
DEEPSEEK = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜tool▁calls▁begin｜>",
            "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>",
            "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"]
THINK = "<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class Family:
    template: str  # a trl/chat_templates name, or "smollm2" for SMOLLM2_CHATML
    specials: tuple[str, ...]
    bos: str | None
    eos: str
    end: str  # what closes an assistant turn followed by more turns (the end-of-turn token)
    last_end: str  # what closes the conversation's last assistant turn
    prefix: str = ""  # what the template writes before every trained reply (Qwen3's empty think block)
    system: bool = True  # the template accepts a system message
    tool_call: str | None = None  # the trained text of the tool-call turn; None: the template cannot render tools
    tool_error: str = "does not render this assistant turn's tool_calls"

    def text(self) -> str:
        return SMOLLM2_CHATML if self.template == "smollm2" else trl_template(self.template)


EOS_DS = "<｜end▁of▁sentence｜>"
FAMILIES = {
    "qwen2_5": Family("qwen2_5", tuple(CHATML), None, "<|im_end|>", "<|im_end|>", "<|im_end|>",
                      tool_call='<tool_call>\n{"name": "get_forecast", "arguments": {"place": "Oslo"}}\n</tool_call>'
                                "<|im_end|>"),
    "qwen3": Family("qwen3", tuple(CHATML), None, "<|im_end|>", "<|im_end|>", "<|im_end|>", prefix=THINK,
                    tool_call=THINK + '<tool_call>\n{"name": "get_forecast", "arguments": {"place": "Oslo"}}\n'
                                      "</tool_call><|im_end|>"),
    "llama3": Family("llama3", tuple(LLAMA), "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", "<|eot_id|>"),
    "llama3_1": Family("llama3_1", tuple(LLAMA), "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", "<|eot_id|>",
                       tool_call='{"name": "get_forecast", "parameters": {"place": "Oslo"}}<|eot_id|>'),
    "llama3_2": Family("llama3_2", tuple(LLAMA), "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", "<|eot_id|>",
                       tool_call='{"name": "get_forecast", "parameters": {"place": "Oslo"}}<|eot_id|>'),
    "gemma": Family("gemma", tuple(GEMMA), "<bos>", "<end_of_turn>", "<end_of_turn>", "<end_of_turn>", system=False,
                    tool_error="roles must alternate"),
    "gemma3": Family("gemma3", tuple(GEMMA), "<bos>", "<end_of_turn>", "<end_of_turn>", "<end_of_turn>",
                     tool_error="roles must alternate"),
    "phi3": Family("phi3", tuple(PHI), None, "<|endoftext|>", "<|end|>", "<|end|>\n<|endoftext|>"),
    "phi3_5": Family("phi3_5", tuple(PHI), None, "<|endoftext|>", "<|end|>", "<|end|>\n<|endoftext|>"),
    "deepseekv3": Family("deepseekv3", tuple(DEEPSEEK), "<｜begin▁of▁sentence｜>", EOS_DS, EOS_DS, EOS_DS,
                         tool_call="<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_forecast\n"
                                   '```json\n{"place": "Oslo"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>' + EOS_DS),
    "deepseek_r1_distill": Family("deepseek_r1_distill", tuple(DEEPSEEK), "<｜begin▁of▁sentence｜>", EOS_DS, EOS_DS,
                                  EOS_DS),
    "smollm2_chatml": Family("smollm2", tuple(CHATML), None, "<|im_end|>", "<|im_end|>", "<|im_end|>"),
}

_TOKENIZERS: dict[str, object] = {}


def family_tokenizer(name: str):
    """The tiny tokenizer with ``name``'s template and special tokens (built once per session)."""
    if name not in _TOKENIZERS:
        from learning_mcp.backend.tiny import build_tokenizer

        if "base" not in _TOKENIZERS:
            _TOKENIZERS["base"] = build_tokenizer()
        family = FAMILIES[name]
        tokenizer = copy.deepcopy(_TOKENIZERS["base"])
        tokenizer.add_special_tokens({"additional_special_tokens": list(family.specials)})
        if family.bos:
            tokenizer.bos_token = family.bos
        tokenizer.eos_token = family.eos
        tokenizer.chat_template = family.text()
        _TOKENIZERS[name] = tokenizer
    return _TOKENIZERS[name]


# distinctive words: none of them may appear in a trained text
SYSTEM = {"role": "system", "content": "SYSTEMWORDS be brief"}
TOOLS = [{"type": "function", "function": {"name": "get_forecast", "description": "Forecast for a place",
                                           "parameters": {"type": "object",
                                                          "properties": {"place": {"type": "string"}}}}}]


def user(text: str) -> dict:
    return {"role": "user", "content": f"USERWORDS {text}"}


def tool_conversation(arguments) -> list[dict]:
    return [user("rain in Oslo?"),
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c0", "type": "function", "function": {"name": "get_forecast", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "c0", "content": '{"TOOLWORDS": 0}'},
            {"role": "assistant", "content": "No rain."}]
