"""What an assistant-only loss trains, for any chat template: assistant spans, tool-call arguments, labels.

One conversation becomes one token sequence (sometimes a few, see below) with ``labels`` equal to the
token id on the tokens the loss trains and ``-100`` elsewhere. The trainer (:mod:`.trainer`) and the
read-only preview (:mod:`.preview`) both call :func:`tokenize_conversation`, so what a preview shows is
what a job trains.

How the assistant spans are found, in order of preference
    1. ``markers`` — the template has ``{% generation %}…{% endgeneration %}`` blocks: transformers'
       ``return_assistant_tokens_mask=True`` gives the mask (the template's authors said what is
       generated). A ``weight: 0`` turn is matched to its span in order (or located by prefix
       rendering when the template does not give one span per assistant turn).
    2. ``prefix-diff`` — any other template. With ``F`` the rendering of the whole conversation, for
       each assistant turn ``i``: ``P`` = render(messages[:i], add_generation_prompt=True) and
       ``Q`` = render(messages[:i+1]). The turn starts where ``P`` and ``Q`` stop agreeing (so the
       generation prompt, e.g. ``<|im_start|>assistant\\n``, is never trained: the model is given it at
       inference) and runs to the end of ``Q``; in ``F`` the span is the part of that text ``F``
       agrees with. Whitespace after a final special token (the ``\\n`` after ``<|im_end|>`` or
       ``<end_of_turn>``) is not trained; the end-of-turn token is. Templates that inject a default
       system prompt are handled because every rendering carries it. The checks: ``F`` must agree
       with ``Q`` up to the turn's start, the span in ``F`` must show the turn (its text and tool-call
       names), spans are non-empty, ordered and inside ``F``, and the tokens' character offsets must
       cover ``F`` and every span.
    3. ``per-turn`` — a template that renders an earlier turn differently once later turns exist
       (Qwen3 drops ``<think>…</think>`` from assistant turns before the last user message;
       DeepSeek-R1-distill drops everything up to ``</think>``): that turn is not trained inside ``F``
       (its text there is not what the model generated) but in an extra sequence, ``Q`` itself, which
       is the conversation exactly as the model saw it when it produced that turn.
    4. ``fallback`` — spans cannot be found (a prefix does not render with a generation prompt, a
       turn renders to nothing, the checks fail): the example is trained on the whole sequence and
       the caller counts and warns about it (with line numbers). Never silent.
    A template that renders an assistant turn without its ``tool_calls`` (Llama 3.0, Phi-3,
    DeepSeek-R1-distill, SmolLM2-style ChatML) is an error (:class:`TemplateDropsContentError`): the
    model would learn an empty reply. Templates that raise on a conversation (Gemma: no system
    role, strict user/assistant alternation) raise here too; the trainer names the line.
    ``full-sequence`` — ``assistant_only_loss = false``: every token is trained (the caller warns).

Tool-call arguments
    OpenAI-format data carries ``"arguments"`` as a JSON *string*. Templates that apply ``tojson`` to the
    arguments (Qwen2.5, Llama 3.1/3.2, the tiny model's) would render that as a quoted string and teach
    the model to emit one. Like Synth's loader, :func:`decode_tool_arguments` decodes them into objects
    before rendering. Templates that need a string (DeepSeek-V3 concatenates ``'…' + arguments``)
    fail to render an object or print its Python repr; then the original strings are used.

torch-free; the tokenizer is any ``transformers`` tokenizer.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

METHOD_MARKERS = "markers"
METHOD_PREFIX_DIFF = "prefix-diff"
METHOD_PER_TURN = "per-turn"
METHOD_FALLBACK = "fallback"
METHOD_FULL_SEQUENCE = "full-sequence"

_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


class ToolArgumentsError(ValueError):
    """A tool call's ``arguments`` string is not JSON (``message_index``: its message in the conversation)."""

    def __init__(self, message: str, message_index: int) -> None:
        super().__init__(message)
        self.message_index = message_index


class SpanError(Exception):
    """Assistant spans could not be found or failed a check (leads to the fallback mode)."""


class TemplateDropsContentError(ValueError):
    """The chat template renders an assistant turn without part of it (its tool calls): training would
    teach the model an incomplete reply, so the example cannot be trained with this model."""


@dataclass
class TokenizedExample:
    """One training sequence.

    ``input_ids`` / ``labels`` (``-100`` outside trained tokens) after truncation to ``max_length``;
    ``text`` the rendered conversation; ``length`` its token count before truncation; ``method`` how
    the spans were found (module docstring); ``extra`` further sequences of the same conversation
    (``per-turn`` spans), each a :class:`TokenizedExample` without ``extra``; ``notes`` what the caller
    should know (fallback reasons).
    """

    input_ids: list[int]
    labels: list[int]
    text: str = ""
    length: int = 0
    method: str = METHOD_MARKERS
    extra: list[TokenizedExample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def trainable_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def truncated(self) -> bool:
        return self.length > len(self.input_ids)

    def sequences(self) -> list[TokenizedExample]:
        """The ``extra`` sequences, then this one: conversation order, as templates re-render only turns
        before the last user message differently."""
        return [*self.extra, self]


# --------------------------------------------------------------------------------------------------
# tool-call arguments
# --------------------------------------------------------------------------------------------------


def _map_tool_arguments(messages: list[dict[str, Any]], convert) -> tuple[list[dict[str, Any]], bool]:
    """``messages`` with ``convert(arguments, message_index, name)`` applied to every tool call's arguments
    (both call forms: ``{"function": {"name", "arguments"}}`` and flat ``{"name", "arguments"}``)."""
    changed = False
    result = []
    for index, message in enumerate(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if not isinstance(calls, list) or not calls:
            result.append(message)
            continue
        new_calls = []
        for call in calls:
            nested = isinstance(call, dict) and isinstance(call.get("function"), dict)
            holder = call["function"] if nested else call
            if isinstance(holder, dict) and "arguments" in holder:
                arguments = convert(holder["arguments"], index, holder.get("name"))
                if arguments is not holder["arguments"]:
                    holder = {**holder, "arguments": arguments}
                    call = {**call, "function": holder} if nested else holder
                    changed = True
            new_calls.append(call)
        result.append({**message, "tool_calls": new_calls})
    return result, changed


def _decode_arguments(arguments: Any, index: int, name: Any) -> Any:
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except ValueError as exc:
        raise ToolArgumentsError(f"message {index}: tool call {name!r} has arguments that are not valid JSON "
                                 f"({exc})", index) from None


def _encode_arguments(arguments: Any, index: int, name: Any) -> Any:
    return arguments if isinstance(arguments, str) or arguments is None else json.dumps(arguments, ensure_ascii=False)


def decode_tool_arguments(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """``messages`` with every tool call's JSON-string ``arguments`` decoded to an object.

    Returns ``(messages, changed)``; the input is not modified. Raises :class:`ToolArgumentsError` for
    a string that is not JSON. The rule is Synth's loader's (tool calls are decoded before rendering).
    """
    return _map_tool_arguments(messages, _decode_arguments)


def _argument_objects(messages: list[dict[str, Any]]) -> list[Any]:
    objects = []
    for message in messages:
        for call in message.get("tool_calls") or []:
            holder = call.get("function") if isinstance(call.get("function"), dict) else call
            if isinstance(holder.get("arguments"), (dict, list)) and holder.get("arguments"):
                objects.append(holder["arguments"])
    return objects


def flatten_multimodal(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Content lists → text (text parts' text, ``<image>`` for image parts), for templates that only
    accept string content."""
    flattened = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, (list, dict)):
            parts = content if isinstance(content, list) else [content]
            text = "".join(
                part if isinstance(part, str)
                else "<image>" if isinstance(part, dict) and part.get("type") in ("image", "image_url", "input_image")
                else str(part.get("text", "")) if isinstance(part, dict) else ""
                for part in parts
            )
            message = {**message, "content": text}
        flattened.append(message)
    return flattened


# --------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------


def has_generation_markers(template: str | dict[str, str] | None) -> bool:
    """Whether the template (or every one of a tokenizer's named templates) has ``{% generation %}``."""
    if isinstance(template, dict):
        return bool(template) and all(has_generation_markers(t) for t in template.values())
    return isinstance(template, str) and bool(_GENERATION_MARKER.search(template))


def _render(tokenizer, messages, tools, chat_template, *, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, chat_template=chat_template, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def choose_messages(tokenizer, messages: list[dict[str, Any]], tools: list | None,
                    chat_template: str | None) -> tuple[list[dict[str, Any]], str]:
    """The variant of ``messages`` the template renders correctly, and its full rendering.

    Tries tool arguments decoded to objects first, then as JSON strings (a template that needs strings
    fails on an object or prints its Python repr), each as given and with multimodal content flattened.
    Raises the first rendering error when no variant renders; :class:`ToolArgumentsError` for
    arguments that are not JSON.
    """
    decoded, _ = decode_tool_arguments(messages)
    objects = _argument_objects(decoded)
    candidates = [decoded]
    if objects:
        candidates.append(_map_tool_arguments(messages, _encode_arguments)[0])
    if any(isinstance(m.get("content"), (list, dict)) for m in messages):
        candidates += [flatten_multimodal(c) for c in candidates]
    first_error: Exception | None = None
    repr_rendering: tuple[list[dict[str, Any]], str] | None = None
    for number, candidate in enumerate(candidates):
        try:
            text = _render(tokenizer, candidate, tools, chat_template)
        except Exception as exc:  # jinja errors, raise_exception(), TypeError on str + dict
            first_error = first_error or exc
            continue
        if number % 2 == 0 and objects and len(candidates) > 1 and any(
                repr(obj) in text and json.dumps(obj, ensure_ascii=False) not in text for obj in objects):
            repr_rendering = repr_rendering or (candidate, text)
            continue  # the template printed the object's Python repr: it wants the string
        return candidate, text
    if repr_rendering is not None:
        return repr_rendering
    assert first_error is not None
    raise first_error


def _special_strings(tokenizer) -> tuple[str, ...]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        if getattr(token, "special", False):
            specials.add(str(token.content))
    return tuple(sorted((s for s in specials if s and not s.isspace()), key=len, reverse=True))


def _common_prefix(a: str, b: str, start: int = 0) -> int:
    """Index where ``a`` and ``b`` first differ at or after ``start`` (the caller knows they agree before it).

    Binary search over slice comparisons, so long renderings are compared at C speed.
    """
    low, high = start, min(len(a), len(b))
    if a[low:high] == b[low:high]:
        return high
    while high - low > 1:  # a[low:high] != b[low:high]
        middle = (low + high) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle
    return low


def _trim_end(text: str, start: int, end: int, specials: tuple[str, ...]) -> int:
    """``end`` moved back out of a special token it cuts through (two renderings agreeing on ``<|`` of
    different tokens), then back over whitespace that follows a special token (the ``\\n`` after
    ``<|im_end|>``, which the model never generates)."""
    for special in specials:
        first = text.find(special, max(start, end - len(special) + 1), end + len(special) - 1)
        if first != -1 and first < end < first + len(special):
            end = first
            break
    stripped = len(text[start:end].rstrip()) + start
    if stripped < end and any(text[start:stripped].endswith(s) for s in specials):
        return stripped
    return end


def _content_needles(message: dict[str, Any]) -> list[str]:
    """The assistant turn's text as a template shows it: stripped, and after ``</think>`` (templates drop
    reasoning written into the content)."""
    content = message.get("content")
    parts = [content] if isinstance(content, str) else [
        p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
    ] if isinstance(content, list) else []
    return [p.split("</think>")[-1].strip() for p in parts if p and p.split("</think>")[-1].strip()]


def _tool_call_names(message: dict[str, Any]) -> list[str]:
    names = []
    for call in message.get("tool_calls") or []:
        holder = call.get("function") if isinstance(call, dict) and isinstance(call.get("function"), dict) else call
        if isinstance(holder, dict) and isinstance(holder.get("name"), str):
            names.append(holder["name"])
    return names


def _turn_visible(message: dict[str, Any], text: str) -> bool:
    """Whether ``text`` shows the assistant turn: its text content and its tool calls' names."""
    return all(needle in text for needle in _content_needles(message) + _tool_call_names(message))


def is_untrained(message: dict[str, Any]) -> bool:
    """``weight: 0`` (learning-api.md §2: per-message weight 0 or 1)."""
    weight = message.get("weight")
    return weight is not None and not isinstance(weight, str) and float(weight) == 0.0


@dataclass
class _PrefixDiff:
    spans: list[tuple[int, int]]  # trained character spans in the full rendering
    per_turn: list[tuple[str, tuple[int, int]]]  # (sequence text, its trained span)
    notes: list[str]


def prefix_diff_spans(tokenizer, messages: list[dict[str, Any]], tools: list | None, chat_template: str | None,
                      full_text: str) -> _PrefixDiff:
    """Character spans of the trained assistant turns in ``full_text`` by rendering prefixes (module
    docstring); ``weight: 0`` turns are left out.

    Raises :class:`SpanError` when a turn cannot be located (the caller falls back) and
    :class:`TemplateDropsContentError` when the template does not render a turn's tool calls.
    """
    specials = _special_strings(tokenizer)
    spans: list[tuple[int, int]] = []
    per_turn: list[tuple[str, tuple[int, int]]] = []
    notes: list[str] = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or is_untrained(message):
            continue
        try:
            prompt = _render(tokenizer, messages[:index], tools, chat_template, generation_prompt=True)
        except Exception as exc:
            raise SpanError(f"message {index}: the conversation before this assistant turn does not render with a "
                            f"generation prompt ({type(exc).__name__}: {str(exc)[:200]})") from None
        try:
            own = _render(tokenizer, messages[: index + 1], tools, chat_template)
        except Exception as exc:
            raise SpanError(f"message {index}: the conversation up to this assistant turn does not render "
                            f"({type(exc).__name__}: {str(exc)[:200]})") from None
        start = _common_prefix(prompt, own)
        own_end = _trim_end(own, start, len(own), specials)
        if own_end <= start:
            raise SpanError(f"message {index}: the template renders this assistant turn as nothing")
        missing = [name for name in _tool_call_names(message) if name not in own[start:own_end]]
        if missing:
            raise TemplateDropsContentError(
                f"message {index}: the model's chat template does not render this assistant turn's tool_calls "
                f"({', '.join(missing)}), so the model would learn an incomplete reply; use a model whose chat "
                "template supports tool calls, or remove the tool calls from the data")
        if start == 0:
            raise SpanError(f"message {index}: the rendering up to this assistant turn shares nothing with the "
                            "rendering before it")
        if start < len(prompt):  # e.g. DeepSeek-R1-distill prompts with "<think>\n", which training turns lack
            notes.append(f"message {index}: the generation prompt ends in {prompt[start:][:40]!r}, which the "
                         "rendered turn does not start with; the span starts where they part")
        if full_text[:start] == own[:start]:
            end = _trim_end(full_text, start, _common_prefix(own[:own_end], full_text, start), specials)
            if end > start and (end == own_end or _turn_visible(message, full_text[start:end])):
                if spans and start < spans[-1][1]:
                    raise SpanError(f"message {index}: its span overlaps the previous assistant turn's")
                spans.append((start, end))
                continue
        if not _turn_visible(message, own[start:own_end]):
            raise SpanError(f"message {index}: the assistant turn's text is not in its own rendering")
        per_turn.append((own, (start, own_end)))
    return _PrefixDiff(spans=spans, per_turn=per_turn, notes=notes)


# --------------------------------------------------------------------------------------------------
# tokens
# --------------------------------------------------------------------------------------------------


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError):  # a slow (Python) tokenizer has no offsets
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), None


def _labels_for_spans(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` and labels trained on the tokens overlapping ``spans``; checked."""
    previous_end = 0
    for a, b in spans:
        if not 0 <= a < b <= len(text):
            raise SpanError(f"span {a}:{b} lies outside the rendered text (length {len(text)})")
        if a < previous_end:
            raise SpanError(f"span {a}:{b} overlaps the span before it")
        previous_end = b
    input_ids, offsets = _encode(tokenizer, text)
    if offsets is None:  # no offsets: tokenise the pieces between span boundaries
        input_ids, labels, cursor = [], [], 0
        for a, b in spans:
            for piece, trained in ((text[cursor:a], False), (text[a:b], True)):
                ids = tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
                input_ids += ids
                labels += ids if trained else [IGNORE_INDEX] * len(ids)
            cursor = b
        tail = tokenizer(text[cursor:], add_special_tokens=False)["input_ids"] if cursor < len(text) else []
        return input_ids + tail, labels + [IGNORE_INDEX] * len(tail)
    if input_ids and (offsets[-1][1] < len(text.rstrip()) or any(
            later[0] < earlier[0] for earlier, later in zip(offsets, offsets[1:]))):
        raise SpanError("the tokenizer's offsets do not cover the rendered text")
    labels = [IGNORE_INDEX] * len(input_ids)
    covered = [False] * len(spans)
    current = 0
    for i, (start, end) in enumerate(offsets):  # spans and offsets are both in text order
        if end <= start:
            continue
        while current < len(spans) and spans[current][1] <= start:
            current += 1
        if current == len(spans):
            break
        if start < spans[current][1] and end > spans[current][0]:
            labels[i] = input_ids[i]
            covered[current] = True
    for (a, b), hit in zip(spans, covered):
        if not hit:
            raise SpanError(f"no token covers the span {text[a:b]!r}")
    return input_ids, labels


def _truncate(example: TokenizedExample, max_length: int | None) -> TokenizedExample:
    example.length = len(example.input_ids)
    if max_length is not None:  # TRL's truncation_mode="keep_start"
        example.input_ids, example.labels = example.input_ids[:max_length], example.labels[:max_length]
    return example


def _marker_example(tokenizer, messages, tools, chat_template, text: str) -> TokenizedExample:
    rendered = tokenizer.apply_chat_template(messages, tools=tools, chat_template=chat_template, tokenize=True,
                                             return_dict=True, return_assistant_tokens_mask=True)
    input_ids = list(rendered["input_ids"])
    mask = list(rendered["assistant_masks"])
    labels = [token if bit else IGNORE_INDEX for token, bit in zip(input_ids, mask)]
    assistant_indices = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    untrained = [i for i in assistant_indices if is_untrained(messages[i])]
    if untrained:
        spans = assistant_spans(mask)
        if len(spans) == len(assistant_indices):
            span_of = dict(zip(assistant_indices, spans))
            for index in untrained:
                start, end = span_of[index]
                labels[start:end] = [IGNORE_INDEX] * (end - start)
        else:
            # The template does not give one span per assistant turn (e.g. it marks only the last one):
            # locate each weight-0 turn by rendering the conversation up to and through it.
            for index in untrained:
                start = len(_render_ids(tokenizer, messages[:index], tools, chat_template)) if index else 0
                end = len(_render_ids(tokenizer, messages[: index + 1], tools, chat_template))
                labels[start:end] = [IGNORE_INDEX] * max(0, min(end, len(labels)) - start)
    return TokenizedExample(input_ids=input_ids, labels=labels, text=text, method=METHOD_MARKERS)


def _render_ids(tokenizer, messages, tools, chat_template) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tools=tools, chat_template=chat_template, tokenize=True,
                                              return_dict=True)["input_ids"])


def assistant_spans(mask: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of 1 in an assistant mask, as ``[start, end)`` pairs."""
    spans: list[tuple[int, int]] = []
    start: int | None = None
    for index, bit in enumerate(list(mask) + [0]):
        if bit and start is None:
            start = index
        elif not bit and start is not None:
            spans.append((start, index))
            start = None
    return spans


def tokenize_conversation(tokenizer, messages: list[dict[str, Any]], tools: list | None = None, *,
                          chat_template: str | None = None, max_length: int | None = None,
                          assistant_only_loss: bool = True) -> TokenizedExample:
    """Token ids and labels for one conversation, as the trainer trains it (module docstring).

    ``chat_template`` overrides the tokenizer's. ``max_length`` truncates each sequence, keeping the
    start. Raises :class:`ToolArgumentsError` (arguments not JSON) and whatever the template raises
    when it cannot render the conversation at all; span problems never raise (``fallback``).
    """
    messages, text = choose_messages(tokenizer, messages, tools, chat_template)
    if not assistant_only_loss:
        input_ids, _ = _encode(tokenizer, text)
        return _truncate(TokenizedExample(input_ids=input_ids, labels=list(input_ids), text=text,
                                          method=METHOD_FULL_SEQUENCE), max_length)
    template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    if has_generation_markers(template):
        return _truncate(_marker_example(tokenizer, messages, tools, chat_template, text), max_length)
    try:
        diff = prefix_diff_spans(tokenizer, messages, tools, chat_template, text)
        input_ids, labels = _labels_for_spans(tokenizer, text, diff.spans)
        extra = []
        for own, span in diff.per_turn:
            own_ids, own_labels = _labels_for_spans(tokenizer, own, [span])
            extra.append(_truncate(TokenizedExample(input_ids=own_ids, labels=own_labels, text=own,
                                                    method=METHOD_PER_TURN), max_length))
    except SpanError as exc:
        logger.debug("assistant spans not found (%s); training the whole sequence", exc)
        input_ids, _ = _encode(tokenizer, text)
        trained = any(m.get("role") == "assistant" and not is_untrained(m) for m in messages)
        return _truncate(TokenizedExample(input_ids=input_ids, labels=list(input_ids) if trained else
                                          [IGNORE_INDEX] * len(input_ids), text=text, method=METHOD_FALLBACK,
                                          notes=[str(exc)]), max_length)
    method = METHOD_PER_TURN if extra else METHOD_PREFIX_DIFF
    return _truncate(TokenizedExample(input_ids=input_ids, labels=labels, text=text, method=method, extra=extra,
                                      notes=diff.notes), max_length)


def trained_texts(tokenizer, example: TokenizedExample) -> list[str]:
    """The decoded trained spans of ``example`` and its extra sequences, in order."""
    texts = []
    for sequence in example.sequences():
        mask = [1 if label != IGNORE_INDEX else 0 for label in sequence.labels]
        texts += [tokenizer.decode(sequence.input_ids[a:b], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False) for a, b in assistant_spans(mask)]
    return texts


__all__ = [
    "IGNORE_INDEX", "METHOD_FALLBACK", "METHOD_FULL_SEQUENCE", "METHOD_MARKERS", "METHOD_PER_TURN",
    "METHOD_PREFIX_DIFF", "SpanError", "TokenizedExample", "ToolArgumentsError", "assistant_spans",
    "choose_messages", "decode_tool_arguments", "flatten_multimodal", "has_generation_markers",
    "is_untrained", "prefix_diff_spans", "tokenize_conversation", "trained_texts",
]
