"""Model ids → loadable weights, for the embedded backend's trainer and inference engine.

Three kinds of model id reach the backend:

* a **fine-tuned id** ``ft:<base model id>:<job_id>`` (also ``fft:``/``qft:``/``rl:``, which clients
  accept). The base id may itself contain ``:`` or ``/`` (a local path, a Hub id, another ft id), so
  the job id is the part after the *last* ``:``. Its weights live in ``<models_dir>/<job_id>/`` next to
  a manifest, ``learning_mcp_model.json``, whose ``kind`` says what the directory holds: ``"full"``
  (a complete ``save_pretrained`` checkpoint) or ``"lora"`` (a PEFT adapter plus tokenizer; the
  manifest's ``base_model`` names the model the adapter applies to, resolved recursively);
* a **local directory** written by ``save_pretrained`` (e.g. ``learning-mcp tiny-model``); a directory
  that carries a manifest is treated like the fine-tuned model it is;
* a **Hugging Face Hub id** (``org/name``), loaded through the local HF cache.

:func:`resolve_model` maps an id to a :class:`ResolvedModel` with file-system checks only.
:func:`check_loadable` is the cheap gate used at job-create time: it never downloads weights and never
hangs (the one network call is bounded by ``timeout_s`` and skipped under ``HF_HUB_OFFLINE``).
The loaders (:func:`load_tokenizer`, :func:`load_model_for_inference`) and
:func:`pick_device_and_dtype` are shared by the trainer and the inference engine. torch, transformers,
peft and huggingface_hub are imported lazily, inside functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from learning_mcp.tools.errors import LearningMCPError
from learning_mcp.tools.model_checks import image_text_to_text_model_types, model_config_json

logger = logging.getLogger(__name__)

MANIFEST_NAME = "learning_mcp_model.json"
FINE_TUNED_PREFIXES = ("ft:", "fft:", "qft:", "rl:")
LIST_MODELS_HINT = ("call list_jobs: a succeeded job's fine_tuned_model is a model id "
                    "(GET /api/learning/models lists them)")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_MAX_LORA_CHAIN = 8  # ft lora on ft lora on …: a cycle guard, not a practical limit

ModelKind = Literal["base", "full", "lora"]


class ModelRefError(LearningMCPError):
    """A model id that cannot be used; ``code``/``message``/``param`` feed the API's error object."""

    def __init__(self, code: str, message: str, param: str | None = "model") -> None:
        super().__init__(code, message, param=param)


class ModelNotFoundError(ModelRefError):
    """The id names nothing this backend has (unknown ft id, missing local directory)."""

    status = 404


class ModelNotLoadableError(ModelRefError):
    """The id is well formed but its weights cannot be loaded here (not cached, offline, no config.json)."""


@dataclass
class ResolvedModel:
    """Where a model id's weights and tokenizer come from.

    ``path`` is a local directory or a Hub id. For ``kind == "lora"`` it is the adapter directory and
    ``base_model`` is the id the adapter applies to (resolve it again to load the base).
    """

    id: str
    kind: ModelKind
    path: str
    base_model: str | None
    tokenizer_path: str


# --------------------------------------------------------------------------------------------------
# ids and manifests
# --------------------------------------------------------------------------------------------------


def is_fine_tuned_id(model_id: str) -> bool:
    return model_id.startswith(FINE_TUNED_PREFIXES) and model_id.count(":") >= 2


def parse_fine_tuned_id(model_id: str) -> tuple[str, str]:
    """``ft:<base>:<job_id>`` → ``(base, job_id)``; the job id is the part after the last ``:``."""
    if not is_fine_tuned_id(model_id):
        raise ValueError(f"not a fine-tuned model id: {model_id!r}")
    prefix, rest = model_id.split(":", 1)
    base, _, job_id = rest.rpartition(":")
    return base, job_id


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The manifest of a trained-model directory, or ``None`` when there is none (or it is unreadable)."""
    manifest_path = Path(model_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("unreadable model manifest %s: %s", manifest_path, exc)
        return None
    return manifest if isinstance(manifest, dict) else None


def write_manifest(model_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` atomically (tmp file + rename) into ``model_dir``."""
    model_dir = Path(model_dir)
    target = model_dir / MANIFEST_NAME
    tmp = model_dir / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, target)
    return target


def _looks_like_path(model_id: str) -> bool:
    return (
        model_id.startswith(("/", "./", "../", "~", "\\"))
        or os.sep in model_id and not _HUB_ID_RE.match(model_id)
        or bool(re.match(r"^[A-Za-z]:[\\/]", model_id))  # a Windows drive path
        or model_id.count("/") > 1
    )


_HF_CACHE_DIR_RE = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$")


def base_provenance(model_id: str, resolved: "ResolvedModel") -> dict[str, str | None]:
    """Where a training job's base model came from, for the manifest: ``base_model_path`` (the resolved
    directory, or None for a Hub id) and ``base_model_hub_id`` (the Hub id named, or read from a Hugging Face
    cache snapshot path ``…/models--org--name/snapshots/<rev>``). With both recorded, a backend whose HF cache
    lives elsewhere still finds the base (:func:`_findable_base`)."""
    path = resolved.path if Path(resolved.path).is_dir() else None
    hub_id = None
    if path is None and _HUB_ID_RE.match(model_id):
        hub_id = model_id
    elif path is not None:
        match = _HF_CACHE_DIR_RE.search(Path(path).as_posix())
        hub_id = f"{match.group(1)}/{match.group(2)}" if match else None
    if resolved.kind != "base":  # a fine-tuned base: its own id is what later backends resolve
        return {"base_model_path": path, "base_model_hub_id": None}
    return {"base_model_path": path, "base_model_hub_id": hub_id}


def _findable_base(manifest: dict[str, Any]) -> Any:
    """The manifest's ``base_model``, unless it is a local directory that is gone here and the manifest records
    the base's Hub id (then that id, which this machine's HF cache or the Hub can serve)."""
    base_model = manifest.get("base_model")
    hub_id = manifest.get("base_model_hub_id")
    if isinstance(base_model, str) and isinstance(hub_id, str) and hub_id and _looks_like_path(base_model) \
            and not Path(base_model).expanduser().is_dir():
        return hub_id
    return base_model


def _resolve_manifest_dir(model_id: str, model_dir: Path, manifest: dict[str, Any]) -> ResolvedModel:
    kind = manifest.get("kind")
    if kind not in ("full", "lora"):
        raise ModelNotLoadableError(
            "model_not_loadable",
            f"model {model_id!r}: manifest {model_dir / MANIFEST_NAME} has kind {kind!r}, expected 'full' or "
            "'lora'; the directory is damaged, retrain the model",
        )
    if kind == "full":
        return ResolvedModel(id=model_id, kind="full", path=str(model_dir), base_model=manifest.get("base_model"),
                             tokenizer_path=str(model_dir))
    base_model = _findable_base(manifest)
    if not isinstance(base_model, str) or not base_model:
        raise ModelNotLoadableError(
            "model_not_loadable",
            f"model {model_id!r} is a LoRA adapter but its manifest names no base_model; retrain the model",
        )
    has_tokenizer = any((model_dir / name).exists() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer_path = str(model_dir) if has_tokenizer else base_model
    return ResolvedModel(id=model_id, kind="lora", path=str(model_dir), base_model=base_model,
                         tokenizer_path=tokenizer_path)


def resolve_model(model_id: str, models_dir: Path) -> ResolvedModel:
    """Map a model id to where its weights live. File-system checks only; no network, no torch.

    Raises :class:`ModelNotFoundError` for unknown fine-tuned ids and local paths that do not exist.
    A Hub id always resolves (whether it can be *loaded* is :func:`check_loadable`'s question).
    """
    if not isinstance(model_id, str) or not model_id.strip():
        raise ModelNotFoundError("model_not_found", "model must be a non-empty string (a base model id, a local "
                                 f"path or a fine-tuned 'ft:' id); {LIST_MODELS_HINT}")
    model_id = model_id.strip()
    models_dir = Path(models_dir)

    if is_fine_tuned_id(model_id):
        _base, job_id = parse_fine_tuned_id(model_id)
        model_dir = models_dir / job_id
        manifest = read_manifest(model_dir) if _JOB_ID_RE.match(job_id) else None
        if manifest is None:
            raise ModelNotFoundError(
                "model_not_found", f"no fine-tuned model {model_id!r} on this backend; {LIST_MODELS_HINT}"
            )
        if manifest.get("id") not in (None, model_id):
            logger.debug("model id %r resolved via job %s whose manifest says %r", model_id, job_id,
                         manifest.get("id"))
        return _resolve_manifest_dir(model_id, model_dir.resolve(), manifest)

    local = Path(model_id).expanduser()
    if local.is_dir():
        local = local.resolve()
        manifest = read_manifest(local)
        if manifest is not None:
            return _resolve_manifest_dir(model_id, local, manifest)
        return ResolvedModel(id=model_id, kind="base", path=str(local), base_model=None, tokenizer_path=str(local))
    if local.exists():
        raise ModelNotFoundError("model_not_found", f"model path {model_id!r} is a file, not a model directory; pass "
                                 "the directory that holds config.json")
    if _looks_like_path(model_id):
        raise ModelNotFoundError(
            "model_not_found",
            f"local model directory {model_id!r} does not exist (looked at {local.resolve()}); pass a directory "
            "written by save_pretrained, e.g. one made by `learning-mcp tiny-model DIR`",
        )
    if not _HUB_ID_RE.match(model_id):
        raise ModelNotFoundError(
            "model_not_found",
            f"model {model_id!r} is neither an existing local directory, a Hugging Face Hub id (org/name) nor a "
            f"fine-tuned 'ft:' id; for fine-tuned models {LIST_MODELS_HINT}",
        )
    return ResolvedModel(id=model_id, kind="base", path=model_id, base_model=None, tokenizer_path=model_id)


def check_under_roots(model_id: Any, roots: list[Path]) -> None:
    """For a caller who may not probe the host's file system (:func:`learning_mcp.backend.limits.caller_trusted`):
    raise :class:`ModelNotLoadableError` when ``model_id`` names a local path outside ``roots`` (the data dir
    and ``Settings.model_roots``). The message is the same whether or not the path exists, so the answer says
    nothing about the host. Fine-tuned ``ft:`` ids and Hub ids (org/name) pass."""
    if not isinstance(model_id, str) or not model_id.strip() or is_fine_tuned_id(model_id.strip()):
        return
    model_id = model_id.strip()
    if not _looks_like_path(model_id) and _HUB_ID_RE.match(model_id):
        return
    try:
        target = Path(model_id).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        target = None
    for root in roots:
        try:
            if target is not None and target.is_relative_to(Path(root).expanduser().resolve()):
                return
        except (OSError, RuntimeError, ValueError):
            continue
    raise ModelNotLoadableError(
        "model_not_loadable",
        f"model {model_id!r}: local model paths are accepted only under this backend's data directory or its "
        "configured model roots (LEARNING_MCP_MODEL_ROOTS) unless the request carries the backend key; pass a Hub "
        "id (org/name) or a fine-tuned 'ft:' id (list_jobs shows each succeeded job's fine_tuned_model)", "model")


# --------------------------------------------------------------------------------------------------
# the job-create gate
# --------------------------------------------------------------------------------------------------


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set *now* (huggingface_hub only reads it at import time); when it is unset, one
    quick connection probe per process (:func:`detect_offline_once`) decides, so a machine without network
    never pays the Hub client's retries (53 s for one LoRA load before)."""
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        if bool(constants.HF_HUB_OFFLINE) and value not in ("0", "false", "no", "off"):
            return True
    except Exception:  # pragma: no cover - huggingface_hub missing
        return False
    if value in ("0", "false", "no", "off"):
        return False  # explicitly online: never probe
    return detect_offline_once()


_offline_probe: dict[str, bool] = {}
_offline_lock = threading.Lock()
OFFLINE_PROBE_TIMEOUT_S = 2.0


def detect_offline_once(timeout_s: float = OFFLINE_PROBE_TIMEOUT_S) -> bool:
    """True when the Hub endpoint (``HF_ENDPOINT``, default huggingface.co:443) takes no TCP connection within
    ``timeout_s``. Probed once per process; when offline, ``HF_HUB_OFFLINE=1`` is set for the process (env and
    ``huggingface_hub.constants``) with one log line, so every later Hub call is local-only at once."""
    with _offline_lock:
        if "offline" in _offline_probe:
            return _offline_probe["offline"]
        from urllib.parse import urlsplit

        endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        host = endpoint.hostname or "huggingface.co"
        port = endpoint.port or (443 if endpoint.scheme != "http" else 80)
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            offline = False
        except OSError as exc:
            offline = True
            logger.warning("the Hugging Face Hub (%s:%s) is unreachable (%s); running offline (HF_HUB_OFFLINE=1) "
                           "for this process", host, port, type(exc).__name__)
            os.environ["HF_HUB_OFFLINE"] = "1"
            try:
                from huggingface_hub import constants

                constants.HF_HUB_OFFLINE = True
            except Exception:  # pragma: no cover
                pass
        _offline_probe["offline"] = offline
        return offline


def _hub_config_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception as exc:  # invalid repo id and friends
        logger.debug("cache lookup for %s failed: %s", repo_id, exc)
        return False
    return isinstance(cached, str) and os.path.isfile(cached)


def _probe_hub(repo_id: str, timeout_s: float) -> str | None:
    """``None`` when the Hub serves ``repo_id``'s config.json, else why not. Bounded by ``timeout_s``."""
    outcome: dict[str, str | None] = {}

    def probe() -> None:
        try:
            from huggingface_hub import get_hf_file_metadata, hf_hub_url

            get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=timeout_s)
            outcome["error"] = None
        except Exception as exc:  # network errors, 401/404, gated repos
            name = type(exc).__name__
            if name in ("RepositoryNotFoundError", "EntryNotFoundError", "RemoteEntryNotFoundError"):
                outcome["error"] = f"the Hub does not serve it ({name}: check the spelling, or set HF_TOKEN for a private repo)"
            elif name == "GatedRepoError":
                outcome["error"] = "the Hub refuses it (a gated repository: accept its licence and set HF_TOKEN)"
            else:
                outcome["error"] = f"the Hub is unreachable ({name}: {str(exc)[:200]})"

    thread = threading.Thread(target=probe, name=f"hub-probe-{repo_id}", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    if thread.is_alive():
        return f"the Hub is unreachable (no answer within {timeout_s:g} s)"
    return outcome.get("error", "the Hub is unreachable (probe failed)")


def check_loadable(model_id: str, models_dir: Path, *, timeout_s: float = 5.0, _depth: int = 0) -> None:
    """Raise :class:`ModelNotLoadableError` unless ``model_id``'s weights can be loaded on this machine.

    Cheap: reads config files and the HF cache index; at most one bounded Hub metadata request (only for
    an uncached Hub id with ``HF_HUB_OFFLINE`` unset). Never downloads weights.
    """
    try:
        resolved = resolve_model(model_id, models_dir)
    except ModelNotLoadableError:
        raise
    except ModelRefError as exc:
        raise ModelNotLoadableError("model_not_loadable", exc.message, exc.param) from exc

    if resolved.kind == "lora":
        if not (Path(resolved.path) / "adapter_config.json").is_file():
            raise ModelNotLoadableError(
                "model_not_loadable", f"model {model_id!r}: adapter directory {resolved.path} has no "
                "adapter_config.json; the model is damaged, retrain it")
        if _depth >= _MAX_LORA_CHAIN:
            raise ModelNotLoadableError("model_not_loadable", f"model {model_id!r}: LoRA base chain is too deep "
                                        "(a cycle in the manifests?)")
        check_loadable(resolved.base_model or "", models_dir, timeout_s=timeout_s, _depth=_depth + 1)
        return

    path = Path(resolved.path)
    if resolved.kind == "full" or path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotLoadableError(
                "model_not_loadable",
                f"local model directory {path} has no config.json; pass a directory written by save_pretrained "
                "(for an offline test model run `learning-mcp tiny-model DIR`)",
            )
        return

    repo_id = resolved.path
    if _hub_config_cached(repo_id):
        return
    if hub_offline():
        reason = "the Hub is unreachable (HF_HUB_OFFLINE is set, so it was not contacted)"
    else:
        reason = _probe_hub(repo_id, timeout_s)
        if reason is None:
            return
    raise ModelNotLoadableError(
        "model_not_loadable",
        f"model {repo_id!r} is not in the local Hugging Face cache and {reason}; download it on a machine "
        f"with access (`hf download {repo_id}`, then copy the cache) or pass a local path "
        f"(no directory {Path(repo_id).expanduser().resolve()} exists)",
    )


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------


def pick_device_and_dtype(prefer_bf16: bool | None = None) -> tuple[str, Any]:
    """``("cuda", torch.bfloat16)`` when a CUDA GPU supports bf16 (unless ``prefer_bf16`` is False),
    ``("cuda", torch.float32)`` on an older GPU or when bf16 is declined, else ``("cpu", torch.float32)``."""
    import torch

    if torch.cuda.is_available():
        if prefer_bf16 is not False and torch.cuda.is_bf16_supported():
            return "cuda", torch.bfloat16
        return "cuda", torch.float32
    return "cpu", torch.float32


@contextlib.contextmanager
def progress_bars_disabled():
    """No tqdm bars from transformers/datasets (weight loading, shard writing, dataset maps) inside the
    block; the previous settings are restored. The backend logs; it does not draw progress bars."""
    from transformers.utils import logging as hf_logging

    try:
        import datasets
    except ImportError:  # pragma: no cover
        datasets = None  # type: ignore[assignment]
    transformers_enabled = hf_logging.is_progress_bar_enabled()
    datasets_enabled = datasets.is_progress_bar_enabled() if datasets else False
    hf_logging.disable_progress_bar()
    if datasets:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if transformers_enabled:
            hf_logging.enable_progress_bar()
        if datasets and datasets_enabled:
            datasets.enable_progress_bars()


SMALL_MODEL_PARAMETERS = 50_000_000
_forced_torch_threads: int | None = None


def set_torch_threads(threads: int | None) -> None:
    """Force the intra-op CPU thread count of :func:`cpu_threads_for` for every model (``Settings.torch_threads``,
    ``LEARNING_MCP_TORCH_THREADS``); None restores the automatic choice. Set once per process at start-up."""
    global _forced_torch_threads
    _forced_torch_threads = threads if threads and threads > 0 else None


@contextlib.contextmanager
def cpu_threads_for(model: Any, device: str):
    """Run the block with one intra-op CPU thread when ``model`` is small (< 50M parameters).

    Tiny models gain nothing from intra-op parallelism, and on a shared machine OpenMP threads that
    spin-wait for a busy sibling core make a step 10-20x slower (measured: 14 ms vs 200-300 ms per step
    for the ``small`` test model on 2 loaded cores). :func:`set_torch_threads` (``LEARNING_MCP_TORCH_THREADS``)
    forces a count for every model. The setting is per thread in ATen's OpenMP backend, so call this in the thread that
    does the work; the previous value is restored.
    """
    if not device.startswith("cpu"):
        yield
        return
    import torch

    wanted: int | None = _forced_torch_threads
    if wanted is None and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS:
        wanted = 1
    previous = torch.get_num_threads()
    if wanted is None or wanted == previous:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _local_only(path: str) -> bool:
    return os.path.isdir(path) or hub_offline()


def load_tokenizer(resolved: ResolvedModel):
    """The model's tokenizer (``AutoTokenizer``), with a pad token guaranteed (falls back to EOS)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.tokenizer_path,
                                              local_files_only=_local_only(resolved.tokenizer_path))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_causal_lm(path: str, dtype: Any, **kwargs: Any):
    """The checkpoint at ``path`` with its auto class: ``AutoModelForImageTextToText`` for vision-language
    models (backend/vision.py), else ``AutoModelForCausalLM``."""

    auto_class = auto_model_class(path_is_vision_language(path))
    return auto_class.from_pretrained(path, dtype=dtype, local_files_only=_local_only(path), **kwargs)


def load_model_weights(resolved: ResolvedModel, models_dir: Path, dtype: Any, *, _depth: int = 0):
    """A plain ``PreTrainedModel`` on CPU holding ``resolved``'s weights (LoRA adapters merged in).

    ``models_dir`` is needed to resolve a LoRA adapter's base when it is itself a fine-tuned id.
    """
    if resolved.kind != "lora":
        return _load_causal_lm(resolved.path, dtype)
    if _depth >= _MAX_LORA_CHAIN:
        raise ModelNotLoadableError("model_not_loadable", f"model {resolved.id!r}: LoRA base chain is too deep")
    import warnings

    from peft import PeftModel

    base_resolved = resolve_model(resolved.base_model or "", models_dir)
    base = load_model_weights(base_resolved, models_dir, dtype, _depth=_depth + 1)
    with warnings.catch_warnings():
        # peft 0.21 reads `model.is_gradient_checkpointing`, deprecated in transformers 5
        warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6", category=FutureWarning)
        merged = PeftModel.from_pretrained(base, resolved.path).merge_and_unload()
    return merged


def load_model_for_inference(resolved: ResolvedModel, device: str, dtype: Any, *, models_dir: Path | None = None):
    """Load ``resolved`` for generation: eval mode, on ``device``, LoRA adapters merged.

    For a LoRA adapter whose base is a fine-tuned id, pass ``models_dir`` (defaults to the adapter
    directory's parent, which is where this backend keeps fine-tuned models).
    """
    if models_dir is None:
        models_dir = Path(resolved.path).parent if resolved.kind == "lora" else Path(".")
    started = time.perf_counter()
    with progress_bars_disabled():
        model = load_model_weights(resolved, models_dir, dtype)
    model.to(device)
    model.eval()
    logger.info("loaded %s model %s on %s/%s in %.2f s", resolved.kind, resolved.id, device,
                str(dtype).replace("torch.", ""), time.perf_counter() - started)
    return model


# --------------------------------------------------------------------------------------------------
# model kind: vision-language or text-only (from the config; transformers imported only when needed)
# --------------------------------------------------------------------------------------------------
def is_vision_language_config(config: Any) -> bool:
    """True for a ``PretrainedConfig`` (or config.json dict) of a vision-language model (module docstring)."""
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    if get("vision_config", None) is not None:
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if get("model_type", None) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return True
    architectures = get("architectures", None) or []
    return any(name in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values() for name in architectures)


def auto_model_class(vision: bool):
    """``AutoModelForImageTextToText`` for vision-language models, else ``AutoModelForCausalLM``."""
    if vision:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def path_is_vision_language(path: str) -> bool:
    """Whether the checkpoint at ``path`` (a local directory or Hub id) is vision-language, from its config."""
    config = model_config_json(path)
    if config is not None:
        if config.get("vision_config") is not None:
            return True
        model_types = image_text_to_text_model_types()  # read from transformers' source, not imported
        return config.get("model_type") in model_types if model_types is not None else is_vision_language_config(config)
    from transformers import AutoConfig

    try:
        loaded = AutoConfig.from_pretrained(path, local_files_only=os.path.isdir(path) or hub_offline())
    except Exception as exc:  # unreadable config: the loader reports it
        logger.debug("cannot read the config of %s: %s", path, exc)
        return False
    return is_vision_language_config(loaded)
