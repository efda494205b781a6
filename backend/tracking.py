"""Metrics tracking for training jobs: TRL/transformers' ``report_to``, chosen in the job's TOML.

The SFT TOML's ``[training] report_to = "tensorboard"`` (or a list, e.g. ``["tensorboard", "trackio"]``) reaches
the job payload as ``hyperparameters.report_to`` (``tools/sft_config.py`` forwards it; Synth's CLI drops it).
The trainer passes it to ``SFTConfig(report_to=…)`` through :func:`report_to_setting`, and the worker process
calls :func:`configure_tracking` first so the logs land in the backend's data directory:

* ``tensorboard`` — event files under ``<data_dir>/tensorboard/<job_id>/`` (``TENSORBOARD_LOGGING_DIR``, which
  transformers' ``TensorBoardCallback`` reads; the trainer's own output folder is deleted after training).
  View them with ``tensorboard --logdir <data_dir>/tensorboard``. Needs ``tensorboard`` (the ``charts`` extra).
* ``trackio`` — Trackio's local store (its own default; ``TRACKIO_SPACE_ID`` etc. as Trackio documents them),
  project ``huggingface`` (``TrainingArguments.project``'s default). Needs ``trackio``.
* ``wandb`` — Weights & Biases; offline (``WANDB_MODE=offline``, files under ``<data_dir>/wandb``) unless
  ``WANDB_API_KEY`` or ``WANDB_MODE`` is set in the backend's environment, so an unconfigured machine never
  blocks on a login prompt. Needs ``wandb``.
* ``mlflow`` — MLflow's own configuration (``MLFLOW_TRACKING_URI``; default ``./mlruns``). Needs ``mlflow``.
* ``none`` (the default) — nothing but the job's own metrics (``GET /api/learning/jobs/{id}/metrics``).

The job's own metrics and events are recorded either way; ``report_to`` only adds destinations. A name that is
not one of these, or whose package is not installed in the backend's environment, fails the job before training
with ``invalid_hyperparameters`` / ``tracking_unavailable`` and param ``hyperparameters.report_to``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Mapping

from learning_mcp.tools.sft_config import REPORT_TO_INTEGRATIONS, REPORT_TO_PARAM, parse_report_to

INSTALL_HINTS = {"tensorboard": "pip install 'learning-mcp[charts]' (or pip install tensorboard)"}


def missing_packages(integrations: list[str]) -> list[str]:
    """The integrations among ``integrations`` whose package is not importable in this environment."""
    return [name for name in integrations
            if not any(importlib.util.find_spec(module) is not None for module in REPORT_TO_INTEGRATIONS[name])]


def report_to_setting(hparams: Mapping[str, Any] | None) -> str | list[str]:
    """``SFTConfig.report_to`` for a job's ``hyperparameters``: ``"none"`` or a list of installed integrations.

    Raises the trainer's ``TrainingError`` (``invalid_hyperparameters`` or ``tracking_unavailable``, param
    ``hyperparameters.report_to``) for an unknown name or a package that is not installed.
    """
    from .trainer import TrainingError  # here, not at import time: the trainer imports this module

    try:
        integrations = parse_report_to((hparams or {}).get("report_to"))
    except ValueError as exc:
        raise TrainingError("invalid_hyperparameters", f"hyperparameters.{exc}", REPORT_TO_PARAM) from None
    missing = missing_packages(integrations)
    if missing:
        hints = "; ".join(INSTALL_HINTS.get(name, f"pip install {name}") for name in missing)
        raise TrainingError("tracking_unavailable", f"report_to asks for {', '.join(missing)}, which is not installed "
                            f"where the backend runs; install it ({hints}) and restart the backend, or remove "
                            "report_to from the [training] section", REPORT_TO_PARAM)
    return integrations or "none"


def tensorboard_dir(data_dir: str | os.PathLike[str], job_id: str) -> Path:
    """Where a job's TensorBoard event files go: ``<data_dir>/tensorboard/<job_id>``."""
    return Path(data_dir) / "tensorboard" / job_id


def configure_tracking(hparams: Mapping[str, Any] | None, data_dir: str | os.PathLike[str], job_id: str,
                       environ: os._Environ | dict | None = None) -> dict[str, str]:
    """Point the chosen integrations at the backend's data directory, in this (the job's worker) process.

    Sets only what is unset in ``environ`` (default ``os.environ``), so an operator's own settings win, and
    returns what it set. Unknown names are left to :func:`report_to_setting` to report.
    """
    environ = os.environ if environ is None else environ
    try:
        integrations = parse_report_to((hparams or {}).get("report_to"))
    except ValueError:
        return {}
    wanted: dict[str, str] = {}
    if "tensorboard" in integrations:
        wanted["TENSORBOARD_LOGGING_DIR"] = str(tensorboard_dir(data_dir, job_id))
    if "wandb" in integrations:
        wanted["WANDB_DIR"] = str(Path(data_dir) / "wandb")
        if not environ.get("WANDB_API_KEY") and not environ.get("WANDB_MODE"):
            wanted["WANDB_MODE"] = "offline"
    applied = {key: value for key, value in wanted.items() if not environ.get(key)}
    environ.update(applied)
    if "WANDB_DIR" in applied:
        Path(applied["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    return applied
