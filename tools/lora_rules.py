"""LoRA ``target_modules`` rules, shared by ``create_job``'s preflight (tools/model_checks.py) and the backend.

Pure (no torch): a model's module names come in a :class:`ModuleInventory` (built offline on the meta device by
:mod:`learning_mcp.backend.lora`), and every ``target_modules`` entry must match one of them by PEFT's own rule
(``peft.tuners.tuners_utils.check_target_module_exists``: a name equal to the entry or ending in ``"." + entry``),
entry by entry — so a misspelt entry is never dropped silently because another one matched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import LearningMCPError

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


class TargetModulesError(LearningMCPError):
    """``message`` names the unmatched entries and lists the model's linear modules; ``code``/``param`` feed an
    API error object."""

    code = "lora_target_modules_invalid"
    param = TARGET_MODULES_PARAM

    def __init__(self, message: str, unmatched: list[str], linear: list[str]) -> None:
        super().__init__("lora_target_modules_invalid", message, param=TARGET_MODULES_PARAM,
                         data={"unmatched": unmatched, "linear": linear})
        self.unmatched, self.linear = unmatched, linear


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
