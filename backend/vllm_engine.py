"""vLLM as the embedded backend's sampling engine, where it is installed and a CUDA GPU is present.

Selection (:func:`select_engine`, ``Settings.inference_engine`` / ``LEARNING_MCP_INFERENCE_ENGINE``): ``auto`` (the
default) serves with vLLM only when ``import vllm`` works and ``torch.cuda.is_available()``, else with the
transformers engine (:mod:`.inference`); ``vllm`` refuses to start the backend without both
(:class:`EngineUnavailableError`, ``[vllm_unavailable]``); ``transformers`` never uses vLLM. ``GET /api/health``
(to a caller with the key, or on loopback) says which engine serves and why.

:class:`VLLMEngine` has the transformers engine's public surface (``chat_completion(body)`` → OpenAI
``chat.completion`` dict, ``stats``, ``queued``, ``loaded_models``, ``resolve``, ``forget``, ``close``) and reads
requests with the same :func:`~.inference.parse_chat_request`, so both accept and refuse the same bodies. It is
built on vLLM's async engine (``vllm.AsyncEngineArgs`` + ``vllm.AsyncLLMEngine.from_engine_args``, the V1
``AsyncLLM`` in vLLM ≥ 0.8; ``generate(prompt, sampling_params, request_id, lora_request=)`` yields
``RequestOutput``), which batches concurrent requests itself (continuous batching):

* models: a base model by path or Hub id and a full fine-tune by its saved folder are each an engine of their
  own; a LoRA ``ft:`` model runs on its base's engine (``enable_lora=True``) through
  ``vllm.lora.request.LoRARequest(name, int_id, adapter_path)``. One engine at a time (each takes
  ``gpu_memory_utilization`` of the GPU, ``LEARNING_MCP_VLLM_GPU_MEMORY_UTILIZATION``, default 0.5, leaving the
  rest to training jobs): a request for another base shuts the current one down first;
* what vLLM cannot serve as one base plus one adapter (a LoRA trained on another LoRA model) or a request with
  image parts goes to the transformers engine (:func:`vllm_target` returns None), never refused;
* the prompt is rendered by the model's own tokenizer exactly as the transformers engine renders it
  (:func:`~.inference.render_prompt_ids`, with ``chat_template_kwargs``) and handed to vLLM as token ids;
* sampling (:func:`sampling_kwargs`): ``n``, ``temperature`` (0 = greedy), ``top_p``, ``top_k`` (0 = off is vLLM's
  ``-1``), ``max_tokens``, ``stop`` (vLLM stops natively and leaves the stop string out), a per-request ``seed``,
  the same end tokens as the transformers engine (``stop_token_ids``);
* the answer (:func:`completion_from_output`): ``finish_reason`` ``"length"`` when vLLM says so, else ``"stop"``;
  ``usage`` from the prompt's and each completion's token ids.

The request mapping, the response mapping and the selection are pure functions, tested without vLLM. The class
itself needs a GPU and vLLM: it has NOT been executed in this project's tests (no GPU was available); every vLLM
name used here is from vLLM's documented API (``docs/features/lora.md``, ``vllm/v1/engine/async_llm.py``,
``vllm/sampling_params.py``). All vLLM and torch imports are inside functions.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal

from learning_mcp.tools.errors import LearningMCPError

from .inference import (
    ChatRequest,
    InferenceError,
    check_prompt_size,
    completion_response,
    end_token_ids,
    parse_chat_request,
    render_prompt_ids,
)
from .modelref import ModelRefError, ResolvedModel, check_loadable, load_tokenizer, resolve_model

logger = logging.getLogger(__name__)

EngineName = Literal["transformers", "vllm"]
ENGINE_SETTINGS = ("auto", "transformers", "vllm")
VLLM_INSTALL_HINT = ('install the extra on a CUDA machine (pip install -e ".[train,vllm]") or set '
                     "LEARNING_MCP_INFERENCE_ENGINE=auto (vLLM where it works, else transformers) or transformers")


class EngineUnavailableError(LearningMCPError):
    """``LEARNING_MCP_INFERENCE_ENGINE=vllm`` where vLLM or a CUDA GPU is missing: the backend does not start."""


# --------------------------------------------------------------------------------------------------
# selection (pure, plus one probe)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineChoice:
    """Which engine serves, and why (shown by ``/api/health``)."""

    setting: str
    engine: EngineName
    reason: str


def select_engine(setting: str, *, vllm_importable: bool, cuda_available: bool,
                  import_error: str | None = None) -> EngineChoice:
    """The engine for ``setting`` (``auto`` | ``transformers`` | ``vllm``) on a machine where vLLM imports or not
    and CUDA is available or not. ``auto``: vLLM only with both. Raises :class:`EngineUnavailableError`
    (``vllm_unavailable``) for ``vllm`` without both, and ``ValueError`` for an unknown setting."""
    if setting not in ENGINE_SETTINGS:
        raise ValueError(f"inference engine must be one of {', '.join(ENGINE_SETTINGS)}, got {setting!r}")
    missing = [what for what, ok in ((f"vllm is not importable ({import_error or 'not installed'})", vllm_importable),
                                     ("no CUDA GPU (torch.cuda.is_available() is False)", cuda_available)) if not ok]
    if setting == "transformers":
        return EngineChoice(setting, "transformers", "LEARNING_MCP_INFERENCE_ENGINE=transformers")
    if not missing:
        return EngineChoice(setting, "vllm", "vllm is installed and a CUDA GPU is present")
    if setting == "vllm":
        raise EngineUnavailableError("vllm_unavailable", f"LEARNING_MCP_INFERENCE_ENGINE=vllm but {'; '.join(missing)}"
                                     f"; {VLLM_INSTALL_HINT}", param="inference_engine")
    return EngineChoice(setting, "transformers", "auto: " + "; ".join(missing))


def probe_vllm() -> tuple[bool, bool, str | None]:
    """``(vllm importable, CUDA available, why vllm is not importable)``. Imports vllm only when its package is
    installed and a GPU is present (importing it is slow and pointless otherwise); imports torch."""
    if importlib.util.find_spec("vllm") is None:
        return False, _cuda_available(), "not installed"
    cuda = _cuda_available()
    if not cuda:
        return True, False, None  # installed; not imported without a GPU to run it on
    try:
        importlib.import_module("vllm")
    except Exception as exc:  # a broken install: CUDA/torch mismatch, missing kernels
        return False, cuda, f"{type(exc).__name__}: {exc}"
    return True, cuda, None


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


# --------------------------------------------------------------------------------------------------
# request and response mapping (pure)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VLLMTarget:
    """What vLLM loads for a model id: ``model`` (a folder or Hub id, one engine per distinct value) and, for a
    LoRA model, the adapter folder applied to it per request."""

    model: str
    lora_name: str | None = None
    lora_path: str | None = None


def vllm_target(resolved: ResolvedModel, resolve: Callable[[str], ResolvedModel]) -> VLLMTarget | None:
    """How vLLM serves ``resolved`` (``resolve`` maps a base id to its :class:`ResolvedModel`): a base or full
    fine-tune is its own engine; a LoRA adapter runs on its base's engine. None when vLLM cannot: an adapter whose
    base is itself an adapter (vLLM applies one adapter to a base model; the transformers engine merges the chain).
    Raises ModelRefError when the base does not resolve."""
    if resolved.kind in ("base", "full"):
        return VLLMTarget(model=resolved.path)
    base = resolve(resolved.base_model or "")
    if base.kind == "lora":
        return None
    return VLLMTarget(model=base.path, lora_name=resolved.id, lora_path=resolved.path)


def has_non_text_parts(request: ChatRequest) -> bool:
    """True when a message carries a content part other than text (an image): the vLLM engine renders text
    prompts only, so such requests go to the transformers engine."""
    for message in request.messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [content] if isinstance(content, dict) else []
        if any(isinstance(part, dict) and part.get("type", "text") != "text" for part in parts):
            return True
    return False


def sampling_kwargs(request: ChatRequest, stop_token_ids: list[int] | None = None) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for a parsed request (``vllm/sampling_params.py``): ``n``,
    ``temperature`` (0 = greedy), ``top_p``, ``top_k`` (our 0 = off is ``-1``, which vLLM ≥ 0.8 accepts as off),
    ``max_tokens``, ``stop`` (ended natively; ``include_stop_str_in_output`` stays False, so the returned text ends
    before the stop string, as the transformers engine returns it), ``stop_token_ids`` (the end tokens the
    transformers engine stops at), ``seed`` (per request; reduced to int64), ``skip_special_tokens``."""
    sampling = request.sampling
    kwargs: dict[str, Any] = {
        "n": request.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k > 0 else -1,
        "max_tokens": sampling.max_tokens,
        "stop": list(sampling.stop) or None,
        "seed": None if sampling.seed is None else sampling.seed % (2**63),
        "skip_special_tokens": True,
    }
    if stop_token_ids:
        kwargs["stop_token_ids"] = list(stop_token_ids)
    return kwargs


def completion_from_output(request: ChatRequest, output: Any) -> dict:
    """The OpenAI ``chat.completion`` dict for a finished ``vllm.RequestOutput`` (its documented fields:
    ``prompt_token_ids`` and ``outputs``, each a ``CompletionOutput`` with ``index``, ``text``, ``token_ids``,
    ``finish_reason`` ``"stop"`` | ``"length"`` | ``"abort"``). ``finish_reason`` is ``"length"`` when vLLM says so,
    else ``"stop"``; ``usage.completion_tokens`` counts each completion's token ids (vLLM counts the token that
    completed a stop string, as the transformers engine does). Raises InferenceError 503 ``generation_aborted``
    when vLLM aborted a completion."""
    completions = sorted(output.outputs, key=lambda c: getattr(c, "index", 0))
    if any(c.finish_reason == "abort" for c in completions):
        raise InferenceError(503, "generation_aborted", "vLLM aborted the generation (engine shut down or request "
                             "cancelled); retry")
    return completion_response(request.model, [c.text for c in completions],
                               ["length" if c.finish_reason == "length" else "stop" for c in completions],
                               [len(c.token_ids) for c in completions], len(output.prompt_token_ids or []))


# --------------------------------------------------------------------------------------------------
# the engine (needs vLLM and a GPU; unexecuted here)
# --------------------------------------------------------------------------------------------------


@dataclass
class _Served:
    model: str
    engine: Any  # vllm.AsyncLLMEngine
    max_model_len: int | None


class VLLMEngine:
    """Chat completions from vLLM for base, full and LoRA models; see the module docstring.

    ``fallback``: a zero-argument callable that returns the transformers engine (created on first use), for what
    vLLM cannot serve. ``adapters``: the backend's :class:`~.adapters.AdapterRegistry`."""

    def __init__(self, models_dir: Path, *, fallback: Callable[[], Any], adapters: Any = None,
                 gpu_memory_utilization: float = 0.5, max_lora_rank: int = 64) -> None:
        self.models_dir = Path(models_dir)
        self.adapters = adapters
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_lora_rank = max_lora_rank
        self._fallback_factory = fallback
        self._fallback: Any = None
        self._served: _Served | None = None
        self._tokenizers: dict[str, tuple[Any, list[int]]] = {}
        self._lora_ids: dict[str, int] = {}
        self._start_lock: asyncio.Lock | None = None
        self._lock = threading.Lock()
        self._active = 0
        self._closed = False
        self.stats: dict[str, int] = {"requests": 0, "generated_tokens": 0, "prompt_tokens": 0, "model_loads": 0,
                                      "fallback_requests": 0}

    # -- the transformers engine's surface ---------------------------------------------------------------

    async def chat_completion(self, body: dict, *,
                              is_disconnected: Callable[[], Awaitable[bool]] | None = None) -> dict:
        """Answer one chat-completions body (the transformers engine's contract; errors are InferenceError)."""
        if self._closed:
            raise InferenceError(503, "engine_closed", "the inference engine is shut down")
        request = parse_chat_request(body)
        resolved, target = await asyncio.to_thread(self._target, request.model)
        if target is None or has_non_text_parts(request):
            self.stats["fallback_requests"] += 1
            return await self._transformers().chat_completion(body, is_disconnected=is_disconnected)
        served = await self._engine_for(target.model)
        tokenizer, eos_ids = await asyncio.to_thread(self._tokenizer, resolved)
        check_prompt_size(request, served.max_model_len, request.model)
        prompt_ids = await asyncio.to_thread(render_prompt_ids, tokenizer, request)
        if served.max_model_len and len(prompt_ids) >= served.max_model_len:
            raise InferenceError(400, "context_length_exceeded", f"the prompt is {len(prompt_ids)} tokens; model "
                                 f"{request.model!r} has a context of {served.max_model_len} tokens", "messages")
        output = await self._generate(served, request, prompt_ids, eos_ids, target)
        self.stats["requests"] += 1
        self.stats["prompt_tokens"] += len(prompt_ids)
        self.stats["generated_tokens"] += sum(len(c.token_ids) for c in output.outputs)
        return completion_from_output(request, output)

    def queued(self) -> int:
        """Requests in generation (vLLM queues and batches them itself)."""
        return self._active

    def loaded_models(self) -> list[str]:
        """The model vLLM has loaded (one engine at a time), then the transformers engine's."""
        own = [self._served.model] if self._served is not None else []
        return own + (self._fallback.loaded_models() if self._fallback is not None else [])

    def resolve(self, model_id: str) -> ResolvedModel:
        adapter = self.adapters.get(model_id) if self.adapters is not None else None
        return adapter.resolved() if adapter is not None else resolve_model(model_id, self.models_dir)

    def forget(self, model_id: str) -> bool:
        """An adapter was unloaded: later requests cannot name it; vLLM evicts its weights itself (LRU)."""
        self._tokenizers.pop(model_id, None)
        return self._fallback.forget(model_id) if self._fallback is not None else False

    def close(self) -> None:
        self._closed = True
        self._shutdown_served()
        if self._fallback is not None:
            self._fallback.close()

    # -- internals ------------------------------------------------------------------------------------------

    def _transformers(self) -> Any:
        with self._lock:
            if self._fallback is None:
                self._fallback = self._fallback_factory()
            return self._fallback

    def _target(self, model_id: str) -> tuple[ResolvedModel, VLLMTarget | None]:
        try:
            resolved = self.resolve(model_id)
            if self.adapters is None or self.adapters.get(model_id) is None:
                check_loadable(model_id, self.models_dir, timeout_s=3.0)
            return resolved, vllm_target(resolved, lambda base: resolve_model(base, self.models_dir))
        except ModelRefError as exc:
            raise InferenceError(404, "model_not_found", exc.message, "model") from exc

    def _tokenizer(self, resolved: ResolvedModel) -> tuple[Any, list[int]]:
        cached = self._tokenizers.get(resolved.id)
        if cached is None:
            tokenizer = load_tokenizer(resolved)
            generation_eos = None
            try:
                from transformers import GenerationConfig

                generation_eos = GenerationConfig.from_pretrained(resolved.tokenizer_path).eos_token_id
            except Exception:  # no generation_config.json: the tokenizer's end tokens only
                pass
            cached = self._tokenizers[resolved.id] = (tokenizer, end_token_ids(tokenizer, generation_eos))
        return cached

    async def _engine_for(self, model: str) -> _Served:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._served is not None and self._served.model == model:
                return self._served
            while self._active:  # requests on the current engine finish before it is replaced
                await asyncio.sleep(0.05)
            self._shutdown_served()
            self._served = await asyncio.to_thread(self._start, model)
            self.stats["model_loads"] += 1
            return self._served

    def _start(self, model: str) -> _Served:
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        started = time.perf_counter()
        args = AsyncEngineArgs(model=model, tokenizer=model, enable_lora=True, max_lora_rank=self.max_lora_rank,
                               gpu_memory_utilization=self.gpu_memory_utilization, seed=0)
        try:
            engine = AsyncLLMEngine.from_engine_args(args)
        except Exception as exc:
            raise InferenceError(500, "model_load_failed", f"vLLM cannot load {model!r}: {type(exc).__name__}: "
                                 f"{exc}", "model") from exc
        max_len = getattr(getattr(engine, "model_config", None), "max_model_len", None)
        logger.info("vLLM serving %s (gpu_memory_utilization %.2f) after %.1f s", model, self.gpu_memory_utilization,
                    time.perf_counter() - started)
        return _Served(model=model, engine=engine, max_model_len=max_len)

    def _shutdown_served(self) -> None:
        served, self._served = self._served, None
        if served is not None:
            try:
                served.engine.shutdown()
            except Exception as exc:  # pragma: no cover - best effort on a GPU machine
                logger.warning("vLLM engine for %s did not shut down cleanly: %s", served.model, exc)
            self._tokenizers.clear()

    async def _generate(self, served: _Served, request: ChatRequest, prompt_ids: list[int], eos_ids: list[int],
                        target: VLLMTarget) -> Any:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(**sampling_kwargs(request, eos_ids), output_kind=RequestOutputKind.FINAL_ONLY)
        lora = None
        if target.lora_path:
            lora_id = self._lora_ids.setdefault(target.lora_path, len(self._lora_ids) + 1)
            lora = LoRARequest(target.lora_name or target.lora_path, lora_id, target.lora_path)
        final = None
        self._active += 1
        try:
            async for output in served.engine.generate({"prompt_token_ids": prompt_ids}, params,
                                                       f"chatcmpl-{uuid.uuid4().hex}", lora_request=lora):
                final = output
        except ValueError as exc:  # vLLM's validation (prompt too long, bad parameter)
            raise InferenceError(400, "invalid_request", f"vLLM refused the request: {exc}") from exc
        finally:
            self._active -= 1
        if final is None:
            raise InferenceError(503, "generation_aborted", "vLLM returned no output; retry")
        return final
