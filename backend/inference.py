"""OpenAI-style chat completions over base and fine-tuned models, for evaluation.

``POST /api/inference/v1/chat/completions`` hands the request body to
:meth:`InferenceEngine.chat_completion`, which validates it, renders the prompt with the model's own
chat template and generates with transformers ``generate``.

Batching
    Evaluation fires many small requests at once (one per problem, ``n`` samples each). Requests for
    the same model with the same sampling parameters (temperature, top_p, top_k, max_tokens, seed) are
    queued under one key; ``batch_window_s`` after the first one arrives, the queue is drained into
    batches of at most ``max_batch_size`` rows (each request contributes ``n`` rows; a greedy request
    contributes one row, copied ``n`` times, since greedy samples are identical). Each batch is ONE
    left-padded ``generate`` call run in a worker thread (``asyncio.to_thread``), so the event loop keeps
    serving. One generation runs at a time per engine (an ``asyncio.Lock``), which bounds memory; while
    it runs, new requests pile up and are coalesced into the next batch. ``stats`` counts
    ``generate_calls``, ``requests``, ``batched_requests`` (requests that shared a ``generate`` call
    with another request), ``generated_tokens`` and ``max_batch_rows``.

Decoding (training-notes §9.2 gotchas)
    ``apply_chat_template(..., add_generation_prompt=True, tokenize=False)`` then tokenise with
    ``add_special_tokens=False``; pad/eos ids passed explicitly; each row is cut at the first EOS /
    ``<|im_end|>``, pad stripped, special tokens skipped. ``chat_template_kwargs`` from the request body (e.g.
    ``{"enable_thinking": false}``) are passed to ``apply_chat_template``, as vLLM's API does.
    ``finish_reason`` is ``"stop"`` when an end token or stop string ended the text, else ``"length"``.

Stop strings
    ``stop`` strings END generation: ``generate`` gets a ``StoppingCriteria`` that, after every step, decodes the
    last few GENERATED tokens of each row and finishes that row as soon as they contain a stop string, so no tokens
    are spent past it. (transformers' own ``stop_strings`` also matches a stop string that begins in the prompt –
    ``"\\n\\n"`` after a template's ``"assistant\\n"`` would end generation at its first token – hence our own.)
    The returned text ends before the earliest stop string (which is not returned), ``finish_reason`` is ``"stop"``,
    and ``usage.completion_tokens`` counts the tokens generated up to and including the one that completed the stop
    string – as vLLM counts them, and as an end token is counted – never the padding after it. Stop strings are part
    of the batching key, so rows of one ``generate`` call share them. ``stats["decode_steps"]`` counts the steps
    ``generate`` actually ran.
    With ``seed`` set, the batch runs under a forked RNG seeded with it, so a request served alone is
    reproducible (a batch shares one seed; its rows still get different samples).

Models
    Loaded on first use through :mod:`.modelref` (LoRA adapters merged) and kept in an LRU cache of
    ``max_loaded_models`` entries keyed by model id, so a model fine-tuned after the engine started is
    served without a restart. Before a model is loaded, least-recently-used ones are evicted until it fits
    the count and the memory budget (``memory_budget_mb``, ``LEARNING_MCP_INFERENCE_MEMORY_MB``); models
    unused for ``idle_unload_s`` (``LEARNING_MCP_INFERENCE_IDLE_UNLOAD_S``, default 600) are unloaded
    (:mod:`.memory`). A LoRA adapter loaded at run time under a served name (``load_lora_adapter``,
    :mod:`.adapters`) is served like a LoRA ``ft:`` model under that name. torch/transformers are imported lazily.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from learning_mcp.tools.errors import LearningMCPError

from .memory import available_bytes, estimate_model_bytes, loaded_bytes
from .modelref import (
    ModelRefError,
    ResolvedModel,
    check_loadable,
    cpu_threads_for,
    load_model_for_inference,
    load_tokenizer,
    pick_device_and_dtype,
    resolve_model,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
MAX_MAX_TOKENS = 32768
MAX_N = 128
MAX_STOP_STRINGS = 16
IGNORED_FIELDS = {
    "thinking_budget", "user", "metadata", "tool_choice", "parallel_tool_calls", "frequency_penalty",
    "presence_penalty", "logit_bias", "logprobs", "top_logprobs", "response_format", "store", "service_tier",
    "stream_options", "reasoning_effort", "modalities", "prediction", "audio", "extra_body",
    "repetition_penalty", "min_p",
}
KNOWN_FIELDS = {"model", "messages", "tools", "n", "temperature", "top_p", "top_k", "max_tokens",
                "max_completion_tokens", "stop", "seed", "stream", "chat_template_kwargs"} | IGNORED_FIELDS
# apply_chat_template arguments the engine sets itself; chat_template_kwargs may not override them
RESERVED_TEMPLATE_KWARGS = {"conversation", "messages", "tools", "tokenize", "add_generation_prompt", "return_dict",
                            "return_tensors", "continue_final_message", "chat_template", "tokenizer_kwargs"}


class InferenceError(LearningMCPError):
    """A request the engine refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(code, message, param=param, status=status)


# --------------------------------------------------------------------------------------------------
# request parsing (pure)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """What must be equal for two requests to share a ``generate`` call."""

    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    seed: int | None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    n: int
    sampling: SamplingParams
    stop: list[str]
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)


def _bad(message: str, param: str, status: int = 400, code: str = "invalid_request") -> InferenceError:
    return InferenceError(status, code, message, param)


def _number(body: dict, key: str, default: float, *, minimum: float, maximum: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{key} must be a number", key, 422, "invalid_type")
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise _bad(f"{key} must be between {minimum:g} and {maximum:g}, got {value!r}", key)
    return float(value)


def _integer(body: dict, key: str, default: int | None, *, minimum: int, maximum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _bad(f"{key} must be an integer", key, 422, "invalid_type")
    if not minimum <= value <= maximum:
        raise _bad(f"{key} must be between {minimum} and {maximum}, got {value}", key)
    return value


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate an OpenAI chat-completions body. Raises :class:`InferenceError` (400/422) naming the field."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, 422, "invalid_type")  # type: ignore[arg-type]
    if body.get("stream") not in (None, False):
        raise _bad("stream=true is not supported by the embedded backend; omit stream or set it to false", "stream")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model is required: a base model id, a local model path or a fine-tuned 'ft:' id", "model",
                   422, "missing_field" if model is None else "invalid_type")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list of {role, content} objects", "messages", 422,
                   "missing_field" if messages is None else "invalid_type")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages[{index}] is not an object", f"messages[{index}]", 422, "invalid_type")
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise _bad(f"messages[{index}].role must be a non-empty string", f"messages[{index}].role", 422,
                       "invalid_type")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list, dict)):
            raise _bad(f"messages[{index}].content must be a string, a list of content parts or null",
                       f"messages[{index}].content", 422, "invalid_type")
        if message.get("tool_calls") is not None and not isinstance(message["tool_calls"], list):
            raise _bad(f"messages[{index}].tool_calls must be a list", f"messages[{index}].tool_calls", 422,
                       "invalid_type")
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise _bad("tools must be a list of tool objects", "tools", 422, "invalid_type")

    n = _integer(body, "n", 1, minimum=1, maximum=MAX_N)
    temperature = _number(body, "temperature", 1.0, minimum=0.0, maximum=2.0)
    top_p = _number(body, "top_p", 1.0, minimum=0.0, maximum=1.0)
    if top_p == 0.0:
        raise _bad("top_p must be greater than 0", "top_p")
    top_k = _integer(body, "top_k", 0, minimum=0, maximum=1_000_000)
    max_key = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    max_tokens = _integer(body, max_key, DEFAULT_MAX_TOKENS, minimum=1, maximum=MAX_MAX_TOKENS)
    seed = _integer(body, "seed", None, minimum=-(2**63), maximum=2**64 - 1)

    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise _bad("stop must be a string or a list of strings", "stop", 422, "invalid_type")
    if len(stops) > MAX_STOP_STRINGS:
        raise _bad(f"at most {MAX_STOP_STRINGS} stop strings are supported", "stop")
    stops = list(dict.fromkeys(s for s in stops if s))
    template_kwargs = body.get("chat_template_kwargs")
    if template_kwargs is None:
        template_kwargs = {}
    elif not isinstance(template_kwargs, dict):
        raise _bad("chat_template_kwargs must be an object, e.g. {\"enable_thinking\": false}", "chat_template_kwargs",
                   422, "invalid_type")
    reserved = sorted(set(template_kwargs) & RESERVED_TEMPLATE_KWARGS)
    if reserved:
        raise _bad(f"chat_template_kwargs may not set {', '.join(reserved)} (the server sets it)",
                   "chat_template_kwargs")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        logger.debug("ignoring unknown chat-completion fields %s", unknown)

    # top_p/top_k do not matter for greedy decoding: normalise them so greedy requests coalesce
    if temperature == 0.0:
        top_p, top_k = 1.0, 0
    sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k or 0, max_tokens=max_tokens,
                              seed=seed, stop=tuple(stops))
    return ChatRequest(model=model.strip(), messages=messages, tools=tools or None, n=n, sampling=sampling,
                       stop=stops, chat_template_kwargs=dict(template_kwargs))


def apply_stop_strings(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string; ``(text, stopped)``."""
    cut = min((index for index in (text.find(s) for s in stops) if index >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _stop_criteria(tokenizer: Any, stops: tuple[str, ...], prompt_width: int) -> Any:
    """A ``StoppingCriteriaList`` that ends each row once its generated text (after ``prompt_width``) contains a
    stop string. Only the last ``longest stop + 4`` tokens are decoded per step (a token decodes to >= 1 character,
    so a stop string completed by the newest token lies inside them)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    window = max(len(stop) for stop in stops) + 4

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            generated = input_ids[:, prompt_width:]
            done = [
                any(stop in tokenizer.decode(row[-window:].tolist(), skip_special_tokens=True) for stop in stops)
                for row in generated
            ]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnStrings()])


def _tokens_to_stop(tokenizer: Any, tokens: list[int], stops: tuple[str, ...]) -> int:
    """The fewest leading ``tokens`` whose decoded text contains a stop string (binary search; the text of a
    longer prefix contains that of a shorter one). ``len(tokens)`` when no prefix does."""
    low, high = 1, len(tokens)
    while low < high:
        middle = (low + high) // 2
        if any(stop in tokenizer.decode(tokens[:middle], skip_special_tokens=True) for stop in stops):
            high = middle
        else:
            low = middle + 1
    return high


# --------------------------------------------------------------------------------------------------
# engine
# --------------------------------------------------------------------------------------------------


DISCONNECT_POLL_S = 0.5
MAX_PROMPT_CHARS_PER_TOKEN = 16  # a prompt longer than context × this many characters cannot fit: refused untokenised


def prompt_chars(request: ChatRequest) -> int:
    """The characters a request's messages and tools hold (their JSON text), counted without tokenising."""
    return len(json.dumps(request.messages, ensure_ascii=False, default=str)) + \
        (len(json.dumps(request.tools, ensure_ascii=False, default=str)) if request.tools else 0)


def check_prompt_size(request: ChatRequest, context_size: int | None, model_id: str) -> None:
    """Refuse (400 ``context_length_exceeded``) a prompt of more than ``context_size`` ×
    :data:`MAX_PROMPT_CHARS_PER_TOKEN` characters before it is tokenised: no tokenizer yields fewer tokens per
    character than that on text, and tokenising 1 MB of prompt cost the backend 0.46 GB of memory."""
    if not context_size:
        return
    limit = context_size * MAX_PROMPT_CHARS_PER_TOKEN
    chars = prompt_chars(request)
    if chars > limit:
        raise InferenceError(400, "context_length_exceeded",
                             f"the prompt is {chars} characters; model {model_id!r} has a context of {context_size} "
                             f"tokens, so at most {limit} characters are accepted; shorten the messages", "messages")


def render_prompt_ids(tokenizer: Any, request: ChatRequest) -> list[int]:
    """The prompt's token ids: the model's chat template over ``request.messages`` (and ``tools``) with the
    generation prompt and ``chat_template_kwargs``, tokenised without special tokens (training-notes §9.2).
    Multimodal content parts are flattened to text when the template cannot render them. Raises InferenceError 400
    ``invalid_messages``. Shared by the transformers and the vLLM engine, so both see the same prompt."""
    try:
        text = tokenizer.apply_chat_template(request.messages, tools=request.tools, add_generation_prompt=True,
                                             tokenize=False, **request.chat_template_kwargs)
    except Exception as exc:
        if not any(isinstance(m.get("content"), (list, dict)) for m in request.messages):
            raise InferenceError(400, "invalid_messages", f"the model's chat template cannot render these "
                                 f"messages: {exc}", "messages") from exc
        from .trainer import flatten_multimodal

        text = tokenizer.apply_chat_template(flatten_multimodal(request.messages), tools=request.tools,
                                             add_generation_prompt=True, tokenize=False,
                                             **request.chat_template_kwargs)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def end_token_ids(tokenizer: Any, generation_eos: Any) -> list[int]:
    """The ids that end a completion: the tokenizer's EOS, ``<|im_end|>`` when the vocabulary has it, and the
    generation config's ``eos_token_id`` (an int or a list); unknown/negative ids and the UNK id are left out."""
    candidates = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    candidates += generation_eos if isinstance(generation_eos, list) else [generation_eos]
    eos_ids: list[int] = []
    for token_id in candidates:
        if isinstance(token_id, int) and token_id >= 0 and token_id != tokenizer.unk_token_id \
                and token_id not in eos_ids:
            eos_ids.append(token_id)
    return eos_ids


def completion_response(model: str, texts: list[str], finish_reasons: list[str], completion_tokens: list[int],
                        prompt_tokens: int) -> dict:
    """An OpenAI ``chat.completion`` dict: one choice per text (``finish_reason`` ``"stop"`` or ``"length"``) and
    ``usage`` (``completion_tokens`` summed over the choices, the prompt counted once, as OpenAI and vLLM count)."""
    choices = [
        {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
         "logprobs": None}
        for index, (text, reason) in enumerate(zip(texts, finish_reasons))
    ]
    completion = sum(completion_tokens)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                  "total_tokens": prompt_tokens + completion},
    }


class _AbandonedRows:
    """A transformers ``StoppingCriteria``: a row stops when the request it belongs to has no caller any more
    (its future is done: cancelled on disconnect). Reading ``Future.done()`` from the generation thread is a
    plain attribute read."""

    def __init__(self, owners: list[asyncio.Future]) -> None:
        self.owners = owners

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.tensor([owner.done() for owner in self.owners], dtype=torch.bool, device=input_ids.device)


@dataclass
class _LoadedModel:
    resolved: ResolvedModel
    model: Any
    tokenizer: Any
    device: str
    eos_ids: list[int]
    pad_id: int
    context_size: int | None
    bytes: int = 0  # parameters + buffers (memory.loaded_bytes)
    last_used: float = 0.0  # time.monotonic() of the last request that used it


@dataclass
class _Pending:
    request: ChatRequest
    future: asyncio.Future
    rows: int  # rows this request puts in a batch
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class _Completion:
    texts: list[str]
    finish_reasons: list[str]
    completion_tokens: list[int]
    prompt_tokens: int


class InferenceEngine:
    """Serves chat completions for base and fine-tuned models; see the module docstring."""

    def __init__(self, models_dir: Path, *, max_batch_size: int = 64, batch_window_s: float = 0.01,
                 max_loaded_models: int = 2, device: str | None = None, memory_budget_mb: int | None = None,
                 idle_unload_s: float | None = None, adapters: Any = None) -> None:
        """``adapters``: the backend's :class:`~learning_mcp.backend.adapters.AdapterRegistry` (LoRA adapters loaded
        at run time under a served name, vLLM's ``load_lora_adapter``); None: none."""
        if max_batch_size < 1 or max_loaded_models < 1:
            raise ValueError("max_batch_size and max_loaded_models must be >= 1")
        # the operator's settings (Settings.inference_memory_mb / inference_idle_unload_s), passed by backend/state.py
        memory_budget_mb = 0 if memory_budget_mb is None else memory_budget_mb
        idle_unload_s = 600.0 if idle_unload_s is None else idle_unload_s
        self.memory_budget_bytes = max(0, int(memory_budget_mb)) * 2**20  # 0: no byte budget
        self.idle_unload_s = max(0.0, float(idle_unload_s))  # 0: never unload idle models
        self._idle_stop = threading.Event()
        self._idle_thread: threading.Thread | None = None
        self.models_dir = Path(models_dir)
        self.max_batch_size = max_batch_size
        self.batch_window_s = max(0.0, batch_window_s)
        self.max_loaded_models = max_loaded_models
        self._device_override = device
        self.adapters = adapters
        self._models: OrderedDict[str, _LoadedModel] = OrderedDict()
        self._models_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generate_lock: asyncio.Lock | None = None
        self._queues: dict[tuple[str, SamplingParams], deque[_Pending]] = {}
        self._flushers: dict[tuple[str, SamplingParams], asyncio.Task] = {}
        self._closed = False
        self.stats: dict[str, int] = {"generate_calls": 0, "requests": 0, "batched_requests": 0,
                                      "generated_tokens": 0, "prompt_tokens": 0, "max_batch_rows": 0,
                                      "model_loads": 0, "decode_steps": 0, "abandoned_requests": 0}

    # -- public API ---------------------------------------------------------------------------------

    async def chat_completion(self, body: dict, *,
                              is_disconnected: Callable[[], Awaitable[bool]] | None = None) -> dict:
        """Answer one chat-completions request body with an OpenAI ``chat.completion`` dict.

        ``is_disconnected`` (the route passes Starlette's ``Request.is_disconnected``) is polled every
        :data:`DISCONNECT_POLL_S` while the request waits: once the caller has gone (or the awaiting task is
        cancelled) the request leaves the queue, and rows of a running batch that nobody waits for stop at the
        next decode step (:class:`_AbandonedRows`). Raises InferenceError 499 ``client_disconnected`` then."""
        if self._closed:
            raise InferenceError(503, "engine_closed", "the inference engine is shut down")
        request = parse_chat_request(body)
        await self._ensure_model_known(request.model)
        self._bind_loop()
        key = (request.model, request.sampling)
        pending = _Pending(request=request, future=asyncio.get_running_loop().create_future(),
                           rows=1 if request.sampling.greedy else request.n)
        self._queues.setdefault(key, deque()).append(pending)
        if key not in self._flushers:
            self._flushers[key] = asyncio.create_task(self._flush(key))
        completion: _Completion = await self._wait(pending.future, is_disconnected)
        return self._response(request, completion)

    async def _wait(self, future: asyncio.Future, is_disconnected: Callable[[], Awaitable[bool]] | None):
        try:
            while is_disconnected is not None and not future.done():
                await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
                if not future.done() and await is_disconnected():
                    future.cancel()  # _take_batch skips it; _AbandonedRows stops its rows
                    self.stats["abandoned_requests"] += 1
                    raise InferenceError(499, "client_disconnected", "the client disconnected; generation stopped")
            return await future
        except asyncio.CancelledError:
            if not future.done():
                future.cancel()
                self.stats["abandoned_requests"] += 1
            raise

    def queued(self) -> int:
        """Requests waiting for a batch whose caller still waits."""
        return sum(1 for queue in list(self._queues.values()) for p in list(queue) if not p.future.done())

    def loaded_models(self) -> list[str]:
        """Ids of the models in memory, least recently used first."""
        with self._models_lock:
            return list(self._models)

    def close(self) -> None:
        """Drop every loaded model and refuse further requests."""
        self._closed = True
        self._idle_stop.set()
        for task in list(self._flushers.values()):
            task.cancel()
        with self._models_lock:
            self._models.clear()
        self._release_memory()

    # -- batching -----------------------------------------------------------------------------------

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first call, or a new event loop (tests using asyncio.run repeatedly)
            self._loop = loop
            self._generate_lock = asyncio.Lock()
            self._queues, self._flushers = {}, {}

    def _take_batch(self, key: tuple[str, SamplingParams]) -> list[_Pending]:
        queue = self._queues.get(key)
        batch: list[_Pending] = []
        rows = 0
        while queue:
            head = queue[0]
            if head.future.done():  # the caller went away
                queue.popleft()
                continue
            if batch and rows + head.rows > self.max_batch_size:
                break
            batch.append(queue.popleft())
            rows += head.rows
        return batch

    async def _flush(self, key: tuple[str, SamplingParams]) -> None:
        try:
            if self.batch_window_s:
                try:
                    await asyncio.sleep(self.batch_window_s)
                except asyncio.CancelledError:
                    self._fail_all([], key)
                    raise
            assert self._generate_lock is not None
            while self._queues.get(key):
                async with self._generate_lock:
                    batch = self._take_batch(key)
                    if not batch:
                        continue
                    try:
                        results = await asyncio.to_thread(self._run_batch, key[0], key[1], batch)
                    except asyncio.CancelledError:
                        self._fail_all(batch, key)
                        raise
                    except Exception as exc:  # the whole batch failed (e.g. the model could not load)
                        error = exc if isinstance(exc, InferenceError) else InferenceError(
                            500, "inference_failed", f"generation failed: {type(exc).__name__}: {exc}")
                        if not isinstance(exc, InferenceError):
                            logger.exception("generation failed for %s", key[0])
                        results = [error] * len(batch)
                    for pending, result in zip(batch, results):
                        if pending.future.done():
                            continue
                        if isinstance(result, BaseException):
                            pending.future.set_exception(result)
                        else:
                            pending.future.set_result(result)
        finally:
            # no await between the emptiness check above and this line: a request enqueued later finds no
            # flusher for its key and starts one
            if self._flushers.get(key) is asyncio.current_task():
                del self._flushers[key]
            if not self._queues.get(key):
                self._queues.pop(key, None)

    def _fail_all(self, batch: list[_Pending], key: tuple[str, SamplingParams]) -> None:
        error = InferenceError(503, "engine_closed", "the inference engine shut down before answering")
        for pending in list(batch) + list(self._queues.get(key) or ()):
            if not pending.future.done():
                pending.future.set_exception(error)

    # -- models -------------------------------------------------------------------------------------

    def resolve(self, model_id: str) -> ResolvedModel:
        """A served adapter's name (:attr:`adapters`) or any model id :func:`~.modelref.resolve_model` knows.
        Raises ModelRefError."""
        adapter = self.adapters.get(model_id) if self.adapters is not None else None
        return adapter.resolved() if adapter is not None else resolve_model(model_id, self.models_dir)

    def forget(self, model_id: str) -> bool:
        """Drop ``model_id`` from the model cache (an adapter was unloaded); True when it was loaded."""
        with self._models_lock:
            dropped = self._models.pop(model_id, None) is not None
        if dropped:
            self._release_memory()
        return dropped

    async def _ensure_model_known(self, model_id: str) -> None:
        with self._models_lock:
            if model_id in self._models:
                return
        if self.adapters is not None and self.adapters.get(model_id) is not None:
            return  # checked when it was loaded (backend/adapters.py)
        try:
            await asyncio.to_thread(check_loadable, model_id, self.models_dir, timeout_s=3.0)
        except ModelRefError as exc:
            raise InferenceError(404, "model_not_found", exc.message, "model") from exc

    def _get_model(self, model_id: str) -> _LoadedModel:
        with self._models_lock:
            loaded = self._models.get(model_id)
            if loaded is not None:
                self._models.move_to_end(model_id)
                loaded.last_used = time.monotonic()
                return loaded
        try:
            resolved = self.resolve(model_id)
        except ModelRefError as exc:
            raise InferenceError(404, "model_not_found", exc.message, "model") from exc
        device, dtype = pick_device_and_dtype(None)
        if self._device_override:
            device = self._device_override
            if device == "cpu":
                import torch

                dtype = torch.float32
        self._make_room(model_id, resolved, dtype)
        started = time.perf_counter()
        try:
            tokenizer = load_tokenizer(resolved)
            model = load_model_for_inference(resolved, device, dtype, models_dir=self.models_dir)
        except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
            # the files are not a loadable model (no weights, no tokenizer files, a bad config): retrying cannot help
            raise InferenceError(422, "model_not_loadable", f"cannot load model {model_id!r}: "
                                 f"{type(exc).__name__}: {exc}", "model") from exc
        except Exception as exc:  # out of memory, a device error: may pass
            raise InferenceError(500, "model_load_failed", f"cannot load model {model_id!r}: "
                                 f"{type(exc).__name__}: {exc}", "model") from exc
        tokenizer.padding_side = "left"
        eos_ids = end_token_ids(tokenizer, getattr(model.generation_config, "eos_token_id", None))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
        context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        loaded = _LoadedModel(resolved=resolved, model=model, tokenizer=tokenizer, device=device, eos_ids=eos_ids,
                              pad_id=pad_id, context_size=context, bytes=loaded_bytes(model),
                              last_used=time.monotonic())
        self._start_idle_unloader()
        with self._models_lock:
            self._models[model_id] = loaded
            self.stats["model_loads"] += 1
            while len(self._models) > self.max_loaded_models:
                evicted, _ = self._models.popitem(last=False)
                logger.info("evicted model %s from the inference cache", evicted)
        gc.collect()
        logger.info("serving %s (%s) after %.2f s", model_id, resolved.kind, time.perf_counter() - started)
        return loaded

    def _make_room(self, model_id: str, resolved: ResolvedModel, dtype: Any) -> None:
        """Evict least-recently-used models until ``model_id`` fits (count and byte budget) — before loading it;
        refuse (503 ``insufficient_memory``) a model larger than the budget or the machine's available memory."""
        need = estimate_model_bytes(resolved, self.models_dir, dtype)
        evicted = []
        with self._models_lock:
            while self._models and (
                    len(self._models) >= self.max_loaded_models
                    or (self.memory_budget_bytes and sum(m.bytes for m in self._models.values()) + need
                        > self.memory_budget_bytes)):
                evicted.append(self._models.popitem(last=False)[0])
        if evicted:
            logger.info("evicted %s from the inference cache to load %s", ", ".join(evicted), model_id)
            self._release_memory()
        mb = need / 2**20
        if self.memory_budget_bytes and need > self.memory_budget_bytes:
            raise InferenceError(503, "insufficient_memory", f"model {model_id!r} needs about {mb:.0f} MB, more than "
                                 f"the inference memory budget ({self.memory_budget_bytes / 2**20:.0f} MB); raise "
                                 "LEARNING_MCP_INFERENCE_MEMORY_MB or serve a smaller model", "model")
        available = available_bytes()
        if available is not None and need > 0.9 * available:
            raise InferenceError(503, "insufficient_memory", f"model {model_id!r} needs about {mb:.0f} MB but this "
                                 f"machine has {available / 2**20:.0f} MB available (a training job may be using "
                                 "it); retry when the job has finished", "model")

    @staticmethod
    def _release_memory() -> None:
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover
            pass

    def _start_idle_unloader(self) -> None:
        if not self.idle_unload_s or self._idle_thread is not None:
            return
        self._idle_thread = threading.Thread(target=self._unload_idle_loop, name="inference-idle-unload", daemon=True)
        self._idle_thread.start()

    def _unload_idle_loop(self) -> None:
        interval = max(0.05, min(30.0, self.idle_unload_s / 4))
        while not self._idle_stop.wait(interval):
            self.unload_idle()

    def unload_idle(self) -> list[str]:
        """Unload models unused for ``idle_unload_s`` seconds; returns their ids (runs every
        ``idle_unload_s / 4`` s, at most 30 s, in a daemon thread once a model is loaded)."""
        if not self.idle_unload_s:
            return []
        cutoff = time.monotonic() - self.idle_unload_s
        with self._models_lock:
            idle = [model_id for model_id, m in self._models.items() if m.last_used < cutoff]
            for model_id in idle:
                del self._models[model_id]
        if idle:
            logger.info("unloaded idle model(s) %s", ", ".join(idle))
            self._release_memory()
        return idle

    # -- generation (worker thread) -------------------------------------------------------------------

    def _run_batch(self, model_id: str, sampling: SamplingParams,
                   batch: list[_Pending]) -> list[_Completion | InferenceError]:
        import torch

        loaded = self._get_model(model_id)
        results: list[_Completion | InferenceError | None] = [None] * len(batch)
        prompts: list[list[int] | None] = []
        for index, pending in enumerate(batch):
            try:
                check_prompt_size(pending.request, loaded.context_size, model_id)  # before tokenising
                ids = render_prompt_ids(loaded.tokenizer, pending.request)
                if loaded.context_size and len(ids) >= loaded.context_size:
                    raise InferenceError(400, "context_length_exceeded", f"the prompt is {len(ids)} tokens; "
                                         f"model {model_id!r} has a context of {loaded.context_size} tokens",
                                         "messages")
                prompts.append(ids)
            except InferenceError as exc:
                results[index] = exc
                prompts.append(None)
        live = [i for i, ids in enumerate(prompts) if ids is not None]
        if not live:
            return results  # type: ignore[return-value]

        # rows: (request index, prompt ids); greedy requests contribute one row
        rows: list[tuple[int, list[int]]] = []
        for i in live:
            rows.extend((i, prompts[i]) for _ in range(batch[i].rows))  # type: ignore[misc]
        if len([i for i in live]) > 1:
            self.stats["batched_requests"] += len(live)
        self.stats["requests"] += len(live)

        texts: dict[int, list[tuple[str, str, int]]] = {i: [] for i in live}
        cuda_devices = [torch.cuda.current_device()] if loaded.device.startswith("cuda") else []
        rng_context = torch.random.fork_rng(devices=cuda_devices, enabled=sampling.seed is not None)
        with rng_context, torch.inference_mode(), cpu_threads_for(loaded.model, loaded.device):
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed % (2**63))
            for start in range(0, len(rows), self.max_batch_size):
                chunk = rows[start:start + self.max_batch_size]
                owners = [batch[i].future for i, _ in chunk]
                if all(owner.done() for owner in owners):
                    continue  # everyone who asked went away
                for (i, _), decoded in zip(chunk, self._generate(loaded, sampling, [ids for _, ids in chunk],
                                                                 owners=owners)):
                    texts[i].append(decoded)

        for i in live:
            request = batch[i].request
            samples = texts[i] * request.n if sampling.greedy else texts[i]
            out_texts, reasons, counts = [], [], []
            for text, reason, count in samples[: request.n]:  # stop strings were applied by _generate
                out_texts.append(text)
                reasons.append(reason)
                counts.append(count)
            results[i] = _Completion(texts=out_texts, finish_reasons=reasons, completion_tokens=counts,
                                     prompt_tokens=len(prompts[i]))  # type: ignore[arg-type]
            self.stats["prompt_tokens"] += len(prompts[i])  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    @staticmethod
    def _generation_config(loaded: _LoadedModel, sampling: SamplingParams, max_new_tokens: int):
        """A complete GenerationConfig, so the checkpoint's defaults (e.g. a Hub model's top_k=20,
        temperature=0.7) never leak into an OpenAI request that did not ask for them."""
        from transformers import GenerationConfig

        if sampling.greedy:
            # neutral values (not None): None would be filled from the checkpoint and then warned about
            sampling_kwargs: dict[str, Any] = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}
        else:
            sampling_kwargs = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
                               "top_k": sampling.top_k}  # top_k 0 disables top-k filtering
        return GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=loaded.pad_id,
                                eos_token_id=loaded.eos_ids, **sampling_kwargs)

    def _generate(self, loaded: _LoadedModel, sampling: SamplingParams,
                  prompts: list[list[int]], owners: list[asyncio.Future] | None = None) -> list[tuple[str, str, int]]:
        """One ``generate`` call over left-padded ``prompts``: ``[(text, finish_reason, n_tokens)]``.
        ``owners``: each row's waiting future; a row whose future is done (caller gone) stops decoding."""
        import torch

        tokenizer = loaded.tokenizer
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), loaded.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        max_new = sampling.max_tokens
        if loaded.context_size:
            max_new = max(1, min(max_new, loaded.context_size - width))
        from transformers import StoppingCriteriaList

        criteria = StoppingCriteriaList(_stop_criteria(tokenizer, sampling.stop, width) if sampling.stop else [])
        if owners is not None:
            criteria.append(_AbandonedRows(owners))
        extra = {"stopping_criteria": criteria} if criteria else {}
        output = loaded.model.generate(input_ids=input_ids.to(loaded.device),
                                       attention_mask=attention.to(loaded.device),
                                       generation_config=self._generation_config(loaded, sampling, max_new), **extra)
        self.stats["generate_calls"] += 1
        self.stats["max_batch_rows"] = max(self.stats["max_batch_rows"], len(prompts))
        self.stats["decode_steps"] += int(output.shape[1]) - width
        new_tokens = output[:, width:].tolist()
        decoded: list[tuple[str, str, int]] = []
        eos = set(loaded.eos_ids)
        for tokens in new_tokens:
            end = next((k for k, token in enumerate(tokens) if token in eos), None)
            reason = "stop" if end is not None else "length"
            kept = tokens[:end] if end is not None else tokens
            kept = [t for t in kept if t != loaded.pad_id]
            count = (end + 1) if end is not None else len(kept)
            text = tokenizer.decode(kept, skip_special_tokens=True)
            cut_text, stopped = apply_stop_strings(text, list(sampling.stop))
            if stopped:
                text, reason = cut_text, "stop"
                count = _tokens_to_stop(tokenizer, kept, sampling.stop)
            self.stats["generated_tokens"] += count
            decoded.append((text, reason, count))
        return decoded

    # -- response -----------------------------------------------------------------------------------

    @staticmethod
    def _response(request: ChatRequest, completion: _Completion) -> dict:
        return completion_response(request.model, completion.texts, completion.finish_reasons,
                                   completion.completion_tokens, completion.prompt_tokens)
