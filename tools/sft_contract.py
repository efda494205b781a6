"""The SFT job contract: the payload ``POST /api/learning/jobs`` takes and every rule its hyperparameters obey.

One typed model (pydantic) of Synth's create-job payload (``learning-api.md`` §3.3, built from a TOML as in §4.3),
used by all three places that used to check it on their own:

* the config builder (:mod:`learning_mcp.tools.sft_config`) — it keeps Synth's exact messages for Synth's own
  checks and then runs :func:`parse_hyperparameters` on the payload it built, so a ``create_job`` dry run refuses
  what the trainer cannot run;
* the embedded backend — :class:`SFTJobPayload` is the request model of ``POST /api/learning/jobs`` (so the
  OpenAPI spec shows it) and its errors become ``{"detail", "error": {code, message, param}}`` bodies;
* the trainer's config mapping (``backend/trainer.py``) — it reads a validated :class:`SFTHyperparameters`
  instead of re-checking a dict.

Design
    Every rule is a ``mode="before"`` validator that raises :func:`contract_failure`: a ``PydanticCustomError``
    whose context carries the message, the dotted ``param`` and the HTTP status, so a pydantic
    ``ValidationError`` (or FastAPI's ``RequestValidationError``) turns into a :class:`ContractError` naming the
    field (:func:`error_from_details`) — never a pydantic "Value error," text. Numbers are strict: booleans and
    numeric strings are refused (JSON gives real numbers; the config builder has already coerced TOML values the
    way Synth's schema does). Unknown keys are allowed and kept (``extra="allow"``): the payload forwards settings
    Synth's hosted API may ignore and the embedded backend honours.

Sources of the limits
    Synth's ``SFTTrainingHyperparameters.from_mapping`` (0.2.24): step counts, batch sizes and ``sequence_length``
    positive integers, ``learning_rate`` > 0, ``warmup_ratio`` in [0, 1], ``weight_decay`` >= 0, ``train_kind`` a
    string, at least one step key. The trainer (TRL ``SFTConfig`` / PEFT ``LoraConfig``): ``sequence_length`` /
    ``max_length`` >= :data:`MIN_SEQUENCE_LENGTH`, ``lora_dropout`` in [0, 1), ``lora_alpha`` > 0, ``lora_rank``
    >= 1, ``warmup_steps`` / ``eval_steps`` / ``save_steps`` >= 0, ``save_total_limit`` >= 1, ``max_grad_norm`` >= 0, ``lr_scheduler_type`` one of
    :data:`LR_SCHEDULERS` (the transformers schedules that need no extra arguments), ``evaluation_strategy`` one of
    :data:`EVALUATION_STRATEGIES`, ``seed`` in [0, 2**32) (NumPy's seed range, used by ``set_seed``),
    ``parallelism`` and ``metadata.effective_config.training[.validation]`` objects.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import (BaseModel, ConfigDict, Field, ModelWrapValidatorHandler, PrivateAttr, ValidationError,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from learning_mcp.tools.errors import LearningMCPError, validation_problems

__all__ = [
    "BATCH_KEYS",
    "CHOICE_RULES",
    "EVALUATION_STRATEGIES",
    "LR_SCHEDULERS",
    "MIN_SEQUENCE_LENGTH",
    "NUMBER_RULES",
    "POSITIVE_INT_KEYS",
    "SFT_TRAINING_TYPES",
    "STEP_KEYS",
    "ContractError",
    "EffectiveConfig",
    "JobMetadata",
    "SFTHyperparameters",
    "SFTJobPayload",
    "error_from_details",
    "parse_hyperparameters",
    "parse_job_payload",
]

SFT_TRAINING_TYPES = frozenset({"sft_offline", "sft", "fft", "qft", "sft_online"})
STEP_KEYS = ("n_epochs", "total_steps", "train_steps", "steps")
BATCH_KEYS = ("batch_size", "global_batch", "per_device_batch", "gradient_accumulation_steps")
# Synth's positive-integer keys (its order), then the trainer's own.
POSITIVE_INT_KEYS = (*STEP_KEYS, *BATCH_KEYS, "sequence_length", "lora_rank")
_TRAINER_POSITIVE_INT_KEYS = ("max_steps", "lora_r")
_SEQUENCE_KEYS = ("sequence_length", "max_length")
MIN_SEQUENCE_LENGTH = 8  # shorter windows leave no room for a chat template's role markers
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")
EVALUATION_STRATEGIES = ("no", "steps", "epoch")
MAX_SEED = 2**32 - 1
_CONTRACT_ERROR = "sft_contract"


class ContractError(LearningMCPError):
    """A payload or hyperparameter the contract refuses: ``code`` ``invalid_request``, ``param`` the dotted field
    (``hyperparameters.lora_dropout``), ``status`` 400 (422 when the body is not a JSON object)."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_request",
                 status: int = 400) -> None:
        super().__init__(code, message, param=param, status=status)


def contract_failure(message: str, param: str | None, *, status: int = 400) -> PydanticCustomError:
    """The error a contract validator raises; :func:`error_from_details` reads it back."""
    return PydanticCustomError(_CONTRACT_ERROR, "{message}", {"message": message, "param": param, "status": status})


def error_from_details(errors: list[Any], *, strip: tuple[str, ...] = ("body",)) -> ContractError:
    """The first of pydantic's ``errors()`` as a :class:`ContractError`.

    A contract rule's error keeps its message, param and status; any other (a wrong type pydantic caught itself)
    becomes ``"<field>: <pydantic message>"`` with status 400. ``strip`` drops location parts such as FastAPI's
    ``body`` prefix from the param.
    """
    if not errors:
        return ContractError("invalid request")
    first = errors[0]
    ctx = first.get("ctx") or {}
    if first.get("type") == _CONTRACT_ERROR and "message" in ctx:
        return ContractError(str(ctx["message"]), param=ctx.get("param"), status=int(ctx.get("status", 400)))
    param = ".".join(str(part) for part in first.get("loc", ()) if part not in strip) or None
    return ContractError(f"{param or 'request'}: {validation_problems([{'msg': first.get('msg', 'invalid value')}])}",
                         param=param)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# field -> (accepts the value, requirement as read in the error); None is always accepted (the default applies).
NUMBER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "learning_rate": (lambda v: _is_number(v) and v > 0, "must be greater than zero"),
    "warmup_ratio": (lambda v: _is_number(v) and 0 <= v <= 1, "must be between 0 and 1 inclusive"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "must be a number >= 0"),
    "max_grad_norm": (lambda v: _is_number(v) and v >= 0, "must be a number >= 0"),
    "lora_alpha": (lambda v: _is_number(v) and v > 0, "must be a number greater than zero"),
    "lora_dropout": (lambda v: _is_number(v) and 0 <= v < 1, "must be in [0, 1)"),
    "warmup_steps": (lambda v: _is_int(v) and v >= 0, "must be an integer >= 0"),
    "eval_steps": (lambda v: _is_int(v) and v >= 0, "must be an integer >= 0"),
    "save_steps": (lambda v: _is_int(v) and v >= 0, "must be an integer >= 0 (0 = no checkpoints)"),
    "save_total_limit": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
    "seed": (lambda v: _is_int(v) and 0 <= v <= MAX_SEED, f"must be an integer from 0 to {MAX_SEED}"),
}

# field -> the values it may take (compared lower-cased; sent lower-cased to the trainer).
CHOICE_RULES: dict[str, tuple[str, ...]] = {
    "lr_scheduler_type": LR_SCHEDULERS, "lr_scheduler": LR_SCHEDULERS, "evaluation_strategy": EVALUATION_STRATEGIES,
}


def _hp(name: str) -> str:
    return f"hyperparameters.{name}"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# --------------------------------------------------------------------------------------------------------------
# hyperparameters
# --------------------------------------------------------------------------------------------------------------


class SFTHyperparameters(_Open):
    """``payload["hyperparameters"]``: Synth's keys, the keys learning-mcp forwards, and the trainer's own.

    Every field is optional (the trainer has defaults: one epoch, ``per_device_batch`` min(8, examples),
    ``sequence_length`` 1024, learning rate 2e-5 full / 2e-4 LoRA, LoRA r=16 alpha=32 dropout=0.05 all-linear).
    """

    n_epochs: int | None = Field(None, description="passes over the training set (> 0)")
    total_steps: int | None = Field(None, description="optimizer steps; wins over n_epochs (> 0)")
    train_steps: int | None = Field(None, description="alias of total_steps (> 0)")
    steps: int | None = Field(None, description="alias of total_steps (> 0)")
    max_steps: int | None = Field(None, description="TRL's name for total_steps (> 0)")
    batch_size: int | None = Field(None, description="global batch, alias of global_batch (> 0)")
    global_batch: int | None = Field(None, description="examples per optimizer step (> 0)")
    per_device_batch: int | None = Field(None, description="examples per forward pass (> 0)")
    gradient_accumulation_steps: int | None = Field(None, description="forward passes per optimizer step (> 0)")
    sequence_length: int | None = Field(None, description=f"max tokens per example (>= {MIN_SEQUENCE_LENGTH})")
    max_length: int | None = Field(None, description=f"TRL's name for sequence_length (>= {MIN_SEQUENCE_LENGTH})")
    learning_rate: float | None = Field(None, description="peak learning rate (> 0)")
    warmup_ratio: float | None = Field(None, description="fraction of steps spent warming up, 0..1")
    warmup_steps: int | None = Field(None, description="warm-up steps (>= 0); wins over warmup_ratio")
    weight_decay: float | None = Field(None, description="AdamW weight decay (>= 0)")
    max_grad_norm: float | None = Field(None, description="gradient clipping norm (>= 0)")
    lr_scheduler_type: str | None = Field(None, description=f"one of {', '.join(LR_SCHEDULERS)}")
    lr_scheduler: str | None = Field(None, description="alias of lr_scheduler_type")
    train_kind: str | None = Field(None, description='"peft"/"lora" (LoRA), "qlora", or "fft" (full)')
    evaluation_strategy: str | None = Field(None, description=f"one of {', '.join(EVALUATION_STRATEGIES)}")
    eval_steps: int | None = Field(None, description="evaluate every N steps; 0 = every epoch (>= 0)")
    seed: int | None = Field(None, description=f"random seed, 0..{MAX_SEED}")
    save_steps: int | None = Field(None, description="save a checkpoint every N optimizer steps (HF Trainer's "
                                   "save_steps; 0 or absent = none); a job whose worker dies resumes from the last one")
    save_total_limit: int | None = Field(None, description="checkpoints kept on disk, newest first (>= 1; default 2)")
    parallelism: dict[str, Any] | None = Field(None, description="bf16, fp16, activation_checkpointing, …")
    lora_rank: int | None = Field(None, description="LoRA rank r (> 0)")
    lora_r: int | None = Field(None, description="alias of lora_rank (> 0)")
    lora_alpha: float | None = Field(None, description="LoRA alpha (> 0)")
    lora_dropout: float | None = Field(None, description="LoRA dropout, 0 <= p < 1")
    lora_target_modules: str | list[str] | None = Field(
        None, description='"all-linear", comma-separated module names, or a list of module names')
    assistant_only_loss: bool | None = Field(
        None, description="loss on the assistant replies only (default true, TRL's SFTConfig field); false trains "
                          "the whole sequence, system/user/tool text included")

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, SFTHyperparameters):
            return data
        if not isinstance(data, Mapping):
            raise contract_failure("hyperparameters must be an object", "hyperparameters")
        return dict(data)

    @field_validator(*POSITIVE_INT_KEYS, *_TRAINER_POSITIVE_INT_KEYS, "max_length", mode="before")
    @classmethod
    def _positive_int(cls, value: Any, info) -> Any:
        if value is None:
            return None
        name = info.field_name
        if not _is_int(value) or value <= 0:
            raise contract_failure(f"hyperparameters.{name} must be an integer greater than zero", _hp(name))
        if name in _SEQUENCE_KEYS and value < MIN_SEQUENCE_LENGTH:
            raise contract_failure(
                f"hyperparameters.{name} must be at least {MIN_SEQUENCE_LENGTH} tokens (the trainer's minimum), "
                f"got {value}", _hp(name))
        return value

    @field_validator(*NUMBER_RULES, mode="before")
    @classmethod
    def _number(cls, value: Any, info) -> Any:
        accepts, requirement = NUMBER_RULES[info.field_name]
        if value is not None and not accepts(value):
            raise contract_failure(f"hyperparameters.{info.field_name} {requirement}", _hp(info.field_name))
        return value

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _lora_target_modules(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip()):
            return value
        if isinstance(value, list) and value and all(isinstance(item, str) and item.strip() for item in value):
            return value
        raise contract_failure('hyperparameters.lora_target_modules must be "all-linear", module names separated by '
                               "commas, or a non-empty list of module names", _hp("lora_target_modules"))

    @field_validator("assistant_only_loss", mode="before")
    @classmethod
    def _assistant_only_loss(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, bool):
            raise contract_failure("hyperparameters.assistant_only_loss must be true or false", _hp("assistant_only_loss"))
        return value

    @field_validator("train_kind", mode="before")
    @classmethod
    def _train_kind(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise contract_failure("hyperparameters.train_kind must be a string", _hp("train_kind"))
        return value

    @field_validator(*CHOICE_RULES, mode="before")
    @classmethod
    def _choice(cls, value: Any, info) -> Any:
        if value is None:
            return None
        choices = CHOICE_RULES[info.field_name]
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise contract_failure(f"hyperparameters.{info.field_name} must be one of {', '.join(choices)}, "
                                   f"got {value!r}", _hp(info.field_name))
        return value.strip().lower()

    @field_validator("parallelism", mode="before")
    @classmethod
    def _parallelism(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, Mapping):
            raise contract_failure("hyperparameters.parallelism must be an object", _hp("parallelism"))
        return value

    def extra(self, key: str, default: Any = None) -> Any:
        """A forwarded key the model does not type (``use_qlora``, ``save_best_model_at_end`` …)."""
        return (self.model_extra or {}).get(key, default)

    @property
    def step_limit(self) -> int | None:
        """``total_steps`` / ``train_steps`` / ``steps`` / ``max_steps``, the first one set."""
        return next((v for v in (self.total_steps, self.train_steps, self.steps, self.max_steps) if v), None)


def parse_hyperparameters(hyperparameters: Any) -> SFTHyperparameters:
    """Validate ``hyperparameters`` (a mapping, or None for ``{}``); raises :class:`ContractError` naming the
    first field at fault (``hyperparameters.sequence_length``)."""
    if isinstance(hyperparameters, SFTHyperparameters):
        return hyperparameters
    try:
        return SFTHyperparameters.model_validate(hyperparameters)
    except ValidationError as exc:
        raise error_from_details(exc.errors(), strip=()) from None


# --------------------------------------------------------------------------------------------------------------
# metadata.effective_config
# --------------------------------------------------------------------------------------------------------------


def _object_or_none(value: Any, param: str) -> Any:
    if value is not None and not isinstance(value, Mapping):
        raise contract_failure(f"{param} must be an object", param)
    return value


def _object_or_empty(value: Any, param: str) -> Any:
    """A section whose falsy value (None, "", [], 0) means "empty", as the backend has always read it."""
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise contract_failure(f"{param} must be an object", param)
    return value


class ValidationSettings(_Open):
    enabled: Any = Field(None, description="false skips evaluation even with a validation file")


class TrainingSection(_Open):
    mode: Any = Field(None, description='"lora" / "peft" / "qlora" selects LoRA')
    use_qlora: Any = Field(None, description="true requests QLoRA (4-bit base) where available")
    validation: ValidationSettings | None = None

    @field_validator("validation", mode="before")
    @classmethod
    def _validation(cls, value: Any) -> Any:
        return _object_or_none(value, "metadata.effective_config.training.validation")


class DataSection(_Open):
    validation_files: list[str] | None = Field(None, description="[validation file id] (the first is used)")
    topology: Any = None

    @field_validator("validation_files", mode="before")
    @classmethod
    def _validation_files(cls, value: Any) -> Any:
        param = "metadata.effective_config.data.validation_files"
        if value is None:
            return None
        if not isinstance(value, list):
            raise contract_failure(f"{param} must be a list", param)
        if not all(isinstance(item, str) for item in value):
            raise contract_failure(f"{param} must be a list of file id strings", param)
        return value


class EffectiveConfig(_Open):
    compute: Any = Field(None, description="gpu_type, gpu_count, nodes (recorded only)")
    data: DataSection | None = None
    training: TrainingSection | None = None

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data: Any) -> Any:
        return _object_or_empty(data, "metadata.effective_config")

    @field_validator("data", "training", mode="before")
    @classmethod
    def _sections(cls, value: Any, info) -> Any:
        return _object_or_none(value, f"metadata.effective_config.{info.field_name}")


class JobMetadata(_Open):
    effective_config: EffectiveConfig = Field(default_factory=EffectiveConfig)

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data: Any) -> Any:
        return _object_or_empty(data, "metadata")


# --------------------------------------------------------------------------------------------------------------
# the payload
# --------------------------------------------------------------------------------------------------------------


def _nested(model: type[BaseModel], value: Any) -> Any:
    """``model.model_validate(value)`` inside a validator: a nested failure is re-raised as its contract error
    (pydantic would otherwise wrap it as a "Value error")."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        error = error_from_details(exc.errors(), strip=())
        raise contract_failure(error.message, error.param, status=error.status) from None


class SFTJobPayload(_Open):
    """The body of ``POST /api/learning/jobs`` (``learning-api.md`` §3.3): Synth's CLI payload, also in the SDK's
    variants (``training_file`` for ``training_file_id``; a top-level ``validation_file`` /
    ``validation_file_id`` next to ``metadata.effective_config.data.validation_files``)."""

    model: str = Field(description="a base model id, a local model path or an ft: model id")
    training_type: str = Field("sft_offline", description=f"one of {', '.join(sorted(SFT_TRAINING_TYPES))}")
    training_file_id: str = Field(description="the uploaded training file's id (alias: training_file)")
    validation_file_id: str | None = Field(
        None, description="the uploaded validation file's id (aliases: validation_file, "
                          "metadata.effective_config.data.validation_files[0])")
    hyperparameters: SFTHyperparameters = Field(default_factory=SFTHyperparameters)
    metadata: JobMetadata = Field(default_factory=JobMetadata)

    _body: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _validate(cls, body: Any, handler: ModelWrapValidatorHandler) -> SFTJobPayload:
        if isinstance(body, SFTJobPayload):
            return body
        payload = handler(cls._normalise(body))
        payload._body = copy.deepcopy(dict(body))
        return payload

    @classmethod
    def _normalise(cls, body: Any) -> dict[str, Any]:
        """Aliases and defaults resolved, in the order the checks run (model, type, file, metadata, validation
        file, hyperparameters)."""
        if not isinstance(body, Mapping):
            raise contract_failure("request body must be a JSON object", None, status=422)
        data = dict(body)
        model = data.get("model")
        if not isinstance(model, str) or not model.strip():
            raise contract_failure("model is required (a base model id, a local model path or an ft: model id)",
                                   "model")
        data["model"] = model.strip()
        training_type = data.get("training_type") or "sft_offline"
        if not isinstance(training_type, str) or training_type.lower() not in SFT_TRAINING_TYPES:
            raise contract_failure(f"training_type {training_type!r} is not supported by this backend; use "
                                   "'sft_offline'", "training_type")
        data["training_type"] = training_type.lower()
        file_id = data.get("training_file_id") or data.get("training_file")
        if not isinstance(file_id, str) or not file_id:
            raise contract_failure("training_file_id is required: upload the dataset with upload_file(path=...) "
                                   "(POST /api/learning/files) first",
                                   "training_file_id")
        data["training_file_id"] = file_id
        metadata = _nested(JobMetadata, data.get("metadata"))
        data["metadata"] = metadata
        validation_file = data.get("validation_file") or data.get("validation_file_id")
        if not validation_file:
            files = (metadata.effective_config.data.validation_files if metadata.effective_config.data else None)
            validation_file = files[0] if files else None
        if validation_file is not None and not isinstance(validation_file, str):
            raise contract_failure("validation_file must be a file id string", "validation_file")
        data["validation_file_id"] = validation_file
        hyperparameters = data.get("hyperparameters") or {}
        data["hyperparameters"] = _nested(SFTHyperparameters, hyperparameters)
        if hyperparameters and not any(hyperparameters.get(key) for key in STEP_KEYS):
            raise contract_failure(f"hyperparameters must include at least one of: {', '.join(STEP_KEYS)}",
                                   "hyperparameters")
        return data

    @property
    def body(self) -> dict[str, Any]:
        """The payload exactly as received (what ``GET /jobs/{id}/config`` returns and the worker reads)."""
        return self._body

    @property
    def effective_config(self) -> EffectiveConfig:
        return self.metadata.effective_config


def parse_job_payload(body: Any) -> SFTJobPayload:
    """Validate a create-job body; raises :class:`ContractError` naming the first field at fault (status 400, or
    422 when the body is not a JSON object)."""
    try:
        return SFTJobPayload.model_validate(body)
    except ValidationError as exc:
        raise error_from_details(exc.errors(), strip=()) from None


# --------------------------------------------------------------------------------------------------------------
# the training strategy a payload asks for
# --------------------------------------------------------------------------------------------------------------
def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def training_strategy(hyperparameters: Mapping[str, Any] | SFTHyperparameters | None,
                      effective_config: Mapping[str, Any] | None) -> tuple[str, bool]:
    """``("full" | "lora", qlora_requested)``: LoRA when any of Synth's signals says so — ``train_kind`` ``peft``/
    ``lora``/``qlora``, ``[training] mode`` ``lora``/``peft``/``qlora``, ``use_qlora`` (the config builder also turns
    ``variety = "lora"`` alone into ``train_kind = "peft"``). Raises :class:`ContractError` for invalid
    hyperparameters. Used by the trainer, the backend's job preflight and ``create_job``'s."""
    hp = parse_hyperparameters(hyperparameters)
    training = (effective_config or {}).get("training") or {}
    train_kind = (hp.train_kind or "").strip().lower()
    mode = str(training.get("mode") or "").strip().lower()
    qlora = _flag(training.get("use_qlora")) or _flag(hp.extra("use_qlora")) or train_kind == "qlora"
    lora = qlora or train_kind in ("peft", "lora") or mode in ("lora", "peft", "qlora")
    return ("lora" if lora else "full"), qlora

