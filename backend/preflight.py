"""Checks ``POST /api/learning/jobs`` runs on the model and the training file before a job is created.

They refuse, with a 400 and an ``{code, message, param}`` error, what would otherwise fail late or — worse —
train the wrong thing and succeed:

* ``images_unsupported``: the training (or validation) file has image parts and the model is text-only
  (:mod:`.vision`); the worker repeats the check when it starts, for payloads that skipped this one.
* ``lora_target_modules_invalid``: a LoRA job whose ``lora_target_modules`` entry matches no module of the
  model (:mod:`.lora`, on a meta-device build from the config: no weights are read).

Both are blocking (file scan, config read, torch import on first use): call :func:`check_new_job` in a thread.
The same checks run in the MCP tools' ``create_job`` (``tools/model_checks.py``), dry runs included.
"""

from __future__ import annotations

import logging
from pathlib import Path

from learning_mcp.tools.model_checks import images_unsupported_message, scan_images

from learning_mcp.tools.errors import LearningMCPError
from learning_mcp.tools.sft_contract import SFTJobPayload

logger = logging.getLogger(__name__)


def _file_path(store, file_id: str | None) -> Path | None:
    record = store.get_file(file_id) if file_id else None
    path = store.paths.file_path(record["sha256"]) if record else None
    return path if path is not None and path.is_file() else None


def _effective_config(spec: SFTJobPayload) -> dict:
    return ((spec.body or {}).get("metadata") or {}).get("effective_config") or {}


def check_images(spec: SFTJobPayload, store) -> None:
    """``images_unsupported`` when a file of the job has image parts and ``spec.model`` is text-only."""
    from .vision import model_is_vision_language

    for param, file_id in (("training_file_id", spec.training_file_id),
                           ("validation_file", spec.validation_file_id)):
        path = _file_path(store, file_id)
        if path is None or scan_images(path, stop_at_first=True).first_line is None:
            continue
        if model_is_vision_language(spec.model, store.paths.models):
            return
        raise LearningMCPError("images_unsupported", images_unsupported_message(spec.model, scan_images(path)),
                               param="model")


def check_lora(spec: SFTJobPayload, store) -> None:
    """``lora_target_modules_invalid`` for a LoRA job with an entry that matches no module of the model."""
    from .lora import TargetModulesError, check_target_modules, module_inventory, requested_targets
    from .trainer import select_strategy

    targets = spec.hyperparameters.lora_target_modules
    if not requested_targets(targets) or select_strategy(spec.hyperparameters, _effective_config(spec))[0] != "lora":
        return
    try:
        inventory = module_inventory(spec.model, store.paths.models)
    except Exception as exc:  # the worker loads the real model and checks again
        logger.debug("module inventory of %s failed: %s", spec.model, exc)
        return
    try:
        check_target_modules(targets, inventory, model=spec.model)
    except TargetModulesError as exc:
        raise LearningMCPError(exc.code, exc.message, param=exc.param) from None


def check_new_job(spec: SFTJobPayload, store) -> None:
    """Every check above; raises :class:`LearningMCPError` (the app turns it into a 400 error body)."""
    check_images(spec, store)
    check_lora(spec, store)
