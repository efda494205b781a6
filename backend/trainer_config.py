"""The trainer's configuration mapping: a job's hyperparameters (validated by the SFT contract,
:mod:`learning_mcp.tools.sft_contract`) → TRL's ``SFTConfig`` keyword arguments and PEFT's ``LoraConfig``.

Pure functions, no torch: the strategy (full / LoRA / QLoRA, from Synth's signals), step estimates (the HF Trainer's
own formula), the defaults (learning rate 2e-5 full / 2e-4 LoRA, ``per_device_batch`` min(8, examples),
``sequence_length`` 1024 clamped to the model's context, LoRA r=16 alpha=32 dropout=0.05 all-linear) and ``report_to``.
Errors are the worker's :class:`~.errors.TrainingError` naming the hyperparameter. Split out of ``trainer.py``
along its section header (issue 7); ``trainer.py`` re-exports every name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from learning_mcp.tools.sft_config import REPORT_TO_PARAM, parse_report_to
from learning_mcp.tools.sft_contract import ContractError, SFTHyperparameters, parse_hyperparameters, training_strategy

from .errors import TrainingError
from .tracking import INSTALL_HINTS, missing_packages

logger = logging.getLogger(__name__)

DEFAULT_LR_FULL = 2e-5
DEFAULT_CHECKPOINTS_KEPT = 2  # save_total_limit when save_steps is set
DEFAULT_LR_LORA = 2e-4
DEFAULT_MAX_PER_DEVICE_BATCH = 8
DEFAULT_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
MAX_LOGGED_POINTS = 50  # logging_steps = max(1, total_steps // 50)


# --------------------------------------------------------------------------------------------------
# hyperparameter mapping (pure functions)
# --------------------------------------------------------------------------------------------------


def _hyperparameters(hparams: dict | SFTHyperparameters | None) -> SFTHyperparameters:
    """``hparams`` validated by the SFT contract (:mod:`learning_mcp.tools.sft_contract`, where every limit lives),
    or a TrainingError ``invalid_hyperparameters`` naming the key. The backend checked the same contract when the
    job was created, so this fails only for callers that bypass it."""
    try:
        return parse_hyperparameters(hparams)
    except ContractError as exc:
        raise TrainingError("invalid_hyperparameters", exc.message, exc.param) from None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def report_to_setting(hparams: Mapping[str, Any] | SFTHyperparameters | None) -> str | list[str]:
    """``SFTConfig.report_to`` for a job's ``hyperparameters``: ``"none"`` or a list of installed integrations.

    Raises the trainer's ``TrainingError`` (``invalid_hyperparameters`` or ``tracking_unavailable``, param
    ``hyperparameters.report_to``) for an unknown name or a package that is not installed.
    """
    try:
        raw = hparams.extra("report_to") if isinstance(hparams, SFTHyperparameters) else (hparams or {}).get("report_to")
        integrations = parse_report_to(raw)
    except ValueError as exc:
        raise TrainingError("invalid_hyperparameters", f"hyperparameters.{exc}", REPORT_TO_PARAM) from None
    missing = missing_packages(integrations)
    if missing:
        hints = "; ".join(INSTALL_HINTS.get(name, f"pip install {name}") for name in missing)
        raise TrainingError("tracking_unavailable", f"report_to asks for {', '.join(missing)}, which is not installed "
                            f"where the backend runs; install it ({hints}) and restart the backend, or remove "
                            "report_to from the [training] section", REPORT_TO_PARAM)
    return integrations or "none"


def select_strategy(hparams: dict | SFTHyperparameters, effective_config: dict) -> tuple[str, bool]:
    """``("full" | "lora", qlora_requested)``: the contract's rule (:func:`~learning_mcp.tools.sft_contract.
    training_strategy`), with invalid hyperparameters as a TrainingError."""
    try:
        return training_strategy(hparams, effective_config)
    except ContractError as exc:
        raise TrainingError("invalid_hyperparameters", exc.message, exc.param) from None


def estimate_total_steps(n_examples: int, per_device_batch: int, grad_accum: int, epochs: float,
                         max_steps: int | None) -> int:
    """Optimizer steps the HF Trainer will run (its own formula for a map-style dataset)."""
    if max_steps:
        return max_steps
    batches_per_epoch = max(1, math.ceil(n_examples / per_device_batch))
    steps_per_epoch = max(1, batches_per_epoch // grad_accum + int(batches_per_epoch % grad_accum > 0))
    return max(1, math.ceil(epochs * steps_per_epoch))


def build_sft_config(hparams: dict | SFTHyperparameters, n_examples: int, device: str, *, kind: str = "full",
                     has_eval: bool = False, output_dir: str | Path = "sft-output", seed: int = 0,
                     model_max_length: int | None = None, bf16_supported: bool = False) -> dict[str, Any]:
    """Map Synth ``hyperparameters`` onto ``SFTConfig`` keyword arguments (training-notes §7.5).

    Pure: no torch. ``device`` is ``"cpu"`` or ``"cuda"``; ``kind`` picks the default learning rate. Raises
    TrainingError ``invalid_hyperparameters`` for values the SFT contract refuses.
    """
    hp = _hyperparameters(hparams)
    parallelism = hp.parallelism or {}
    max_steps = hp.step_limit
    per_device, grad_accum = hp.per_device_batch, hp.gradient_accumulation_steps
    global_batch = hp.global_batch or hp.batch_size
    if per_device is None:
        per_device = max(1, min(DEFAULT_MAX_PER_DEVICE_BATCH, n_examples, global_batch or n_examples))
    if grad_accum is None:
        grad_accum = max(1, round(global_batch / per_device)) if global_batch else 1
        if global_batch and global_batch % per_device:
            logger.info("global batch %d is not a multiple of per_device_batch %d; using %d accumulation steps",
                        global_batch, per_device, grad_accum)

    max_length = hp.sequence_length or hp.max_length or 1024
    if model_max_length:
        max_length = min(max_length, model_max_length)
    learning_rate = hp.learning_rate or (DEFAULT_LR_LORA if kind == "lora" else DEFAULT_LR_FULL)
    total_steps = estimate_total_steps(n_examples, per_device, grad_accum, hp.n_epochs or 1.0, max_steps)
    on_gpu = device.startswith("cuda")
    fp16 = on_gpu and _truthy(parallelism.get("fp16"))
    bf16 = on_gpu and not fp16 and bf16_supported and parallelism.get("bf16") is not False

    config: dict[str, Any] = {
        "output_dir": str(output_dir),
        "num_train_epochs": float(hp.n_epochs) if hp.n_epochs is not None else 1.0,
        "max_steps": max_steps if max_steps is not None else -1,
        "per_device_train_batch_size": per_device,
        "per_device_eval_batch_size": per_device,
        "gradient_accumulation_steps": grad_accum,
        "max_length": max_length,
        "learning_rate": learning_rate,
        "lr_scheduler_type": hp.lr_scheduler_type or hp.lr_scheduler or "linear",
        # transformers 5 dropped `warmup_ratio`; a float in [0, 1) passed as warmup_steps is a ratio
        "warmup_steps": hp.warmup_steps if hp.warmup_steps is not None else min(hp.warmup_ratio or 0.0, 0.999),
        "weight_decay": hp.weight_decay or 0.0,
        "logging_strategy": "steps",
        "logging_steps": max(1, total_steps // MAX_LOGGED_POINTS),
        "logging_first_step": True,
        "save_strategy": "no",
        "report_to": report_to_setting(hparams),  # [training] report_to, see tracking.py
        "seed": seed,
        "data_seed": seed,
        "packing": False,
        "assistant_only_loss": False,  # labels are built by tokenize_example (assistant-only, weight-aware)
        "completion_only_loss": False,
        "use_cpu": not on_gpu,
        "bf16": bf16,
        "fp16": fp16,
        # transformers 5 name (gradient_checkpointing is its deprecated alias; TRL defaults that one to True)
        "activation_checkpointing": on_gpu and _truthy(parallelism.get("activation_checkpointing")),
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": on_gpu,
        "include_num_input_tokens_seen": "non_padding",
        "remove_unused_columns": True,
        "log_level": "warning",
    }
    if hp.max_grad_norm is not None:
        config["max_grad_norm"] = hp.max_grad_norm
    # no `optim`: transformers' default, the fused AdamW with torch >= 2.8, on CPU too (one kernel per parameter
    # instead of several elementwise ops: ~15% faster steps than "adamw_torch" for the small test model on CPU, the
    # same losses; tests/bench/bench_train.py)
    if has_eval:
        strategy = hp.evaluation_strategy or "steps"
        eval_steps = hp.eval_steps or 0
        if strategy == "steps" and eval_steps > 0:
            config["eval_strategy"] = "steps"
            config["eval_steps"] = eval_steps
        elif strategy == "no":
            config["eval_strategy"] = "no"  # still evaluated once at the end by run_training
        else:  # "epoch", or "steps" with eval_steps 0: end of each epoch (and at the end)
            config["eval_strategy"] = "epoch"
    else:
        config["eval_strategy"] = "no"
    return config


def build_lora_config(hparams: dict | SFTHyperparameters):
    """``peft.LoraConfig`` from ``lora_rank`` / ``lora_alpha`` / ``lora_dropout`` / ``lora_target_modules``
    (defaults r=16, alpha=32, dropout=0.05, all-linear: training-notes §8)."""
    from peft import LoraConfig

    hp = _hyperparameters(hparams)
    targets = hp.lora_target_modules
    if targets is None:
        targets = DEFAULT_LORA["target_modules"]
    elif isinstance(targets, str):
        targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(
        r=hp.lora_rank or hp.lora_r or DEFAULT_LORA["r"],
        lora_alpha=hp.lora_alpha if hp.lora_alpha is not None else DEFAULT_LORA["lora_alpha"],
        lora_dropout=hp.lora_dropout if hp.lora_dropout is not None else DEFAULT_LORA["lora_dropout"],
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
