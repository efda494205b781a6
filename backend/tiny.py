"""Tiny offline Qwen2 models for tests, demos and the toy ReST-EM loop.

The embedded backend must be exercisable without the Hugging Face Hub, so this module builds a model
and tokenizer from scratch (training-notes §9.2) and saves them as an ordinary local checkpoint that
``AutoModelForCausalLM`` / ``AutoTokenizer`` load like any Hub model.

Tokenizer
    Character level: one token per byte (so every printable ASCII character is its own token and any
    English text, JSON or arithmetic — indeed any UTF-8 — encodes without unknowns and
    ``decode(encode(s)) == s``), plus the specials ``<pad>``, ``<|im_start|>``, ``<|im_end|>`` and
    ``<unk>`` and whole-word tokens for the role names ``system``, ``user``, ``assistant`` and ``tool``.
    It is a byte-level ``Qwen2Tokenizer`` with no merges, because transformers 5 rebuilds any qwen2
    checkpoint's tokenizer as a ``Qwen2Tokenizer`` (see :func:`build_tokenizer`). Padding is on the left,
    for batched generation.

Chat template
    ChatML (``<|im_start|>{role}\\n{content}<|im_end|>\\n``) for every role. The assistant's content,
    its ``tool_calls`` (as ``<tool_call>{json}</tool_call>`` text) and its ``<|im_end|>`` sit inside
    ``{% generation %}…{% endgeneration %}`` so ``return_assistant_tokens_mask=True`` yields exactly the
    tokens an assistant-only loss trains on, end-of-turn token included. ``tools`` passed to
    ``apply_chat_template`` are listed in a system preamble (merged into a leading system/developer
    message). Multimodal content lists render their text parts' text and an ``<image>`` placeholder for
    image parts, so a text-only model never crashes on them.

Sizes
    ``tiny``: hidden 32, intermediate 64, 2 layers (~19k parameters + 8k embedding) — fast plumbing.
    ``small``: hidden 64, intermediate 256, 2 layers (~123k + 17k embedding) — learns the toy ``a+b``
    task (training-notes §11).

All heavy imports are lazy: importing this module costs nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

ModelSize = Literal["tiny", "small"]

PAD_TOKEN = "<pad>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END, UNK_TOKEN]
ROLE_WORDS = ["system", "user", "assistant", "tool"]

# hidden, intermediate, layers, attention heads, key/value heads
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
    "small": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2},
}
MAX_POSITION_EMBEDDINGS = 1024

CHAT_TEMPLATE = (
    # -- helpers -----------------------------------------------------------------------------------
    "{%- macro render_part(part) -%}"
    "{%- if part is string -%}{{ part }}"
    "{%- elif part is mapping and part.get('type') in ('image', 'image_url', 'input_image') -%}<image>"
    "{%- elif part is mapping and part.get('text') is string -%}{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- elif content is mapping -%}{{ render_part(content) }}"
    "{%- elif content is iterable -%}{%- for part in content -%}{{ render_part(part) }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    # -- tools preamble (merged with a leading system/developer message) ---------------------------
    "{%- set first_is_system = messages | length > 0 and messages[0]['role'] in ('system', 'developer') -%}"
    "{%- if tools -%}"
    "{{ '<|im_start|>system\n' }}"
    "{%- if first_is_system -%}{{ render_content(messages[0].get('content')) + '\n\n' }}{%- endif -%}"
    "{{ '# Tools\nYou may call these functions:\n' }}"
    "{%- for tool in tools -%}{{ tool | tojson }}{{ '\n' }}{%- endfor -%}"
    "{{ 'Call one as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>.<|im_end|>\n' }}"
    "{%- endif -%}"
    # -- turns -------------------------------------------------------------------------------------
    "{%- for message in messages -%}"
    "{%- if not (loop.first and tools and first_is_system) -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- generation -%}"
    "{{ render_content(message.get('content')) }}"
    "{%- for call in (message.get('tool_calls') or []) -%}"
    "{%- set fn = call['function'] if call.get('function') is mapping else call -%}"
    "{{ '<tool_call>{\"name\": ' + (fn.get('name') | tojson) + ', \"arguments\": ' }}"
    "{%- if fn.get('arguments') is string -%}{{ fn['arguments'] }}"
    "{%- else -%}{{ (fn.get('arguments') if fn.get('arguments') is not none else {}) | tojson }}"
    "{%- endif -%}"
    "{{ '}</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>' }}"
    "{%- endgeneration -%}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + render_content(message.get('content')) + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def build_vocab() -> dict[str, int]:
    """Specials, then role words, then the 256 byte-level characters (ids are stable across runs).

    Every byte has a token, so any UTF-8 text (printable ASCII included) encodes without unknowns and
    decodes back exactly; ASCII letters, digits and punctuation are one token per character.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS + ROLE_WORDS + [byte_chars[b] for b in range(256)]:
        vocab.setdefault(token, len(vocab))
    return vocab


def build_tokenizer(*, chat_template: str | None = None, special_tokens: Sequence[str] = (),
                    bos_token: str | None = None, eos_token: str | None = None):
    """The character-level tokenizer with the ChatML template (or ``chat_template``).

    ``chat_template``/``special_tokens``/``bos_token``/``eos_token`` put another family's template on the
    tiny model (e.g. Llama 3.2's, with ``<|start_header_id|>``, ``<|eot_id|>`` … as special tokens and
    ``bos_token="<|begin_of_text|>"``, ``eos_token="<|eot_id|>"``); the tokens are added after the base
    vocabulary, so the ids of the default tokenizer never change.

    Built as a ``Qwen2Tokenizer`` (byte-level BPE with an empty merge list, i.e. one token per byte)
    rather than a free-form ``PreTrainedTokenizerFast``: transformers 5's ``AutoTokenizer`` always
    rebuilds a ``model_type == "qwen2"`` checkpoint's tokenizer through ``Qwen2Tokenizer.__init__``
    (qwen2 is in ``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``), ignoring the pre-tokenizer and decoder
    stored in ``tokenizer.json``. A tokenizer that *is* a ``Qwen2Tokenizer`` survives that round trip,
    so ``AutoTokenizer.from_pretrained(path)`` (ours, TRL's, a user's) gives identical ids.
    The role names are added (non-special) tokens, matched as whole words anywhere in the text.
    """
    from tokenizers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(
        vocab=build_vocab(),
        merges=[],
        unk_token=UNK_TOKEN,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START],
        padding_side="left",  # batched generation; saved in tokenizer_config.json
        clean_up_tokenization_spaces=False,  # decode must invert encode exactly
        model_max_length=MAX_POSITION_EMBEDDINGS,
    )
    tokenizer.add_tokens([AddedToken(word, special=False, normalized=False) for word in ROLE_WORDS])
    extra = [t for t in dict.fromkeys([*special_tokens, bos_token, eos_token]) if t and t not in SPECIAL_TOKENS]
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, *extra]})
    if bos_token:
        tokenizer.bos_token = bos_token
    if eos_token:
        tokenizer.eos_token = eos_token
    tokenizer.chat_template = chat_template or CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(path: str | Path, *, size: ModelSize = "tiny", seed: int = 0,
                     chat_template: str | None = None, special_tokens: Sequence[str] = (),
                     bos_token: str | None = None, eos_token: str | None = None) -> Path:
    """Write a tiny Qwen2 causal LM plus tokenizer to ``path`` and return it.

    The same ``size`` and ``seed`` always give bit-identical weights. The template arguments are
    :func:`build_tokenizer`'s (another family's chat template on the tiny model).
    """
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(MODEL_SIZES)}")
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(path).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(chat_template=chat_template, special_tokens=special_tokens, bos_token=bos_token,
                                eos_token=eos_token)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        **MODEL_SIZES[size],
    )
    # Seed a private generator state: building a model must not disturb the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False)
    from .modelref import progress_bars_disabled

    with progress_bars_disabled():
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("wrote tiny Qwen2 model (%s, %d parameters, seed %d) to %s", size, n_params, seed, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """CLI: ``tiny-model PATH [--size tiny|small|vl] [--seed N]``. Logs the written path to stderr."""
    parser = argparse.ArgumentParser(
        prog="tiny-model", description="Write a tiny offline Qwen2 model + tokenizer for the embedded backend."
    )
    parser.add_argument("path", help="directory to write the model to (created if missing)")
    parser.add_argument("--size", choices=sorted(MODEL_SIZES) + ["vl"], default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    if args.size == "vl":  # a tiny vision-language model (build_tiny_vl_model)
        written = build_tiny_vl_model(args.path, seed=args.seed)
    else:
        written = build_tiny_model(args.path, size=args.size, seed=args.seed)
    logger.info("%s", written)
    return 0


# --------------------------------------------------------------------------------------------------
# tiny vision-language model (issue 8: images train on a VL model)
# --------------------------------------------------------------------------------------------------

IMAGE_TOKEN = "<image>"
VL_IMAGE_SIZE = 28  # pixels per side after resize/crop; 2x2 patches of 14 -> 4 image tokens
VL_PATCH_SIZE = 14


def build_tiny_vl_model(path: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny LLaVA-style vision-language model (``AutoModelForImageTextToText``) plus its processor.

    Text side: the ``tiny`` Qwen2 decoder and the byte-level tokenizer of :func:`build_tokenizer`, with
    ``<image>`` added as a special token; the chat template is :data:`CHAT_TEMPLATE`, whose ``<image>``
    placeholder for image parts is exactly LLaVA's image token, and whose ``{% generation %}`` markers give
    assistant-only loss. Vision side: a one-layer CLIP vision tower on 28x28 images (4 patch tokens after the
    CLS token is dropped) and LLaVA's two-layer projector. Processor: ``LlavaProcessor`` with the PIL image
    processor (resize + centre-crop to 28x28), which needs neither torchvision nor the Hub. ~41k parameters;
    the same ``seed`` gives bit-identical weights. (Qwen2-VL's processor needs torchvision for its video
    processor, which the CPU environment does not have; the trainer is architecture-agnostic.)
    """
    import torch
    from transformers import CLIPVisionConfig, GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, \
        LlavaProcessor, Qwen2Config
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    out_dir = Path(path).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IMAGE_TOKEN]})
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text_config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITION_EMBEDDINGS,
                              pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None, tie_word_embeddings=True,
                              **MODEL_SIZES["tiny"])
    vision_config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=VL_IMAGE_SIZE, patch_size=VL_PATCH_SIZE, projection_dim=16)
    config = LlavaConfig(text_config=text_config, vision_config=vision_config, image_token_id=image_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False)
    image_processor = LlavaImageProcessorPil(size={"shortest_edge": VL_IMAGE_SIZE},
                                             crop_size={"height": VL_IMAGE_SIZE, "width": VL_IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=VL_PATCH_SIZE,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN)
    from .modelref import progress_bars_disabled

    with progress_bars_disabled():
        model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    logger.info("wrote tiny LLaVA-style VL model (%d parameters, seed %d) to %s",
                sum(p.numel() for p in model.parameters()), seed, out_dir)
    return out_dir
