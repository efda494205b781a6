"""LoRA target modules: which modules a model really has, and whether every requested entry matches one.

Why this exists
    PEFT applies a ``target_modules`` *list* by suffix match (``name == entry`` or ``name.endswith("." + entry)``,
    ``peft.tuners.tuners_utils.check_target_module_exists``) and only fails when *no* entry matched anything. A
    misspelt entry next to a correct one (``["q_proj", "k_prj"]``) is dropped silently and the job trains fewer
    adapters than asked for. :func:`check_target_modules` applies PEFT's own rule entry by entry and fails naming
    the entry and listing the model's real linear module names.

Offline and cheap
    :func:`module_inventory` instantiates the model from its ``config.json`` on the ``meta`` device
    (``accelerate.init_empty_weights``): no weights are read or downloaded, a 7B config builds in about a second.
    Vision-language models are built with ``AutoModelForImageTextToText`` (see :mod:`.vision`), everything else
    with ``AutoModelForCausalLM``. LoRA adapters and ``ft:`` ids are followed to their base model.

Callers
    the trainer (on the model it has loaded, just before PEFT wraps it), the backend's job-create check (on the
    meta-device build) and the MCP tools' ``create_job`` (through ``python -m learning_mcp.backend.lora``, so
    the MCP server process never imports torch).

torch / transformers / accelerate are imported inside functions only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learning_mcp.backend.modelref import auto_model_class, hub_offline, is_vision_language_config, resolve_model
from learning_mcp.tools.lora_rules import (  # noqa: F401  (the rule lives with the shared contract; re-exported)
    ALL_LINEAR,
    MAX_LISTED,
    TARGET_MODULES_PARAM,
    ModuleInventory,
    TargetModulesError,
    check_target_modules,
    entry_matches,
    requested_targets,
)


def inventory_of(model: Any, *, model_type: str | None = None, vision: bool = False) -> ModuleInventory:
    """The :class:`ModuleInventory` of an instantiated model (real or on the meta device)."""
    import torch.nn as nn

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = nn.Linear  # type: ignore[misc,assignment]
    wrappable = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D)
    names, linear = [], set()
    for name, module in model.named_modules():
        if not name or not isinstance(module, wrappable):
            continue
        names.append(name)
        if isinstance(module, (nn.Linear, Conv1D)):
            linear.add(name.rsplit(".", 1)[-1])
    config = getattr(model, "config", None)
    return ModuleInventory(names=names, linear=sorted(linear),
                           model_type=model_type or getattr(config, "model_type", None), vision=vision)


def config_source(model_id: str, models_dir: Path | None) -> str:
    """The path (local dir) or Hub id whose config.json describes ``model_id``'s architecture (LoRA adapters and
    fine-tuned ids followed to their base)."""

    resolved = resolve_model(model_id, Path(models_dir or "."))
    for _ in range(8):
        if resolved.kind != "lora":
            break
        resolved = resolve_model(resolved.base_model or "", Path(models_dir or "."))
    return resolved.path


def module_inventory(model_id: str, models_dir: Path | None = None) -> ModuleInventory:
    """Build ``model_id`` on the meta device from its config (no weights) and list its modules.

    Raises whatever ``AutoConfig`` raises when the config cannot be read offline (the caller decides whether
    that is an error).
    """
    import warnings

    from accelerate import init_empty_weights
    from transformers import AutoConfig


    source = config_source(model_id, models_dir)
    config = AutoConfig.from_pretrained(source, local_files_only=os.path.isdir(source) or hub_offline())
    vision = is_vision_language_config(config)
    with warnings.catch_warnings(), init_empty_weights():
        warnings.simplefilter("ignore")
        model = auto_model_class(vision).from_config(config)
    return inventory_of(model, model_type=getattr(config, "model_type", None), vision=vision)


def main(argv: list[str] | None = None) -> int:
    """``python -m learning_mcp.backend.lora MODEL [--models-dir D]``: the module inventory as one JSON line on
    stdout, or ``{"error": "..."}`` with exit status 1. Used by the MCP tools so their process never imports torch.
    """
    parser = argparse.ArgumentParser(prog="learning_mcp.backend.lora", description=main.__doc__)
    parser.add_argument("model")
    parser.add_argument("--models-dir", default=None)
    args = parser.parse_args(argv)
    try:
        inventory = module_inventory(args.model, Path(args.models_dir) if args.models_dir else None)
    except Exception as exc:  # reported to the caller, which decides
        sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {str(exc)[:500]}"}) + "\n")
        return 1
    sys.stdout.write(json.dumps(inventory.to_dict()) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
