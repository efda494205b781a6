"""Memory at real size: the dtype a full fine-tune is saved in, and the inference engine's model-cache budget.

Saving (issue 11 §4; measured with Qwen3-0.6B's architecture on CPU: an fp32 save is 2.4 GB, twice the bf16 base)
    A full fine-tune trains in fp32 on CPU (and in the loaded dtype on GPU). :func:`save_dtype` picks the dtype
    it is saved in: ``hyperparameters.save_dtype`` when given (``"float32"``, ``"bfloat16"``, ``"float16"``, or
    ``"auto"`` = as trained), otherwise the base model's own ``config.json`` dtype (``dtype`` /
    ``torch_dtype``; following LoRA adapters and ``ft:`` ids to their base). So a bf16 base gives a bf16
    fine-tune, and a fp32 base (the tiny test models) stays fp32.

Inference cache budget
    :func:`estimate_model_bytes` estimates, before loading, what a model will take in memory (weight files'
    sizes scaled from their stored dtype to the load dtype; a LoRA adapter adds its base). The engine evicts
    least-recently-used models until the new one fits the budget (``Settings.inference_memory_mb``,
    ``LEARNING_MCP_INFERENCE_MEMORY_MB``; 0 = no byte budget) *before* loading it, and refuses (HTTP 503
    ``insufficient_memory``) a model that would not fit in the machine's available memory even after
    evicting everything — on one machine a training worker shares that memory, and an OOM kill would take the
    worker or the backend with it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float64": 8, "int8": 1,
                "uint8": 1}
SAVE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _config_dtype(path: str | Path) -> str | None:
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    value = config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
    return str(value).replace("torch.", "") if value else None


def base_dtype_name(resolved: Any, models_dir: Path) -> str | None:
    """The stored dtype of ``resolved``'s weights (``"bfloat16"``…), following LoRA adapters to their base."""
    from .modelref import resolve_model

    for _ in range(8):
        if resolved.kind != "lora":
            return _config_dtype(resolved.path)
        resolved = resolve_model(resolved.base_model or "", models_dir)
    return None


def save_dtype(resolved: Any, models_dir: Path, hparams: dict) -> Any | None:
    """The ``torch.dtype`` to cast a full fine-tune to before saving, or None to save it as trained.

    Raises ``ValueError`` for a ``save_dtype`` hyperparameter outside :data:`SAVE_DTYPES`.
    """
    import torch

    asked = str((hparams or {}).get("save_dtype") or "").strip().lower()
    if asked and asked not in SAVE_DTYPES:
        raise ValueError(f"save_dtype must be one of {', '.join(SAVE_DTYPES)}, got {asked!r}")
    if asked == "auto":
        return None
    name = asked or base_dtype_name(resolved, models_dir)
    dtype = getattr(torch, name, None) if name in _DTYPE_BYTES else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


def cast_for_saving(model: Any, dtype: Any | None) -> Any:
    """``model`` cast in place to ``dtype`` (no-op when None or already there); training must be over."""
    if dtype is None:
        return model
    current = next((p.dtype for p in model.parameters()), None)
    if current is not None and current != dtype:
        logger.info("saving the fine-tune in %s (trained in %s)", dtype, current)
        model.to(dtype)
    return model


def _weights_bytes(path: Path) -> int:
    files = list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def estimate_model_bytes(resolved: Any, models_dir: Path, load_dtype: Any) -> int:
    """Bytes the model's weights will take once loaded in ``load_dtype`` (0 when unknown: Hub ids not cached)."""
    from .modelref import resolve_model

    total = 0
    for _ in range(8):
        path = Path(resolved.path)
        if not path.is_dir():
            return total
        stored = _DTYPE_BYTES.get(_config_dtype(path) or "", 4) if resolved.kind != "lora" else 4
        target = _DTYPE_BYTES.get(str(load_dtype).replace("torch.", ""), 4)
        total += int(_weights_bytes(path) * target / stored)
        if resolved.kind != "lora":
            return total
        resolved = resolve_model(resolved.base_model or "", models_dir)
    return total


def loaded_bytes(model: Any) -> int:
    """Bytes held by a loaded model's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def available_bytes() -> int | None:
    """Memory the machine can still give (psutil ``available``), None when unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        return None
