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

ALL_LINEAR = "all-linear"
TARGET_MODULES_PARAM = "hyperparameters.lora_target_modules"
MAX_LISTED = 40


@dataclass
class ModuleInventory:
    """The module names of one model.

    ``names``: every module's dotted name that PEFT can wrap (``nn.Linear``, ``nn.Embedding``, ``nn.Conv1d/2d/3d``,
    transformers' ``Conv1D``). ``linear``: the distinct last components of the ``nn.Linear``/``Conv1D`` ones,
    sorted (``q_proj``, ``k_proj``, …) — what users write in ``target_modules``.
    """

    names: list[str]
    linear: list[str]
    model_type: str | None = None
    vision: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "linear": self.linear, "model_type": self.model_type, "vision": self.vision}


class TargetModulesError(Exception):
    """``message`` names the unmatched entries and lists the model's linear modules; ``code``/``param`` feed an
    API error object."""

    code = "lora_target_modules_invalid"
    param = TARGET_MODULES_PARAM

    def __init__(self, message: str, unmatched: list[str], linear: list[str]) -> None:
        super().__init__(message)
        self.message, self.unmatched, self.linear = message, unmatched, linear


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
    from .modelref import resolve_model

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

    from .modelref import hub_offline
    from .vision import auto_model_class, is_vision_language_config

    source = config_source(model_id, models_dir)
    config = AutoConfig.from_pretrained(source, local_files_only=os.path.isdir(source) or hub_offline())
    vision = is_vision_language_config(config)
    with warnings.catch_warnings(), init_empty_weights():
        warnings.simplefilter("ignore")
        model = auto_model_class(vision).from_config(config)
    return inventory_of(model, model_type=getattr(config, "model_type", None), vision=vision)


def requested_targets(value: Any) -> list[str] | None:
    """``hyperparameters.lora_target_modules`` as the trainer reads it: a list of names, or None for
    ``"all-linear"`` / absent (nothing to check). A comma-separated string is a list."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip() == ALL_LINEAR:
            return None
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value]
    return None  # a malformed value is build_lora_config's error to report


def entry_matches(entry: str, names: list[str]) -> bool:
    """PEFT's rule for a list entry: some module name equals it or ends with ``"." + entry``."""
    suffix = "." + entry
    return any(name == entry or name.endswith(suffix) for name in names)


def check_target_modules(targets: Any, inventory: ModuleInventory, *, model: str = "the model") -> None:
    """Raise :class:`TargetModulesError` unless every entry of ``targets`` matches a module of ``inventory``.

    ``targets``: the payload's ``lora_target_modules`` (list, comma-separated string, ``"all-linear"`` or None;
    the last two always pass). Rule: PEFT's suffix match (module docstring).
    """
    entries = requested_targets(targets)
    if not entries:
        return
    unmatched = [entry for entry in entries if not entry or not entry_matches(entry, inventory.names)]
    if not unmatched:
        return
    listed = inventory.linear[:MAX_LISTED]
    more = f", … ({len(inventory.linear) - MAX_LISTED} more)" if len(inventory.linear) > MAX_LISTED else ""
    which = ", ".join(repr(entry) for entry in unmatched)
    message = (f"lora_target_modules entr{'y' if len(unmatched) == 1 else 'ies'} {which} match{'es' if len(unmatched) == 1 else ''} "
               f"no module of {model}; its linear modules are: {', '.join(listed)}{more}. Fix [training.lora] "
               f"target_modules (or use \"{ALL_LINEAR}\") and call create_job again")
    raise TargetModulesError(message, unmatched, inventory.linear)


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
