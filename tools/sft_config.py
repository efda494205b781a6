"""SFT TOML config -> Synth learning-API job payload, exactly as Synth's CLI (synth-ai 0.2.24) builds it.

Reference: ``/work/shared/reference/learning-api.md`` §4 (schema, validation order, mapping, example, flags,
flow) and the decisions in §9. Pure functions: nothing here touches the network, uploads or polls.

How a config becomes a plan (:func:`build_sft_plan`), in Synth's order (§4.2):

1. **Pre-check** (Synth's ``validate_train_cfg``): type detection, ``[algorithm]`` type/method/variety,
   ``[job].model``, ``[job].data`` or ``[job].data_path``, ``[compute]`` with ``gpu_type``/``gpu_count``.
   Texts are Synth's, followed by a hint where one helps. Our changes: when the call supplies the dataset
   (``dataset``, ``training_file_id`` or ``require_dataset_path=False``) the ``[job].data`` rule becomes a
   warning, emitted for ``target="synth"`` only, where the TOML may also meet Synth's own CLI (§9.10);
   ``[compute]`` is required only for ``target="synth"`` (§9.16); a ``model`` argument likewise stands in
   for a missing ``[job].model`` (warning). An RL or prompt-learning config is refused (we build SFT only).
2. **Schema** (Synth's pydantic ``SFTConfig``, ``extra="allow"``): the same pydantic models, so errors read
   exactly like Synth's (``Config validation failed (<path>):\\n  - job.model: Field required``) and values are
   coerced the same way (``learning_rate = 1`` is sent as ``1.0``). For ``target="local"`` the ``[compute]``
   keys are optional.
3. **Algorithm** (``validate_algorithm_config``): Synth's exact multi-line message. ``variety = "qlora"`` is
   refused as Synth refuses it, with the hint Synth never gives (§9.9).
4. **Dataset path**: ``dataset`` argument > ``[job].data`` > ``[job].data_path``; relative paths resolve
   against ``cwd`` (default: the process's working directory), as Synth's CLI does, never against the TOML's
   folder. When the file exists next to the TOML instead, the error says so. A missing
   ``[data].validation_path`` is a warning. ``require_dataset_path=False`` skips this step; so does passing
   ``training_file_id`` without a ``dataset`` (the file id already is the dataset).
5. **Model**: ``target="synth"`` applies Synth's registry (:mod:`learning_mcp.tools.models_registry`): case
   normalisation, ``ft:`` refused, experimental gating. ``target="local"`` accepts any non-empty id or path
   (registry ids still get canonical casing; an existing relative path becomes absolute) and fine-tuned ids,
   since the local backend can continue training them and checks loadability itself (§9.17).
6. **Hyperparameters** (``SFTTrainingHyperparameters.from_mapping``): Synth's texts, booleans rejected (the
   schema alone would coerce ``true`` to 1). Deviations: a negative ``learning_rate`` / ``warmup_ratio`` gets
   the ``must be greater than zero`` / ``between 0 and 1 inclusive`` text (Synth's ``must be a float greater
   than or equal to zero`` reads as if 0 were allowed, which it is not for the learning rate); a fractional
   count such as ``2.5`` is refused instead of truncated.

The model argument is applied and shown in the payload, with a warning, because Synth's CLI ignores
``--model`` for SFT (§9.13).

The payload (§4.3) holds every field Synth's builder emits, with the same values and key order, so it is
accepted wherever Synth's is. Settings Synth's CLI drops silently are handled per §9.12:

* forwarded, listed in ``dropped_keys`` and warned about (the embedded backend honours them; Synth's hosted
  backend may ignore them): ``[training.lora]`` / legacy ``[lora]`` (``r``, ``alpha``, ``dropout``,
  ``target_modules``) and ``[hyperparameters] lora_*`` as ``hyperparameters.lora_rank|lora_alpha|
  lora_dropout|lora_target_modules``; ``weight_decay``; ``[training] report_to`` (TRL's metrics tracking:
  ``"none"``, ``"tensorboard"``, ``"trackio"``, ``"wandb"``, ``"mlflow"`` or a list) as
  ``hyperparameters.report_to``; and ``total_steps`` / ``train_steps`` / ``steps``,
  all three sent as ``hyperparameters.total_steps`` (the name Synth's hyperparameter class gives it first;
  the backend maps it to ``max_steps``; two that disagree are an error). Forwarded keys go after all of
  Synth's keys, so stripping them gives Synth's payload byte for byte. LoRA precedence when a setting is
  given twice: ``[training.lora]`` > ``[hyperparameters] lora_*`` > ``[lora]``; a losing value that differs
  is reported as dropped.
* dropped, listed and warned about, one line each: ``[policy]``, ``[tags]``, ``[model_config]``,
  ``[metadata]``, ``[compute].topology``, ``hyperparameters.world_size`` and any other key that does not
  reach the payload. Keys that are consumed rather than sent (``[algorithm]``, ``[job]`` model/data/
  data_path/poll_seconds, ``[data].validation_path``) are not listed.

``[model_config].max_images_per_message`` is surfaced on the plan (else the registry's value, 1 for Qwen3-VL)
for the dataset validator.

LoRA signals (issue 8): Synth's backends choose the adapter from ``[training] mode`` / ``train_kind``, not from
``[algorithm] variety``. ``variety = "lora"`` with neither set therefore gets ``hyperparameters.train_kind =
"peft"`` added (with a warning), so the job trains LoRA as the config says; ``variety = "lora"`` with an explicit
full-fine-tune ``train_kind`` is an error. (Stripping the added ``train_kind`` gives Synth's payload.)
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from learning_mcp.tools import models_registry
from learning_mcp.tools.config_source import config_path, toml_loads
from learning_mcp.tools.config_source import path_exists as _exists
from learning_mcp.tools.config_source import resolve_path as _resolve_path
from learning_mcp.tools.errors import MessageError
from learning_mcp.tools.sft_contract import BATCH_KEYS, STEP_KEYS, ContractError, parse_hyperparameters

__all__ = [
    "CONFIG_SCHEMA_DOC",
    "EXAMPLE_TOML",
    "SUPPORTED_ALGORITHMS",
    "ConfigError",
    "SFTJobPlan",
    "build_sft_plan",
    "detect_training_type",
    "load_config",
    "validate_algorithm",
    "validate_hyperparameters",
]

Target = Literal["synth", "local"]

TRAINING_TYPE = "sft_offline"
DATASET_ARGUMENT_HINT = "(pass dataset=... to create_job)"

# Synth's SUPPORTED_ALGORITHMS, in its order (the RL entry appears in its error text).
SUPPORTED_ALGORITHMS: tuple[tuple[str, str, str], ...] = (
    ("online", "policy_gradient", "gspo"),
    ("offline", "supervised_finetune", "fft"),
    ("offline", "sft", "fft"),
    ("offline", "sft", "lora"),
)
_SFT_ALGORITHMS = frozenset(SUPPORTED_ALGORITHMS[1:])
_ALGORITHM_LABELS = {spec: f"{spec[0]} {spec[1]} / {spec[2]}" for spec in SUPPORTED_ALGORITHMS}

_STEP_KEYS = STEP_KEYS
_POSITIVE_INT_KEYS = (*BATCH_KEYS, "sequence_length")
# Keys of [hyperparameters] Synth's builder copies into the payload (after n_epochs), in its order.
_SYNTH_HYPERPARAMETER_KEYS = (*_POSITIVE_INT_KEYS, "learning_rate", "warmup_ratio", "train_kind")
# SFTTrainingHyperparameters field order: to_dict() emits these first, then the extras in insertion order.
_TYPED_HYPERPARAMETER_ORDER = (*_STEP_KEYS, *_SYNTH_HYPERPARAMETER_KEYS)
_VALIDATION_KEYS = (
    "enabled",
    "evaluation_strategy",
    "eval_steps",
    "save_best_model_at_end",
    "metric_for_best_model",
    "greater_is_better",
)

_LORA_DESTINATIONS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules")
# Names accepted inside [training.lora] / [lora] -> payload key.
_LORA_TABLE_KEYS = {
    "r": "lora_rank",
    "rank": "lora_rank",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "target_modules": "lora_target_modules",
    **{name: name for name in _LORA_DESTINATIONS},
}
_FORWARDED_STEP_KEYS = ("total_steps", "train_steps", "steps")

_CONSUMED_JOB_KEYS = frozenset({"model", "data", "data_path", "poll_seconds"})
# [hyperparameters] keys that reach the payload, Synth's or forwarded by us.
_SENT_HYPERPARAMETER_KEYS = frozenset(
    {*_STEP_KEYS, *_SYNTH_HYPERPARAMETER_KEYS, "parallelism", "weight_decay", "assistant_only_loss", *_LORA_DESTINATIONS}
)
_FORWARDED_COMPUTE_KEYS = ("gpu_type", "gpu_count", "nodes")
_TRAINING_KEYS = ("mode", "use_qlora", "validation", "report_to", "assistant_only_loss", "lora")
# the sections an SFT config may have (a dropped section close to one of these gets a "did you mean")
_KNOWN_SECTIONS = ("algorithm", "job", "compute", "data", "training", "hyperparameters", "lora", "model")
REPORT_TO_PARAM = "hyperparameters.report_to"
# [training] report_to: TRL/transformers' integration name -> modules that provide it (any one; the backend checks)
REPORT_TO_INTEGRATIONS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "trackio": ("trackio",),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
}

_SECTION_DROP_REASONS = {
    "policy": "[policy] is not used by SFT jobs",
    "tags": "[tags] is not sent with SFT jobs",
    "model_config": (
        "[model_config] is not sent with the job (its max_images_per_message is still used to validate the dataset)"
    ),
    "metadata": "[metadata] is not sent; the payload's metadata carries only effective_config",
}
# every table an SFT config may hold (read, forwarded or knowingly dropped)
SFT_SECTIONS = frozenset({*_KNOWN_SECTIONS, *_SECTION_DROP_REASONS})

_KEY_DROP_REASONS = {
    "compute.topology": "only gpu_type, gpu_count and nodes reach the payload",
    "hyperparameters.world_size": "not an SFT payload field (the GPU count is [compute] gpu_count)",
}
_JOB_MODEL_HINT = 'Add: [job] model = "<base model>"'
_ALGORITHM_SNIPPET = '[algorithm]\ntype = "offline"\nmethod = "sft"\nvariety = "lora"   # or "fft"'
_COMPUTE_HINT = (
    'Synth\'s hosted backend needs it (it answers HTTP 400 missing_gpu_type otherwise), e.g. [compute] '
    'gpu_type = "H100", gpu_count = 1. The embedded local backend does not (target="local").'
)
_TOML_POSITION = re.compile(r"at line (\d+), column (\d+)")


class ConfigError(MessageError, ValueError):
    """A config that cannot become a job payload (a :class:`LearningMCPError`, and a ``ValueError`` as before).

    ``code``: stable snake_case (``invalid_toml``, ``config_not_found``, ``missing_algorithm``,
    ``unsupported_algorithm``, ``invalid_config``, ``missing_job_model``, ``missing_dataset_path``,
    ``dataset_not_found``, ``model_not_supported``, ``model_experimental``, ``invalid_hyperparameter``,
    ``missing_compute``, ``invalid_argument``). ``message``: Synth's text where Synth has one, then a hint.
    ``synth_message``: Synth's text alone (None when Synth has no such check). ``param``: the field at fault,
    dotted (``job.model``, ``hyperparameters.learning_rate``). ``details``: extra facts (TOML line/column).
    """

    def __init__(
        self,
        code: str,
        text: str,
        *,
        param: str | None = None,
        hint: str = "",
        from_synth: bool = True,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        if "\n" in text:
            separator = "\n"
        elif hint.startswith("(") or text.endswith((".", "?", "!")):
            separator = " "
        else:
            separator = ". "
        super().__init__(code, f"{text}{separator}{hint}" if hint else text, param=param, data=dict(details or {}))
        self.synth_message = text if from_synth else None
        self.hint = hint
        self.details: dict[str, Any] = self.data

    def to_dict(self) -> dict[str, Any]:
        """The ``{code, message, param}`` error shape of §9.19."""
        return {"code": self.code, "message": self.message, "param": self.param}


# ----------------------------------------------------------------------------------------------------------
# Synth's pydantic schema (0.2.24 api/train/configs/{sft,shared}.py), reproduced so errors and coercions match.
# ----------------------------------------------------------------------------------------------------------


class _ExtraModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class _AlgorithmConfig(_ExtraModel):
    type: str
    method: str
    variety: str


class _ComputeConfig(_ExtraModel):
    gpu_type: str
    gpu_count: int
    nodes: int | None = None


class _LocalComputeConfig(_ExtraModel):
    gpu_type: str | None = None
    gpu_count: int | None = None
    nodes: int | None = None


class _JobConfig(_ExtraModel):
    model: str
    data: str | None = None
    data_path: str | None = None
    poll_seconds: int | None = None


class _DataConfig(_ExtraModel):
    topology: dict[str, Any] | None = None
    validation_path: str | None = None


class _TrainingValidationConfig(_ExtraModel):
    enabled: bool | None = None
    evaluation_strategy: str | None = None
    eval_steps: int | None = None
    save_best_model_at_end: bool | None = None
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None


class _TrainingConfig(_ExtraModel):
    mode: str | None = None
    use_qlora: bool | None = None
    validation: _TrainingValidationConfig | None = None


class _ParallelismConfig(_ExtraModel):
    use_deepspeed: bool | None = None
    deepspeed_stage: int | None = None
    fsdp: bool | None = None
    bf16: bool | None = None
    fp16: bool | None = None
    activation_checkpointing: bool | None = None
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None


class _HyperparametersConfig(_ExtraModel):
    n_epochs: int = 1
    batch_size: int | None = None
    global_batch: int | None = None
    per_device_batch: int | None = None
    gradient_accumulation_steps: int | None = None
    sequence_length: int | None = None
    learning_rate: float | None = None
    warmup_ratio: float | None = None
    train_kind: str | None = None
    weight_decay: float | None = None
    parallelism: _ParallelismConfig | None = None


class _SynthSFTConfig(_ExtraModel):
    algorithm: _AlgorithmConfig | None = None
    job: _JobConfig
    compute: _ComputeConfig | None = None
    data: _DataConfig | None = None
    training: _TrainingConfig | None = None
    hyperparameters: _HyperparametersConfig = Field(default_factory=_HyperparametersConfig)
    tags: dict[str, Any] | None = None


class _LocalSFTConfig(_SynthSFTConfig):
    compute: _LocalComputeConfig | None = None  # type: ignore[assignment]


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def _table(config: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``config[key]`` when it is a table, else an empty dict (Synth's ``x if isinstance(x, dict) else {}``)."""
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _base_dir(cwd: str | os.PathLike[str] | None) -> Path:
    return Path(cwd).expanduser().resolve() if cwd is not None else Path.cwd()


def _parse_toml_text(text: str, label: str) -> dict[str, Any]:
    try:
        return toml_loads(text)
    except tomllib.TOMLDecodeError as exc:
        reason = str(exc)
        position = _TOML_POSITION.search(reason)
        line = getattr(exc, "lineno", None) or (int(position.group(1)) if position else None)
        column = getattr(exc, "colno", None) or (int(position.group(2)) if position else None)
        lines = text.splitlines()
        hint = ""
        if line and 0 < line <= len(lines):
            hint = f"Line {line} reads: {lines[line - 1].strip()!r}"
        raise ConfigError(
            "invalid_toml",
            f"Invalid TOML in {label}: {reason}",
            hint=hint,
            from_synth=False,
            details={"line": line, "column": column},
        ) from exc


def _read_toml_file(path: Path, base_dir: Path) -> dict[str, Any]:
    if not _exists(path):
        raise ConfigError(
            "config_not_found",
            f"Config file not found: {path}",
            param="config",
            hint=f"(relative paths resolve against {base_dir}; pass an absolute path, or the TOML text itself)",
            from_synth=False,
        )
    if not path.is_file():
        raise ConfigError(
            "config_not_found", f"Config path is not a file: {path}", param="config", from_synth=False
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("invalid_toml", f"Invalid TOML in {path}: not UTF-8 ({exc})", from_synth=False) from exc
    return _parse_toml_text(text, str(path))


def load_config(
    config: str | os.PathLike[str], *, cwd: str | os.PathLike[str] | None = None
) -> tuple[dict[str, Any], Path | None]:
    """Parse ``config`` (a path to a .toml file, or TOML text) into a dict; also return the file's path.

    Path or text is decided by :func:`~learning_mcp.tools.config_source.config_path` (the rule every config
    loader shares): a string is TOML text when it holds a newline, or when it holds ``=`` or ``[`` and is
    neither an existing path nor a name ending in ``.toml``; otherwise it is a path, relative to ``cwd``. Raises
    :class:`ConfigError` ``config_not_found`` or ``invalid_toml`` (with the line and column from tomllib).
    """
    base_dir = _base_dir(cwd)
    if isinstance(config, os.PathLike):
        path = config_path(config, cwd=base_dir)
        return _read_toml_file(path, base_dir), path
    if not isinstance(config, str):
        raise ConfigError(
            "invalid_argument",
            f"config must be a path or TOML text, not {type(config).__name__}",
            param="config",
            from_synth=False,
        )
    if not config.strip():
        raise ConfigError(
            "config_not_found",
            "No config given: pass the path of a .toml file or the TOML text itself.",
            param="config",
            from_synth=False,
        )
    path = config_path(config, cwd=base_dir)  # the one path-or-text rule (tools/config_source.py)
    if path is not None:
        return _read_toml_file(path, base_dir), path
    return _parse_toml_text(config, "<config text>"), None


# ----------------------------------------------------------------------------------------------------------
# Step 1: Synth's pre-check (validate_train_cfg / validate_sft_cfg)
# ----------------------------------------------------------------------------------------------------------


def detect_training_type(config: Mapping[str, Any]) -> Literal["prompt", "rl", "sft"] | None:
    """Synth's ``get_type``: which kind of training config this is, or None when it cannot tell."""
    if "prompt_learning" in config:
        return "prompt"
    algorithm = config.get("algorithm")
    algo_type = algo_method = None
    if isinstance(algorithm, dict):
        algo_type = str(algorithm.get("type") or "").lower()
        algo_method = str(algorithm.get("method") or "").lower()
    if algo_type == "online" or algo_method in {"policy_gradient", "ppo", "gspo"}:
        return "rl"
    if config.get("rollout") and (config.get("policy") or config.get("model")):
        return "rl"
    if algo_type == "offline" or algo_method in {"sft", "supervised_finetune"}:
        return "sft"
    if config.get("job") and config.get("compute"):
        return "sft"
    return None


@dataclass
class _Notes:
    """Warnings and dropped keys collected while building a plan, in the order they were found."""

    warnings: list[str] = field(default_factory=list)
    dropped_keys: list[str] = field(default_factory=list)
    ignored_keys: list[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def drop(self, key: str, text: str) -> None:
        """``key`` is not sent as Synth's CLI would send it (forwarded under another name, or ignored)."""
        if key not in self.dropped_keys:
            self.dropped_keys.append(key)
        self.warn(text)

    def ignore(self, key: str, text: str) -> None:
        """``key`` reaches no payload at all (listed in ``ignored_keys`` too)."""
        if key not in self.ignored_keys:
            self.ignored_keys.append(key)
        self.drop(key, text)


def _precheck_training_type(config: Mapping[str, Any]) -> None:
    training_type = detect_training_type(config)
    if training_type is None:
        raise ConfigError(
            "missing_algorithm",
            "Unable to determine training config type; expected [algorithm] or [prompt_learning] sections.",
            param="algorithm",
            hint=f"For an SFT job add:\n{_ALGORITHM_SNIPPET}",
        )
    if training_type != "sft":
        kind = "an RL" if training_type == "rl" else "a prompt-learning"
        raise ConfigError(
            "unsupported_algorithm",
            f"This is {kind} config; create_job builds SFT jobs only.",
            param="algorithm.type" if training_type == "rl" else "prompt_learning",
            hint=f"An SFT config has:\n{_ALGORITHM_SNIPPET}",
            from_synth=False,
        )


def _precheck_algorithm(config: Mapping[str, Any]) -> None:
    algorithm = config.get("algorithm")
    if not isinstance(algorithm, dict):
        raise ConfigError(
            "missing_algorithm",
            "[algorithm] section is required",
            param="algorithm",
            hint=f"Add:\n{_ALGORITHM_SNIPPET}",
        )
    if algorithm.get("type") != "offline":
        raise ConfigError(
            "unsupported_algorithm",
            "[algorithm].type must be 'offline'",
            param="algorithm.type",
            hint='(SFT is offline: type = "offline", lower case)',
        )
    method = algorithm.get("method")
    if method and (not isinstance(method, str) or method not in {"sft", "supervised_finetune"}):
        raise ConfigError(
            "unsupported_algorithm",
            "[algorithm].method must be 'sft' or 'supervised_finetune'",
            param="algorithm.method",
        )
    if not algorithm.get("variety"):
        raise ConfigError(
            "missing_algorithm",
            "[algorithm].variety is required",
            param="algorithm.variety",
            hint='(variety = "lora" or "fft")',
        )


def _precheck_job(
    config: Mapping[str, Any], *, target: Target, dataset_supplied: bool, model_override: str | None, notes: _Notes
) -> None:
    job = config.get("job")
    if not isinstance(job, dict):
        if not model_override:
            raise ConfigError("missing_job_model", "[job] section is required", param="job", hint=_JOB_MODEL_HINT)
        notes.warn(f"[job] section is required by Synth's CLI pre-check; using the model argument {model_override!r}.")
        job = {}
    if not job.get("model"):
        if not model_override:
            hint = _JOB_MODEL_HINT
            if isinstance(config.get("model"), str):
                hint = f"Move the top-level model = {config['model']!r} under [job]."
            raise ConfigError("missing_job_model", "[job].model is required", param="job.model", hint=hint)
        if isinstance(config.get("job"), dict):
            notes.warn(
                f"[job].model is required by Synth's CLI pre-check; using the model argument {model_override!r}."
            )
    if not (job.get("data") or job.get("data_path")):
        if not dataset_supplied:
            raise ConfigError(
                "missing_dataset_path",
                "[job].data or [job].data_path is required",
                param="job.data",
                hint=DATASET_ARGUMENT_HINT,
            )
        if target == "synth":
            notes.warn(
                "[job].data or [job].data_path is required by Synth's CLI pre-check; not needed here because the "
                "dataset was passed to create_job. Add it if you will run this TOML with Synth's own CLI."
            )


def _precheck_compute(config: Mapping[str, Any]) -> None:
    compute = config.get("compute")
    if not isinstance(compute, dict):
        raise ConfigError("missing_compute", "[compute] section is required", param="compute", hint=_COMPUTE_HINT)
    for key in ("gpu_type", "gpu_count"):
        if not compute.get(key):
            raise ConfigError(
                "missing_compute", f"[compute].{key} is required", param=f"compute.{key}", hint=_COMPUTE_HINT
            )


def _precheck(
    config: Mapping[str, Any], *, target: Target, dataset_supplied: bool, model_override: str | None, notes: _Notes
) -> None:
    _precheck_training_type(config)
    _precheck_algorithm(config)
    _precheck_job(
        config, target=target, dataset_supplied=dataset_supplied, model_override=model_override, notes=notes
    )
    if target == "synth":
        _precheck_compute(config)


# ----------------------------------------------------------------------------------------------------------
# Step 2: schema; step 3: algorithm
# ----------------------------------------------------------------------------------------------------------


def _format_validation_error(label: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error.get("loc", ()))
        lines.append(f"{location or '<root>'}: {error.get('msg', 'invalid value')}")
    details = "\n".join(f"  - {line}" for line in lines) or "  - Invalid configuration"
    return f"Config validation failed ({label}):\n{details}"


def _parse_schema(config: Mapping[str, Any], *, target: Target, label: str) -> dict[str, Any]:
    """Validate with Synth's schema and return ``SFTConfig.to_dict()`` (coerced values, None dropped)."""
    schema = _SynthSFTConfig if target == "synth" else _LocalSFTConfig
    try:
        parsed = schema.model_validate(dict(config))
    except ValidationError as exc:
        first_location = exc.errors()[0].get("loc", ()) if exc.errors() else ()
        raise ConfigError(
            "invalid_config",
            _format_validation_error(label, exc),
            param=".".join(str(part) for part in first_location) or None,
        ) from exc
    return parsed.model_dump(mode="python", exclude_none=True)


def validate_algorithm(algorithm: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """Synth's ``validate_algorithm_config(expected_family="sft")``; returns the lower-cased combination."""
    if algorithm is None:
        raise ConfigError("missing_algorithm", "Missing required [algorithm] section in config.", param="algorithm")
    if not isinstance(algorithm, Mapping):
        raise ConfigError("missing_algorithm", "[algorithm] section must be a mapping/object.", param="algorithm")

    def normalise(value: object) -> str:
        return "" if value is None else str(value).strip().lower()

    combination = tuple(normalise(algorithm.get(key)) for key in ("type", "method", "variety"))
    if combination not in _ALGORITHM_LABELS:
        supported = "; ".join(
            f"type='{spec_type}', method='{spec_method}', variety='{spec_variety}'"
            for spec_type, spec_method, spec_variety in SUPPORTED_ALGORITHMS
        )
        algo_type, method, variety = combination
        if variety == "qlora":
            hint = 'Hint: QLoRA is variety = "lora" with [training] use_qlora = true.'
        else:
            hint = 'Hint: for SFT use type = "offline", method = "sft", variety = "lora" or "fft".'
        raise ConfigError(
            "unsupported_algorithm",
            "Unsupported algorithm configuration:\n"
            f"  type={algo_type!r}, method={method!r}, variety={variety!r}\n"
            f"Supported combinations are: {supported}",
            param="algorithm.variety" if variety == "qlora" else "algorithm",
            hint=hint,
        )
    if combination not in _SFT_ALGORITHMS:
        raise ConfigError(
            "unsupported_algorithm",
            f"Config contains algorithm {_ALGORITHM_LABELS[combination]!r}, but the current command expects SFT.",
            param="algorithm",
        )
    return combination


# ----------------------------------------------------------------------------------------------------------
# Step 4: dataset paths
# ----------------------------------------------------------------------------------------------------------


def _dataset_source(
    dataset: str | os.PathLike[str] | None, job: Mapping[str, Any]
) -> tuple[str | os.PathLike[str] | None, str]:
    """The dataset path by precedence (argument > [job].data > [job].data_path) and the param it came from."""
    if dataset:
        return dataset, "dataset"
    if job.get("data"):
        return job["data"], "job.data"
    if job.get("data_path"):
        return job["data_path"], "job.data_path"
    return None, "dataset"


def _missing_dataset_hint(raw_dataset: str | os.PathLike[str], *, base_dir: Path, config_path: Path | None) -> str:
    """Say where a relative path was looked for, and point at the file when it sits next to the TOML instead."""
    if Path(raw_dataset).expanduser().is_absolute():
        return ""
    if config_path is not None:
        beside_config = (config_path.parent / raw_dataset).resolve()
        if _exists(beside_config):
            return (
                f"Relative paths resolve against the working directory ({base_dir}), as in Synth's CLI, not "
                f"against the config's folder; the file exists at {beside_config}. Use that absolute path."
            )
    return f"(relative paths resolve against the working directory {base_dir}, as in Synth's CLI)"


def _resolve_dataset_path(
    dataset: str | os.PathLike[str] | None, job: Mapping[str, Any], *, base_dir: Path, config_path: Path | None
) -> Path:
    raw_dataset, param = _dataset_source(dataset, job)
    if not raw_dataset:
        raise ConfigError(
            "missing_dataset_path",
            "Dataset not specified; pass --dataset or set [job].data",
            param=param,
            hint=DATASET_ARGUMENT_HINT,
        )
    dataset_path = _resolve_path(raw_dataset, base_dir)
    if not _exists(dataset_path):
        hint = _missing_dataset_hint(raw_dataset, base_dir=base_dir, config_path=config_path)
        raise ConfigError("dataset_not_found", f"Dataset not found: {dataset_path}", param=param, hint=hint)
    if not dataset_path.is_file():
        raise ConfigError(
            "dataset_not_found",
            f"Dataset path is not a file: {dataset_path}",
            param=param,
            hint="Point it at the training JSONL file.",
            from_synth=False,
        )
    return dataset_path


def _resolve_validation_path(data_section: Mapping[str, Any], *, base_dir: Path, notes: _Notes) -> Path | None:
    raw_path = data_section.get("validation_path")
    if not isinstance(raw_path, str) or not raw_path:
        return None
    validation_path = _resolve_path(raw_path, base_dir)
    if not validation_path.is_file():
        notes.warn(f"Validation dataset {validation_path} missing; continuing without validation")
        return None
    return validation_path


# ----------------------------------------------------------------------------------------------------------
# Step 5: model
# ----------------------------------------------------------------------------------------------------------


def _synth_model(raw_model: str, *, param: str, allow_experimental: bool | None, notes: _Notes,
                 environ: Mapping[str, str] | None = None) -> str:
    try:
        base_model = models_registry.ensure_allowed_model(
            raw_model, allow_finetuned_prefixes=False, allow_experimental=allow_experimental, training_mode="sft",
            environ=environ,
        )
    except models_registry.ModelNotSupportedError as exc:
        code = {
            "empty_model": "missing_job_model",
            "model_experimental": "model_experimental",
        }.get(exc.code, "model_not_supported")
        hint = exc.hint
        if exc.code == "finetuned_model_not_allowed":
            hint = f"{hint} (target=\"local\" can continue training a fine-tuned model.)"
        elif exc.code == "model_not_supported":
            hint = f"{hint} (target=\"local\" accepts any Hugging Face id or local path.)"
        raise ConfigError(code, exc.synth_message, param=param, hint=hint.strip()) from exc
    if base_model in models_registry.experimental_models(environ):
        notes.warn(f"Model '{base_model}' is experimental and may change or be removed.")
    return base_model


def _local_model(raw_model: str, *, param: str, base_dir: Path, notes: _Notes) -> str:
    candidate = raw_model.strip()
    if not candidate:
        raise ConfigError("missing_job_model", "Model identifier is empty", param=param)
    canonical = models_registry.normalize_model_id(candidate)
    if canonical:
        return canonical
    if models_registry.is_finetuned_id(candidate):
        return candidate
    as_path = Path(candidate).expanduser()
    if candidate.startswith("~") or not as_path.is_absolute():
        resolved = _resolve_path(candidate, base_dir)
        if _exists(resolved):
            notes.warn(f"Model path '{candidate}' resolved to '{resolved}'.")
            return str(resolved)
    return candidate


# ----------------------------------------------------------------------------------------------------------
# Step 6: hyperparameters (Synth's SFTTrainingHyperparameters.from_mapping)
# ----------------------------------------------------------------------------------------------------------


def _hyperparameter_error(
    text: str, key: str | None, *, param: str | None = None, from_synth: bool = True
) -> ConfigError:
    default_param = f"hyperparameters.{key}" if key else "hyperparameters"
    return ConfigError("invalid_hyperparameter", text, param=param or default_param, from_synth=from_synth)


def _positive_int(
    value: Any, *, key: str, label: str | None = None, param: str | None = None, from_synth: bool = True
) -> int:
    """Synth's ``_ensure_positive_int``, except that a fractional float is refused instead of truncated."""
    text = f"{label or f'hyperparameters.{key}'} must be an integer greater than zero"

    def fail() -> ConfigError:
        return _hyperparameter_error(text, key, param=param, from_synth=from_synth)

    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise fail()
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise fail() from exc
    if number <= 0:
        raise fail()
    return number


def _finite_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _learning_rate(value: Any) -> float:
    number = _finite_float(value)
    if number is None or number <= 0:
        raise _hyperparameter_error("hyperparameters.learning_rate must be greater than zero", "learning_rate")
    return number


def _warmup_ratio(value: Any) -> float:
    number = _finite_float(value)
    if number is None or not 0 <= number <= 1:
        raise _hyperparameter_error("hyperparameters.warmup_ratio must be between 0 and 1 inclusive", "warmup_ratio")
    return number


def validate_hyperparameters(hyperparameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Synth's ``SFTTrainingHyperparameters.from_mapping(...).to_dict()``.

    Checks in Synth's order with Synth's texts; returns the typed keys coerced (ints, floats) in Synth's field
    order, then every other key unchanged in its original order. Raises :class:`ConfigError`
    ``invalid_hyperparameter``.
    """
    remaining = dict(hyperparameters or {})
    if not remaining:
        raise _hyperparameter_error("hyperparameters must not be empty", None)
    typed: dict[str, Any] = {}
    for key in _STEP_KEYS:
        if key in remaining:
            typed[key] = _positive_int(remaining.pop(key), key=key)
    if not typed:
        raise _hyperparameter_error(f"hyperparameters must include at least one of: {', '.join(_STEP_KEYS)}", None)
    for key in _POSITIVE_INT_KEYS:
        if key in remaining:
            typed[key] = _positive_int(remaining.pop(key), key=key)
    if "learning_rate" in remaining:
        typed["learning_rate"] = _learning_rate(remaining.pop("learning_rate"))
    if "warmup_ratio" in remaining:
        typed["warmup_ratio"] = _warmup_ratio(remaining.pop("warmup_ratio"))
    if "train_kind" in remaining:
        train_kind = remaining.pop("train_kind")
        if not isinstance(train_kind, str):
            raise _hyperparameter_error("hyperparameters.train_kind must be a string", "train_kind")
        typed["train_kind"] = train_kind
    ordered = {key: typed[key] for key in _TYPED_HYPERPARAMETER_ORDER if key in typed}
    return {**ordered, **remaining}


# Payload keys that come from [training.validation] rather than [hyperparameters].
_VALIDATION_SOURCE = {key: f"training.validation.{key}" for key in _VALIDATION_KEYS}


def _check_contract(hyperparameters: Mapping[str, Any]) -> None:
    """The SFT contract's rules (:mod:`learning_mcp.tools.sft_contract`) on top of Synth's: what the trainer cannot
    run (``sequence_length`` below its minimum, an unknown ``evaluation_strategy`` …) fails here, in a dry run too,
    not in the training worker. ``param`` names the config key the value came from."""
    try:
        parse_hyperparameters(hyperparameters)
    except ContractError as exc:
        source = _VALIDATION_SOURCE.get((exc.param or "").removeprefix("hyperparameters."), exc.param)
        message = exc.message if source == exc.param else exc.message.replace(exc.param, f"{source} ({exc.param})", 1)
        raise ConfigError("invalid_hyperparameter", message, param=source, from_synth=False) from None


def _synth_hyperparameter_block(
    parsed: Mapping[str, Any], raw_hyperparameters: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``hp_block`` Synth's ``build_sft_payload`` hands to ``prepare_sft_job_payload``.

    Values come from the schema-coerced config, as in Synth, except booleans: pydantic turns ``true`` into 1,
    so the raw boolean is passed on for ``validate_hyperparameters`` to reject in its usual order.
    """
    section = parsed.get("hyperparameters") or {}

    def value_of(key: str, default: Any = None) -> Any:
        raw_value = raw_hyperparameters.get(key)
        return raw_value if isinstance(raw_value, bool) else section.get(key, default)

    block: dict[str, Any] = {"n_epochs": value_of("n_epochs", 1)}
    for key in _SYNTH_HYPERPARAMETER_KEYS:
        if key in section:
            block[key] = value_of(key)
    if isinstance(section.get("parallelism"), dict):
        block["parallelism"] = section["parallelism"]

    training = parsed.get("training") or {}
    validation = training.get("validation") if isinstance(training.get("validation"), dict) else None
    if validation is not None:
        block.update(
            {
                "evaluation_strategy": validation.get("evaluation_strategy", "steps"),
                "eval_steps": int(validation.get("eval_steps", 0) or 0),
                "save_best_model_at_end": bool(validation.get("save_best_model_at_end", True)),
                "metric_for_best_model": validation.get("metric_for_best_model", "val.loss"),
                "greater_is_better": bool(validation.get("greater_is_better", False)),
            }
        )
    return block


def _effective_config(parsed: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata.effective_config`` as Synth builds it: compute, data.topology, training mode/use_qlora/validation."""
    compute = parsed.get("compute") or {}
    data_section = parsed.get("data") or {}
    training = parsed.get("training") or {}
    topology = data_section.get("topology")
    effective: dict[str, Any] = {
        "compute": {key: compute[key] for key in _FORWARDED_COMPUTE_KEYS if key in compute},
        "data": {"topology": topology if isinstance(topology, dict) else {}},
        "training": {key: value for key, value in training.items() if key in ("mode", "use_qlora")},
    }
    validation = training.get("validation")
    if isinstance(validation, dict):
        effective["training"]["validation"] = {"enabled": bool(validation.get("enabled", True))}
    return effective


# ----------------------------------------------------------------------------------------------------------
# Keys Synth drops: forwarded ones (§9.12) and the rest
# ----------------------------------------------------------------------------------------------------------


def _forward_note(source_key: str, destination: str, extra: str = "") -> str:
    return (
        f"{source_key}: Synth's CLI drops this setting; learning-mcp forwards it as hyperparameters.{destination}"
        f"{extra}. The embedded backend honours it; Synth's hosted backend may ignore it."
    )


def _drop_note(key: str, reason: str | None = None, known: Collection[str] = ()) -> str:
    """The warning for a key that reaches no payload; with ``known`` (the keys its table does take), a close match
    is suggested (``difflib``), since a dropped key is most often a typo."""
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75) if known and not reason else []
    hint = f" (did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}?)" if close else ""
    return f"{key}: {reason or 'not part of the SFT job payload'}{hint}; dropped (Synth's CLI drops it too)."


def _lora_sources(config: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(source key, payload key, value) for every LoRA setting, in precedence order."""
    sources: list[tuple[str, str, Any]] = []
    training = config.get("training")
    training_lora = training.get("lora") if isinstance(training, dict) else None
    if isinstance(training_lora, dict):
        sources += [
            (f"training.lora.{k}", _LORA_TABLE_KEYS[k], v) for k, v in training_lora.items() if k in _LORA_TABLE_KEYS
        ]
    hyperparameters = config.get("hyperparameters")
    if isinstance(hyperparameters, dict):
        sources += [(f"hyperparameters.{k}", k, v) for k, v in hyperparameters.items() if k in _LORA_DESTINATIONS]
    legacy_lora = config.get("lora")
    if isinstance(legacy_lora, dict):
        sources += [(f"lora.{k}", _LORA_TABLE_KEYS[k], v) for k, v in legacy_lora.items() if k in _LORA_TABLE_KEYS]
    return sources


def _lora_value(source_key: str, destination: str, value: Any) -> Any:
    """Check one LoRA setting; return it as it will be sent."""
    payload_key = f"hyperparameters.{destination}"
    label = source_key if source_key == payload_key else f"{source_key} ({payload_key})"

    def fail(requirement: str) -> ConfigError:
        return ConfigError("invalid_hyperparameter", f"{label} {requirement}", param=source_key, from_synth=False)

    if destination == "lora_rank":
        return _positive_int(value, key=destination, label=label, param=source_key, from_synth=False)
    if destination == "lora_alpha":
        number = _finite_float(value)
        if number is None or number <= 0:
            raise fail("must be a number greater than zero")
        return value if isinstance(value, int) else number
    if destination == "lora_dropout":
        number = _finite_float(value)
        if number is None or not 0 <= number < 1:
            raise fail("must be a number from 0 up to (not including) 1")
        return number
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(item, str) and item.strip() for item in value):
        return list(value)
    raise fail('must be a module name such as "all-linear" or a non-empty list of module names')


def _forward_lora(config: Mapping[str, Any], notes: _Notes) -> dict[str, Any]:
    chosen: dict[str, tuple[str, Any]] = {}
    for source_key, destination, raw_value in _lora_sources(config):
        value = _lora_value(source_key, destination, raw_value)
        if destination not in chosen:
            chosen[destination] = (source_key, value)
            notes.drop(source_key, _forward_note(source_key, destination))
            continue
        winner_key, winner_value = chosen[destination]
        if value == winner_value:
            notes.drop(source_key, _forward_note(source_key, destination))
        else:
            notes.ignore(source_key, f"{source_key}: overridden by {winner_key} = {winner_value!r}; dropped.")
    return {destination: chosen[destination][1] for destination in _LORA_DESTINATIONS if destination in chosen}


def _forward_steps(raw_hyperparameters: Mapping[str, Any], notes: _Notes) -> dict[str, Any]:
    given = [
        (key, _positive_int(raw_hyperparameters[key], key=key))
        for key in _FORWARDED_STEP_KEYS
        if key in raw_hyperparameters
    ]
    if not given:
        return {}
    first_key, first_value = given[0]
    for key, value in given[1:]:
        if value != first_value:
            raise ConfigError(
                "invalid_hyperparameter",
                f"hyperparameters.{first_key} = {first_value} and hyperparameters.{key} = {value} disagree; "
                "set only one (all three are sent as hyperparameters.total_steps)",
                param=f"hyperparameters.{key}",
                from_synth=False,
            )
    for key, _ in given:
        notes.drop(
            f"hyperparameters.{key}",
            _forward_note(
                f"hyperparameters.{key}", "total_steps", " (training then stops after that many steps, not n_epochs)"
            ),
        )
    return {"total_steps": first_value}


def _forward_weight_decay(
    parsed_hyperparameters: Mapping[str, Any], raw_hyperparameters: Mapping[str, Any], notes: _Notes
) -> dict[str, Any]:
    if "weight_decay" not in raw_hyperparameters:
        return {}
    number = _finite_float(raw_hyperparameters["weight_decay"])
    if number is None or number < 0:
        raise _hyperparameter_error(
            "hyperparameters.weight_decay must be a float greater than or equal to zero", "weight_decay"
        )
    notes.drop("hyperparameters.weight_decay", _forward_note("hyperparameters.weight_decay", "weight_decay"))
    return {"weight_decay": parsed_hyperparameters.get("weight_decay", number)}


def parse_report_to(value: Any) -> list[str]:
    """``report_to`` as written (``None``, ``"none"``, a name or a list of names) -> the integrations it names.

    Raises ``ValueError`` naming the allowed values. Pure: the backend (``backend/tracking.py``) uses it too.
    """
    allowed = ", ".join(repr(name) for name in ["none", *REPORT_TO_INTEGRATIONS])
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"report_to must be one of {allowed} or a list of them; got {value!r}")
    cleaned = [n.strip().lower() for n in names]
    unknown = [n for n in cleaned if n not in REPORT_TO_INTEGRATIONS and n != "none"]
    if unknown:
        raise ValueError(f"report_to names {', '.join(map(repr, unknown))}, which learning-mcp does not support; "
                         f"use {allowed}")
    return list(dict.fromkeys(n for n in cleaned if n != "none"))


def _forward_report_to(config: Mapping[str, Any], notes: _Notes) -> dict[str, Any]:
    training = _table(config, "training")
    if "report_to" not in training:
        return {}
    try:
        integrations = parse_report_to(training["report_to"])
    except ValueError as exc:
        raise ConfigError("invalid_config", f"training.{exc}", param="training.report_to", from_synth=False) from None
    notes.drop("training.report_to", _forward_note("training.report_to", "report_to",
                                                   " (TRL's report_to: where training metrics are also logged)"))
    return {"report_to": integrations or "none"}


def _forward_assistant_only_loss(config: Mapping[str, Any], notes: _Notes) -> dict[str, Any]:
    """``assistant_only_loss`` from ``[hyperparameters]`` (or ``[training]``, TRL's SFTConfig field): false trains the
    whole sequence. Checked by the SFT contract (a boolean); forwarded, since Synth's CLI drops it."""
    for table_name in ("hyperparameters", "training"):
        table = _table(config, table_name)
        if "assistant_only_loss" in table:
            value = table["assistant_only_loss"]
            if not isinstance(value, bool):
                raise ConfigError("invalid_config", f"{table_name}.assistant_only_loss must be true or false, got "
                                  f"{value!r}", param=f"{table_name}.assistant_only_loss", from_synth=False)
            notes.drop(f"{table_name}.assistant_only_loss",
                       _forward_note(f"{table_name}.assistant_only_loss", "assistant_only_loss",
                                     " (false: loss on every token, not only the assistant replies)"))
            return {"assistant_only_loss": value}
    return {}


def _forwarded_hyperparameters(
    config: Mapping[str, Any], parsed: Mapping[str, Any], notes: _Notes
) -> dict[str, Any]:
    """Settings Synth's CLI drops that we send (§9.12), in a fixed order after Synth's own keys."""
    raw_hyperparameters = _table(config, "hyperparameters")
    parsed_hyperparameters = parsed.get("hyperparameters") or {}
    return {
        **_forward_steps(raw_hyperparameters, notes),
        **_forward_weight_decay(parsed_hyperparameters, raw_hyperparameters, notes),
        **_forward_lora(config, notes),
        **_forward_report_to(config, notes),
        **_forward_assistant_only_loss(config, notes),
    }


def _audit_table(prefix: str, table: Mapping[str, Any], kept: Collection[str], notes: _Notes) -> None:
    """Note every key of ``table`` outside ``kept`` as dropped."""
    for key in table:
        if key not in kept:
            dotted = f"{prefix}.{key}"
            notes.ignore(dotted, _drop_note(dotted, _KEY_DROP_REASONS.get(dotted), kept))


def _audit_dropped_keys(config: Mapping[str, Any], notes: _Notes) -> None:
    """List every key that neither reaches the payload nor is consumed, in the config's own order."""
    for section, value in config.items():
        if section == "algorithm":
            continue
        if section == "job" and isinstance(value, dict):
            _audit_table("job", value, _CONSUMED_JOB_KEYS, notes)
        elif section == "compute" and isinstance(value, dict):
            _audit_table("compute", value, _FORWARDED_COMPUTE_KEYS, notes)
        elif section == "data" and isinstance(value, dict):
            _audit_table("data", value, {"topology", "validation_path"}, notes)
        elif section == "training" and isinstance(value, dict):
            _audit_training(value, notes)
        elif section == "hyperparameters" and isinstance(value, dict):
            _audit_table("hyperparameters", value, _SENT_HYPERPARAMETER_KEYS, notes)
        elif section == "lora" and isinstance(value, dict):
            _audit_lora_table("lora", value, notes)
        elif section == "model" and isinstance(value, str):
            notes.ignore("model", _drop_note("model", "a top-level model is ignored; [job].model is used"))
        else:
            notes.ignore(section, _drop_note(section, _SECTION_DROP_REASONS.get(section), _KNOWN_SECTIONS))


def _audit_training(training: Mapping[str, Any], notes: _Notes) -> None:
    for key, value in training.items():
        if key == "validation" and isinstance(value, dict):
            _audit_table("training.validation", value, _VALIDATION_KEYS, notes)
        elif key == "lora" and isinstance(value, dict):
            _audit_lora_table("training.lora", value, notes)
        elif key not in _TRAINING_KEYS:
            notes.ignore(f"training.{key}", _drop_note(f"training.{key}", None, _TRAINING_KEYS))


def _audit_lora_table(prefix: str, table: Mapping[str, Any], notes: _Notes) -> None:
    for key in table:
        if key not in _LORA_TABLE_KEYS:
            notes.ignore(
                f"{prefix}.{key}",
                f"{prefix}.{key}: not a LoRA setting learning-mcp forwards (r, alpha, dropout, target_modules); "
                "dropped.",
            )


# ----------------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------------


def _file_id(value: object, param: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("invalid_argument", f"{param} must be a non-empty string", param=param, from_synth=False)
    return value.strip()


def _payload_with_files(
    payload: Mapping[str, Any], training_file_id: str | None, validation_file_id: str | None
) -> dict[str, Any]:
    """A copy of ``payload`` with the uploaded file ids set where Synth's CLI sets them (§3.3)."""
    final = copy.deepcopy(dict(payload))
    if training_file_id is not None:
        final["training_file_id"] = _file_id(training_file_id, "training_file_id")
    if validation_file_id is not None:
        validation_files = [_file_id(validation_file_id, "validation_file_id")]
        final["metadata"]["effective_config"]["data"]["validation_files"] = validation_files
    return final


@dataclass
class SFTJobPlan:
    """Everything ``create_job`` needs: the payload to POST and the files to upload first.

    ``payload`` is Synth's payload (``training_file_id`` null until set) plus the forwarded extras.
    ``dropped_keys`` are the config's dotted keys that Synth's CLI would not send verbatim, whether we forward
    them or not; ``ignored_keys`` the subset that reaches no payload at all (typos, unknown sections); ``warnings``
    explain each (with a "did you mean" for a close known key), plus any other notes (one line each).
    """

    payload: dict[str, Any]
    dataset_path: Path | None
    validation_path: Path | None
    warnings: list[str]
    dropped_keys: list[str]
    model: str
    target: Target
    max_images_per_message: int | None = None
    config_path: Path | None = None
    ignored_keys: list[str] = field(default_factory=list)

    def with_files(self, training_file_id: str, validation_file_id: str | None = None) -> dict[str, Any]:
        """The final payload: ``training_file_id`` set, and ``metadata.effective_config.data.validation_files``
        set to ``[validation_file_id]`` when a validation file was uploaded (as Synth's CLI does)."""
        return _payload_with_files(self.payload, training_file_id, validation_file_id)


def _max_images_per_message(config: Mapping[str, Any], model: str) -> int | None:
    model_config = config.get("model_config")
    if isinstance(model_config, dict) and "max_images_per_message" in model_config:
        value = model_config["max_images_per_message"]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(
                "invalid_config",
                "model_config.max_images_per_message must be an integer greater than zero",
                param="model_config.max_images_per_message",
                from_synth=False,
            )
        return value
    return models_registry.max_images_per_message(model)


def _lora_consistency_notes(
    parsed: Mapping[str, Any], target: Target, notes: _Notes, hyperparameters: dict[str, Any]
) -> None:
    """Make ``variety = "lora"`` alone train LoRA: Synth's backends pick the adapter from ``[training] mode`` /
    ``train_kind`` only, so without either the job would run as a full fine-tune while the config says LoRA.
    ``train_kind = "peft"`` is added to ``hyperparameters`` (a key Synth's payload carries) and the user told;
    an explicit ``train_kind`` naming a full fine-tune contradicts ``variety`` and is an error."""
    variety = str((parsed.get("algorithm") or {}).get("variety", "")).strip().lower()
    training = parsed.get("training") or {}
    train_kind = str(hyperparameters.get("train_kind") or "").strip().lower()
    mode = str(training.get("mode") or "").strip().lower()
    lora_switch = mode in ("lora", "peft", "qlora") or train_kind in ("peft", "lora", "qlora")
    if variety == "lora" and not lora_switch:
        if train_kind:
            raise ConfigError(
                "invalid_config",
                f'[algorithm] variety = "lora" but [hyperparameters] train_kind = "{train_kind}" asks for a full '
                'fine-tune; set train_kind = "peft" (and [training] mode = "lora") for LoRA, or variety = "fft"',
                param="hyperparameters.train_kind",
                from_synth=False,
            )
        hyperparameters["train_kind"] = "peft"
        notes.warn(
            'variety = "lora" but neither [training] mode = "lora" nor [hyperparameters] train_kind = "peft" is set; '
            'Synth picks the adapter from those two, so learning-mcp sends train_kind = "peft" and the job trains '
            "LoRA as the config says (Synth's CLI would send neither and could run a full fine-tune)."
        )
    if target == "local" and training.get("use_qlora") is True:
        notes.warn("use_qlora = true: the embedded backend trains plain LoRA (no 4-bit quantisation).")


def _clean_text(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _model_override_note(toml_model: Any, final_model: str, notes: _Notes) -> None:
    """Warn when the model argument changed what the TOML would train (Synth's CLI ignores --model for SFT)."""
    if not isinstance(toml_model, str) or not toml_model.strip():
        return  # the pre-check already noted that the argument stands in for [job].model
    if toml_model.strip().lower() == final_model.lower():
        return
    notes.warn(
        f"Applied the model argument: the payload trains {final_model!r} instead of [job].model "
        f"{toml_model.strip()!r}. "
        "Synth's CLI ignores --model for SFT, so this TOML run through Synth's CLI would train the [job].model."
    )


def build_sft_plan(
    config: str | os.PathLike[str] | Mapping[str, Any],
    *,
    dataset: str | os.PathLike[str] | None = None,
    training_file_id: str | None = None,
    validation_file_id: str | None = None,
    model: str | None = None,
    target: Target = "synth",
    allow_experimental: bool | None = None,
    cwd: str | os.PathLike[str] | None = None,
    require_dataset_path: bool = True,
    environ: Mapping[str, str] | None = None,
) -> SFTJobPlan:
    """Validate an SFT config in Synth's order and build the job payload (see the module docstring).

    ``config``: a .toml path, TOML text, or an already-parsed mapping. ``dataset``: the training JSONL, which
    wins over ``[job].data``. ``training_file_id`` / ``validation_file_id``: already-uploaded files, set in the
    payload. ``model``: overrides ``[job].model``. ``allow_experimental``: None defers to ``SDK_EXPERIMENTAL``.
    ``cwd``: what relative paths resolve against. ``environ``: where ``SDK_EXPERIMENTAL*`` are read (the server
    passes its ``Settings.environ``; None: the process environment). Raises :class:`ConfigError`.
    """
    if target not in ("synth", "local"):
        raise ConfigError(
            "invalid_argument", f"target must be 'synth' or 'local', not {target!r}", param="target", from_synth=False
        )
    base_dir = _base_dir(cwd)
    if isinstance(config, Mapping):
        raw_config, config_path, label = copy.deepcopy(dict(config)), None, "<config mapping>"
    else:
        raw_config, config_path = load_config(config, cwd=base_dir)
        label = str(config_path) if config_path else "<config text>"

    notes = _Notes()
    model_override = _clean_text(model)
    dataset_supplied = bool(dataset) or training_file_id is not None or not require_dataset_path
    _precheck(
        raw_config, target=target, dataset_supplied=dataset_supplied, model_override=model_override, notes=notes
    )

    effective_raw = copy.deepcopy(raw_config)
    if model_override:
        effective_raw["job"] = {**_table(effective_raw, "job"), "model": model_override}
    parsed = _parse_schema(effective_raw, target=target, label=label)
    validate_algorithm(parsed.get("algorithm"))

    dataset_path = validation_path = None
    if require_dataset_path and (training_file_id is None or dataset):
        dataset_path = _resolve_dataset_path(dataset, parsed["job"], base_dir=base_dir, config_path=config_path)
        if validation_file_id is None:
            validation_path = _resolve_validation_path(parsed.get("data") or {}, base_dir=base_dir, notes=notes)

    model_param = "model" if model_override else "job.model"
    raw_model = parsed["job"]["model"]
    if target == "synth":
        final_model = _synth_model(raw_model, param=model_param, allow_experimental=allow_experimental, notes=notes,
                                   environ=environ)
    else:
        final_model = _local_model(raw_model, param=model_param, base_dir=base_dir, notes=notes)
    if model_override:
        _model_override_note(_table(raw_config, "job").get("model"), final_model, notes)

    raw_hyperparameters = _table(raw_config, "hyperparameters")
    hyperparameters = validate_hyperparameters(_synth_hyperparameter_block(parsed, raw_hyperparameters))
    hyperparameters.update(_forwarded_hyperparameters(raw_config, parsed, notes))
    _check_contract(hyperparameters)
    _audit_dropped_keys(raw_config, notes)
    _lora_consistency_notes(parsed, target, notes, hyperparameters)

    payload: dict[str, Any] = {
        "model": final_model,
        "hyperparameters": hyperparameters,
        "training_type": TRAINING_TYPE,
        "metadata": {"effective_config": _effective_config(parsed)},
        "training_file_id": None,
    }
    return SFTJobPlan(
        payload=_payload_with_files(payload, training_file_id, validation_file_id),
        dataset_path=dataset_path,
        validation_path=validation_path,
        warnings=notes.warnings,
        dropped_keys=notes.dropped_keys,
        ignored_keys=notes.ignored_keys,
        model=final_model,
        target=target,
        max_images_per_message=_max_images_per_message(raw_config, final_model),
        config_path=config_path,
    )


# ----------------------------------------------------------------------------------------------------------
# Documentation served to agents
# ----------------------------------------------------------------------------------------------------------

EXAMPLE_TOML = '''\
# learning-mcp example SFT config: LoRA with small numbers, ready for the embedded local backend.
# The same file works against Synth's hosted API (target="synth"), which also needs [compute].
# Relative paths resolve against the server's working directory, not this file's folder.

[algorithm]
type = "offline"            # SFT is always "offline"
method = "sft"
variety = "lora"            # "lora" or "fft". QLoRA = "lora" plus [training] use_qlora = true

[job]
model = "Qwen/Qwen3-0.6B"   # local backend: any Hugging Face id or local model folder it can load
# data = "data/train.jsonl" # or pass dataset=... to create_job (wins over this)

[compute]                   # required by Synth's hosted backend; the local backend only records it
gpu_type = "H100"
gpu_count = 1

[data]
# validation_path = "data/val.jsonl"   # optional held-out JSONL, uploaded next to the training file

[training]
mode = "lora"
use_qlora = false

[training.lora]             # sent as hyperparameters.lora_* (Synth's own CLI drops these; see warnings)
r = 8
alpha = 16
dropout = 0.05
target_modules = "all-linear"

[hyperparameters]
n_epochs = 1
train_kind = "peft"         # "peft" for LoRA, "fft" for a full fine-tune
per_device_batch = 2
gradient_accumulation_steps = 1
sequence_length = 512
learning_rate = 1e-4
warmup_ratio = 0.03
weight_decay = 0.0          # sent too (Synth's own CLI drops it)
'''

CONFIG_SCHEMA_DOC = '''\
# SFT config (TOML) accepted by create_job

The schema of Synth's `synth-ai train` (0.2.24). Validation runs in Synth's order with Synth's messages.

| section | keys | notes |
|---|---|---|
| `[algorithm]` | `type`, `method`, `variety` (all required) | `type = "offline"`; `method = "sft"` (or `"supervised_finetune"` with `variety = "fft"`); `variety = "fft"` or `"lora"`. `"qlora"` is refused: use `"lora"` + `[training] use_qlora = true` |
| `[job]` | `model` (required), `data` / `data_path`, `poll_seconds` | target `synth`: a Synth base model (case-insensitive, e.g. `Qwen/Qwen3-0.6B`; no `ft:` ids; experimental ones need `allow_experimental`). Target `local`: any Hugging Face id, local path or `ft:` id. `data` is needed only when `create_job` gets no `dataset` |
| `[compute]` | `gpu_type`, `gpu_count` (both required for target `synth`), `nodes` | `topology` is dropped |
| `[data]` | `topology` (table), `validation_path` | a missing validation file is a warning |
| `[training]` | `mode`, `use_qlora`, `report_to` | full fine-tune: `use_qlora = false`, `train_kind = "fft"`; LoRA: `mode = "lora"`, `train_kind = "peft"`; QLoRA: LoRA + `use_qlora = true`. `report_to` (`"none"`, `"tensorboard"`, `"trackio"`, `"wandb"`, `"mlflow"` or a list; TRL's setting) is sent as `hyperparameters.report_to`: the embedded backend also logs the training metrics there (TensorBoard files in `<data dir>/tensorboard/<job_id>`) |
| `[training.validation]` | `enabled`, `evaluation_strategy` (`"steps"`), `eval_steps` (0), `save_best_model_at_end` (true), `metric_for_best_model` (`"val.loss"`), `greater_is_better` (false) | when present, all five evaluation settings are sent with these defaults |
| `[training.lora]` | `r`, `alpha`, `dropout`, `target_modules` | sent as `hyperparameters.lora_rank`, `lora_alpha`, `lora_dropout`, `lora_target_modules` (legacy `[lora]` and `[hyperparameters] lora_*` too) |
| `[hyperparameters]` | `n_epochs` (default 1), `batch_size`, `global_batch`, `per_device_batch`, `gradient_accumulation_steps`, `sequence_length` (positive integers), `learning_rate` (> 0), `warmup_ratio` (0..1), `train_kind`, `weight_decay` (>= 0), `total_steps` / `train_steps` / `steps` | step counts are sent as `total_steps`, the exact number of optimizer steps: it wins over `n_epochs` (fewer steps end training early, more steps run further epochs) |
| `[hyperparameters.parallelism]` | `use_deepspeed`, `deepspeed_stage`, `fsdp`, `bf16`, `fp16`, `activation_checkpointing`, `tensor_parallel_size`, `pipeline_parallel_size` | sent as is |
| `[model_config]` | `max_images_per_message` | not sent; used when validating image datasets (Qwen3-VL default: 1) |

Dropped with a warning: `[policy]`, `[tags]`, `[metadata]`, `[model_config]`, `[compute].topology`,
`hyperparameters.world_size` and any unknown key. Settings Synth's own CLI drops but create_job sends (LoRA,
`weight_decay`, step counts) are listed too, in `dropped_keys`: the embedded backend honours them, Synth's
hosted backend may ignore them.

Paths (`dataset`, `[job].data`, `[data].validation_path`) that are relative resolve against the server's
working directory, as in Synth's CLI, not against the TOML's folder.
'''
