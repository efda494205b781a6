"""Checks on the job payload that ``POST /api/learning/jobs`` receives.

The payload is the one Synth's CLI sends (``learning-api.md`` §3.3). The SDK variants are accepted too:
``training_file`` (OpenAI-style ``JobsClient``) as an alias of ``training_file_id``, and a top-level
``validation_file`` next to ``metadata.effective_config.data.validation_files``. Every problem is reported as
an :class:`PayloadError` naming the field, with Synth's own wording for the hyperparameter rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SFT_TRAINING_TYPES = frozenset({"sft_offline", "sft", "fft", "qft", "sft_online"})
POSITIVE_INT_KEYS = ("n_epochs", "total_steps", "train_steps", "steps", "batch_size", "global_batch",
                     "per_device_batch", "gradient_accumulation_steps", "sequence_length", "lora_rank")
STEP_KEYS = ("n_epochs", "total_steps", "train_steps", "steps")


class PayloadError(Exception):
    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_request", status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


@dataclass(frozen=True)
class JobSpec:
    model: str
    training_type: str
    training_file_id: str
    validation_file_id: str | None
    hyperparameters: dict
    effective_config: dict


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_hyperparameters(hp: Any) -> None:
    """Synth's ``SFTTrainingHyperparameters.from_mapping`` rules, with its exact messages."""
    if hp is None:
        return
    if not isinstance(hp, dict):
        raise PayloadError("hyperparameters must be an object", param="hyperparameters")
    for key in POSITIVE_INT_KEYS:
        if key in hp and hp[key] is not None:
            value = hp[key]
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise PayloadError(f"hyperparameters.{key} must be an integer greater than zero",
                                   param=f"hyperparameters.{key}")
    if "learning_rate" in hp and hp["learning_rate"] is not None:
        if not (_is_number(hp["learning_rate"]) and hp["learning_rate"] > 0):
            raise PayloadError("hyperparameters.learning_rate must be greater than zero",
                               param="hyperparameters.learning_rate")
    if "warmup_ratio" in hp and hp["warmup_ratio"] is not None:
        if not (_is_number(hp["warmup_ratio"]) and 0 <= hp["warmup_ratio"] <= 1):
            raise PayloadError("hyperparameters.warmup_ratio must be between 0 and 1 inclusive",
                               param="hyperparameters.warmup_ratio")
    if "weight_decay" in hp and hp["weight_decay"] is not None:
        if not (_is_number(hp["weight_decay"]) and hp["weight_decay"] >= 0):
            raise PayloadError("hyperparameters.weight_decay must be a number >= 0", param="hyperparameters.weight_decay")
    if "lora_dropout" in hp and hp["lora_dropout"] is not None:
        if not (_is_number(hp["lora_dropout"]) and 0 <= hp["lora_dropout"] < 1):
            raise PayloadError("hyperparameters.lora_dropout must be in [0, 1)", param="hyperparameters.lora_dropout")
    if "train_kind" in hp and hp["train_kind"] is not None and not isinstance(hp["train_kind"], str):
        raise PayloadError("hyperparameters.train_kind must be a string", param="hyperparameters.train_kind")
    if hp and not any(hp.get(k) for k in STEP_KEYS):
        raise PayloadError("hyperparameters must include at least one of: n_epochs, total_steps, train_steps, steps",
                           param="hyperparameters")


def parse_job_payload(body: Any) -> JobSpec:
    """Turn a create-job body into a :class:`JobSpec`, or raise :class:`PayloadError` naming the field."""
    if not isinstance(body, dict):
        raise PayloadError("request body must be a JSON object", param=None, status=422)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise PayloadError("model is required (a base model id, a local model path or an ft: model id)", param="model")
    training_type = body.get("training_type") or "sft_offline"
    if not isinstance(training_type, str) or training_type.lower() not in SFT_TRAINING_TYPES:
        raise PayloadError(
            f"training_type {training_type!r} is not supported by this backend; use 'sft_offline'",
            param="training_type",
        )
    file_id = body.get("training_file_id") or body.get("training_file")
    if not isinstance(file_id, str) or not file_id:
        raise PayloadError("training_file_id is required: upload the dataset to /api/learning/files first",
                           param="training_file_id")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise PayloadError("metadata must be an object", param="metadata")
    effective = metadata.get("effective_config") or {}
    if not isinstance(effective, dict):
        raise PayloadError("metadata.effective_config must be an object", param="metadata.effective_config")
    validation_file = body.get("validation_file") or body.get("validation_file_id")
    data_cfg = effective.get("data") or {}
    if not validation_file and isinstance(data_cfg, dict):
        files = data_cfg.get("validation_files") or []
        if not isinstance(files, list):
            raise PayloadError("metadata.effective_config.data.validation_files must be a list",
                               param="metadata.effective_config.data.validation_files")
        validation_file = files[0] if files else None
    if validation_file is not None and not isinstance(validation_file, str):
        raise PayloadError("validation_file must be a file id string", param="validation_file")
    hp = body.get("hyperparameters") or {}
    check_hyperparameters(hp)
    return JobSpec(
        model=model.strip(),
        training_type=training_type.lower(),
        training_file_id=file_id,
        validation_file_id=validation_file,
        hyperparameters=dict(hp),
        effective_config=dict(effective),
    )
