"""Tests for the SFT TOML -> payload builder and Synth's model registry.

The reference example and its exact payload are copied verbatim from learning-api.md §4.4; the validation
texts from §4.2 (and synth-ai 0.2.24's source, which §4.2 quotes).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from learning_mcp.tools import models_registry as registry
from learning_mcp.tools.sft_config import (
    CONFIG_SCHEMA_DOC,
    EXAMPLE_TOML,
    ConfigError,
    _resolve_dataset_path,
    build_sft_plan,
    load_config,
    validate_algorithm,
    validate_hyperparameters,
)

# learning-api.md §4.4: Synth's examples/sft/configs/crafter_fft_qwen0p6b.toml (0.2.24), verbatim.
REFERENCE_TOML = """\
[algorithm]
type = "offline"
method = "sft"
variety = "fft"

[job]
model = "Qwen/Qwen3-0.6B"
# Prefer passing --dataset at runtime for repeatability
# data = "examples/sft/ft_data/crafter_sft.jsonl"

[compute]
gpu_type = "H100"
gpu_count = 1
nodes = 1

[data]
topology = {}
# Optional validation set if you have one locally
# validation_path = "examples/sft/ft_data/crafter_sft.val.jsonl"

[training]
mode = "sft_offline"
use_qlora = false

[training.validation]
enabled = true
evaluation_strategy = "steps"
eval_steps = 50
save_best_model_at_end = true
metric_for_best_model = "val.loss"
greater_is_better = false

[hyperparameters]
n_epochs = 1
train_kind = "fft"
per_device_batch = 1
gradient_accumulation_steps = 32
sequence_length = 4096
learning_rate = 1e-5
warmup_ratio = 0.03
weight_decay = 0.01

[hyperparameters.parallelism]
use_deepspeed = true
deepspeed_stage = 2
fsdp = false
bf16 = true
fp16 = false
activation_checkpointing = true
"""

# learning-api.md §4.4: the exact payload build_sft_payload (0.2.24) produces for it, verbatim.
REFERENCE_PAYLOAD_JSON = """\
{"model": "Qwen/Qwen3-0.6B",
 "hyperparameters": {"n_epochs": 1, "per_device_batch": 1, "gradient_accumulation_steps": 32,
   "sequence_length": 4096, "learning_rate": 1e-05, "warmup_ratio": 0.03, "train_kind": "fft",
   "parallelism": {"use_deepspeed": true, "deepspeed_stage": 2, "fsdp": false, "bf16": true,
                   "fp16": false, "activation_checkpointing": true},
   "evaluation_strategy": "steps", "eval_steps": 50, "save_best_model_at_end": true,
   "metric_for_best_model": "val.loss", "greater_is_better": false},
 "training_type": "sft_offline",
 "metadata": {"effective_config": {"compute": {"gpu_type": "H100", "gpu_count": 1, "nodes": 1},
   "data": {"topology": {}},
   "training": {"mode": "sft_offline", "use_qlora": false, "validation": {"enabled": true}}}},
 "training_file_id": null}
"""

SUPPORTED_COMBINATIONS = (
    "Supported combinations are: type='online', method='policy_gradient', variety='gspo'; "
    "type='offline', method='supervised_finetune', variety='fft'; "
    "type='offline', method='sft', variety='fft'; type='offline', method='sft', variety='lora'"
)

LORA_PAYLOAD_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules")
ALGORITHM = '[algorithm]\ntype = "offline"\nmethod = "sft"\nvariety = "fft"\n'
COMPUTE = '[compute]\ngpu_type = "H100"\ngpu_count = 1\n'


def minimal_toml(*, model: str = "Qwen/Qwen3-0.6B", hyperparameters: str = "n_epochs = 1\n", extra: str = "") -> str:
    """A small valid config (no [job].data: tests pass the dataset) with optional extra TOML appended."""
    return f'{ALGORITHM}\n[job]\nmodel = "{model}"\n\n{COMPUTE}\n[hyperparameters]\n{hyperparameters}\n{extra}'



@pytest.fixture(autouse=True)
def _no_experimental_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDK_EXPERIMENTAL", raising=False)
    monkeypatch.delenv("SDK_EXPERIMENTAL_MODELS", raising=False)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    return path


def plan_for(toml_text: str, dataset: Path, **kwargs):
    kwargs.setdefault("cwd", dataset.parent)
    return build_sft_plan(toml_text, dataset=dataset, **kwargs)


def error_for(toml_text: str, dataset: Path | None = None, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build_sft_plan(toml_text, dataset=dataset, **kwargs)
    return caught.value


# ----------------------------------------------------------------------------------------------------------
# §4.4 reference example
# ----------------------------------------------------------------------------------------------------------


def test_reference_example_payload_matches_synth_field_for_field_and_in_key_order(tmp_path: Path, dataset: Path) -> None:
    config_path = tmp_path / "crafter_fft_qwen0p6b.toml"
    config_path.write_text(REFERENCE_TOML)
    plan = build_sft_plan(config_path, target="synth", dataset=dataset, cwd=tmp_path)

    synth_fields = copy.deepcopy(plan.payload)
    assert synth_fields["hyperparameters"].pop("weight_decay") == 0.01  # forwarded (Synth drops it)
    expected = json.loads(REFERENCE_PAYLOAD_JSON)
    assert synth_fields == expected
    # json.dumps keeps insertion order, so equal strings mean equal key order at every level.
    assert json.dumps(synth_fields) == json.dumps(expected)
    assert isinstance(synth_fields["hyperparameters"]["learning_rate"], float)


def test_reference_example_forwards_weight_decay_after_synth_keys_and_warns(tmp_path: Path, dataset: Path) -> None:
    config_path = tmp_path / "crafter_fft_qwen0p6b.toml"
    config_path.write_text(REFERENCE_TOML)
    plan = build_sft_plan(config_path, target="synth", dataset=dataset, cwd=tmp_path)

    assert plan.payload["hyperparameters"]["weight_decay"] == 0.01
    assert list(plan.payload["hyperparameters"])[-1] == "weight_decay"
    assert plan.dropped_keys == ["hyperparameters.weight_decay"]
    assert len(plan.warnings) == 2
    assert plan.warnings[0].startswith("[job].data or [job].data_path is required by Synth's CLI pre-check")
    assert plan.warnings[1].startswith("hyperparameters.weight_decay: Synth's CLI drops this setting")
    assert "Synth's hosted backend may ignore it" in plan.warnings[1]
    assert plan.dataset_path == dataset.resolve()
    assert plan.validation_path is None
    assert plan.config_path == config_path.resolve()
    assert (plan.model, plan.target, plan.max_images_per_message) == ("Qwen/Qwen3-0.6B", "synth", None)


# ----------------------------------------------------------------------------------------------------------
# Step 1: pre-check (exact texts)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml_text", "code", "synth_message", "param"),
    [
        (
            '[job]\nmodel = "Qwen/Qwen3-0.6B"\n',
            "missing_algorithm",
            "Unable to determine training config type; expected [algorithm] or [prompt_learning] sections.",
            "algorithm",
        ),
        (
            f'[job]\nmodel = "Qwen/Qwen3-0.6B"\n{COMPUTE}',
            "missing_algorithm",
            "[algorithm] section is required",
            "algorithm",
        ),
        (
            f'[algorithm]\ntype = "Offline"\nmethod = "sft"\nvariety = "fft"\n[job]\nmodel = "Qwen/Qwen3-0.6B"\n{COMPUTE}',
            "unsupported_algorithm",
            "[algorithm].type must be 'offline'",
            "algorithm.type",
        ),
        (
            f'[algorithm]\ntype = "offline"\nmethod = "dpo"\nvariety = "fft"\n[job]\nmodel = "Qwen/Qwen3-0.6B"\n{COMPUTE}',
            "unsupported_algorithm",
            "[algorithm].method must be 'sft' or 'supervised_finetune'",
            "algorithm.method",
        ),
        (
            f'[algorithm]\ntype = "offline"\nmethod = "sft"\n[job]\nmodel = "Qwen/Qwen3-0.6B"\n{COMPUTE}',
            "missing_algorithm",
            "[algorithm].variety is required",
            "algorithm.variety",
        ),
        (f"{ALGORITHM}{COMPUTE}", "missing_job_model", "[job] section is required", "job"),
        (f'{ALGORITHM}[job]\ndata = "x.jsonl"\n{COMPUTE}', "missing_job_model", "[job].model is required", "job.model"),
        (f'{ALGORITHM}[job]\nmodel = "Qwen/Qwen3-0.6B"\ndata = "x.jsonl"\n', "missing_compute", "[compute] section is required", "compute"),
        (
            f'{ALGORITHM}[job]\nmodel = "Qwen/Qwen3-0.6B"\ndata = "x.jsonl"\n[compute]\ngpu_count = 1\n',
            "missing_compute",
            "[compute].gpu_type is required",
            "compute.gpu_type",
        ),
        (
            f'{ALGORITHM}[job]\nmodel = "Qwen/Qwen3-0.6B"\ndata = "x.jsonl"\n[compute]\ngpu_type = "H100"\ngpu_count = 0\n',
            "missing_compute",
            "[compute].gpu_count is required",
            "compute.gpu_count",
        ),
    ],
)
def test_precheck_messages_are_synths(toml_text: str, code: str, synth_message: str, param: str, tmp_path: Path) -> None:
    error = error_for(toml_text, cwd=tmp_path)
    assert (error.code, error.synth_message, error.param) == (code, synth_message, param)
    assert error.message.startswith(synth_message)
    assert error.to_dict() == {"code": code, "message": error.message, "param": param}


def test_precheck_requires_job_data_when_no_dataset_is_supplied(tmp_path: Path) -> None:
    error = error_for(minimal_toml(), cwd=tmp_path)
    assert error.code == "missing_dataset_path"
    assert error.synth_message == "[job].data or [job].data_path is required"
    assert error.message == "[job].data or [job].data_path is required (pass dataset=... to create_job)"


def test_job_data_rule_is_a_warning_when_the_call_supplies_the_dataset(dataset: Path) -> None:
    plan = plan_for(minimal_toml(), dataset)
    assert any(w.startswith("[job].data or [job].data_path is required by Synth's CLI pre-check") for w in plan.warnings)

    by_file_id = build_sft_plan(minimal_toml(), training_file_id="file-123", cwd=dataset.parent)
    assert by_file_id.payload["training_file_id"] == "file-123"
    assert by_file_id.dataset_path is None
    assert any("[job].data" in w for w in by_file_id.warnings)


def test_compute_is_required_for_synth_only(tmp_path: Path, dataset: Path) -> None:
    toml_text = f'{ALGORITHM}[job]\nmodel = "Qwen/Qwen3-0.6B"\n'
    assert error_for(toml_text, dataset, cwd=tmp_path).code == "missing_compute"
    plan = plan_for(toml_text, dataset, target="local")
    assert plan.payload["metadata"]["effective_config"]["compute"] == {}
    partial = plan_for(toml_text + '[compute]\ngpu_type = "cpu"\n', dataset, target="local")
    assert partial.payload["metadata"]["effective_config"]["compute"] == {"gpu_type": "cpu"}


def test_rl_config_is_refused(tmp_path: Path) -> None:
    error = error_for('[algorithm]\ntype = "online"\nmethod = "policy_gradient"\nvariety = "gspo"\n', cwd=tmp_path)
    assert error.code == "unsupported_algorithm"
    assert "SFT jobs only" in error.message


# ----------------------------------------------------------------------------------------------------------
# Step 2: schema
# ----------------------------------------------------------------------------------------------------------


def test_schema_errors_use_synths_format(tmp_path: Path, dataset: Path) -> None:
    config_path = tmp_path / "bad.toml"
    config_path.write_text(minimal_toml().replace("gpu_count = 1", 'gpu_count = "two"'))
    error = error_for(str(config_path), dataset, cwd=tmp_path)
    assert error.code == "invalid_config"
    assert error.param == "compute.gpu_count"
    assert error.message == (
        f"Config validation failed ({config_path.resolve()}):\n"
        "  - compute.gpu_count: Input should be a valid integer, unable to parse string as an integer"
    )


def test_schema_error_for_text_config_names_it(dataset: Path) -> None:
    error = error_for(minimal_toml().replace('model = "Qwen/Qwen3-0.6B"', "model = 5"), dataset, cwd=dataset.parent)
    assert error.message == "Config validation failed (<config text>):\n  - job.model: Input should be a valid string"


# ----------------------------------------------------------------------------------------------------------
# Step 3: algorithm
# ----------------------------------------------------------------------------------------------------------


def test_qlora_variety_is_rejected_with_synths_text_and_a_hint(dataset: Path) -> None:
    error = error_for(minimal_toml().replace('variety = "fft"', 'variety = "qlora"'), dataset, cwd=dataset.parent)
    assert error.code == "unsupported_algorithm"
    assert error.synth_message == (
        "Unsupported algorithm configuration:\n"
        "  type='offline', method='sft', variety='qlora'\n"
        f"{SUPPORTED_COMBINATIONS}"
    )
    assert error.message == f'{error.synth_message}\nHint: QLoRA is variety = "lora" with [training] use_qlora = true.'
    assert error.param == "algorithm.variety"


def test_unsupported_combination_and_missing_section() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_algorithm({"type": "offline", "method": "supervised_finetune", "variety": "lora"})
    assert caught.value.synth_message.startswith(
        "Unsupported algorithm configuration:\n  type='offline', method='supervised_finetune', variety='lora'\n"
    )
    with pytest.raises(ConfigError) as caught:
        validate_algorithm(None)
    assert caught.value.message == "Missing required [algorithm] section in config."
    assert validate_algorithm({"type": "offline", "method": "sft", "variety": "LoRA"}) == ("offline", "sft", "lora")


# ----------------------------------------------------------------------------------------------------------
# Step 4: dataset paths
# ----------------------------------------------------------------------------------------------------------


def test_dataset_not_found_and_the_toml_folder_hint(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "train.jsonl").write_text("{}\n")
    config_path = configs / "sft.toml"
    config_path.write_text(minimal_toml().replace('[job]\n', '[job]\ndata = "train.jsonl"\n'))

    error = error_for(str(config_path), cwd=tmp_path)
    assert error.code == "dataset_not_found"
    assert error.param == "job.data"
    assert error.synth_message == f"Dataset not found: {tmp_path.resolve() / 'train.jsonl'}"
    assert str((configs / "train.jsonl").resolve()) in error.hint

    plan = build_sft_plan(config_path, cwd=configs)
    assert plan.dataset_path == (configs / "train.jsonl").resolve()


def test_dataset_not_specified_message() -> None:
    # Unreachable through build_sft_plan after the pre-check (as in Synth's CLI); checked on the step itself.
    with pytest.raises(ConfigError) as caught:
        _resolve_dataset_path(None, {}, base_dir=Path.cwd(), config_path=None)
    assert caught.value.code == "missing_dataset_path"
    assert caught.value.synth_message == "Dataset not specified; pass --dataset or set [job].data"
    assert caught.value.message == (
        "Dataset not specified; pass --dataset or set [job].data (pass dataset=... to create_job)"
    )


def test_dataset_precedence_and_relative_resolution(tmp_path: Path) -> None:
    for name in ("arg.jsonl", "data.jsonl", "data_path.jsonl"):
        (tmp_path / name).write_text("{}\n")
    toml_text = minimal_toml().replace('[job]\n', '[job]\ndata = "data.jsonl"\ndata_path = "data_path.jsonl"\n')
    assert build_sft_plan(toml_text, dataset="arg.jsonl", cwd=tmp_path).dataset_path == tmp_path / "arg.jsonl"
    assert build_sft_plan(toml_text, cwd=tmp_path).dataset_path == tmp_path / "data.jsonl"
    only_data_path = minimal_toml().replace('[job]\n', '[job]\ndata_path = "data_path.jsonl"\n')
    assert build_sft_plan(only_data_path, cwd=tmp_path).dataset_path == tmp_path / "data_path.jsonl"


def test_dataset_argument_that_is_missing_or_a_directory(tmp_path: Path) -> None:
    missing = error_for(minimal_toml(), tmp_path / "nope.jsonl", cwd=tmp_path)
    assert (missing.code, missing.param) == ("dataset_not_found", "dataset")
    assert missing.synth_message == f"Dataset not found: {tmp_path / 'nope.jsonl'}"
    directory = error_for(minimal_toml(), tmp_path, cwd=tmp_path)
    assert directory.code == "dataset_not_found"


def test_validation_path_missing_is_a_warning_and_present_is_resolved(dataset: Path) -> None:
    missing = plan_for(minimal_toml(extra='[data]\nvalidation_path = "val.jsonl"\n'), dataset)
    assert missing.validation_path is None
    assert f"Validation dataset {dataset.parent / 'val.jsonl'} missing; continuing without validation" in missing.warnings

    (dataset.parent / "val.jsonl").write_text("{}\n")
    present = plan_for(minimal_toml(extra='[data]\nvalidation_path = "val.jsonl"\n'), dataset)
    assert present.validation_path == dataset.parent / "val.jsonl"
    assert "validation_files" not in present.payload["metadata"]["effective_config"]["data"]


def test_require_dataset_path_false_skips_the_dataset_step(tmp_path: Path) -> None:
    toml_text = minimal_toml().replace('[job]\n', '[job]\ndata = "does-not-exist.jsonl"\n')
    plan = build_sft_plan(toml_text, cwd=tmp_path, require_dataset_path=False)
    assert plan.dataset_path is None
    assert plan.payload["training_file_id"] is None


# ----------------------------------------------------------------------------------------------------------
# Step 5: model
# ----------------------------------------------------------------------------------------------------------


def test_model_case_is_normalised(dataset: Path) -> None:
    plan = plan_for(minimal_toml(model="qwen/qwen3-0.6b"), dataset)
    assert plan.payload["model"] == plan.model == "Qwen/Qwen3-0.6B"


def test_experimental_model_gating(monkeypatch: pytest.MonkeyPatch, dataset: Path) -> None:
    toml_text = minimal_toml(model="Qwen/Qwen3-4B-Thinking-2507")
    error = error_for(toml_text, dataset, cwd=dataset.parent)
    assert error.code == "model_experimental"
    assert error.param == "job.model"
    assert error.message == (
        "Model 'Qwen/Qwen3-4B-Thinking-2507' is experimental and disabled. "
        "Set SDK_EXPERIMENTAL=1 or pass allow_experimental=True."
    )
    allowed = plan_for(toml_text, dataset, allow_experimental=True)
    assert allowed.model == "Qwen/Qwen3-4B-Thinking-2507"
    assert "Model 'Qwen/Qwen3-4B-Thinking-2507' is experimental and may change or be removed." in allowed.warnings

    monkeypatch.setenv("SDK_EXPERIMENTAL", "1")
    assert plan_for(toml_text, dataset).model == "Qwen/Qwen3-4B-Thinking-2507"
    assert error_for(toml_text, dataset, cwd=dataset.parent, allow_experimental=False).code == "model_experimental"


def test_sdk_experimental_models_extends_the_set(monkeypatch: pytest.MonkeyPatch, dataset: Path) -> None:
    monkeypatch.setenv("SDK_EXPERIMENTAL_MODELS", " qwen/qwen3-8b , Other/Model")
    error = error_for(minimal_toml(model="Qwen/Qwen3-8B"), dataset, cwd=dataset.parent)
    assert error.synth_message.startswith("Model 'Qwen/Qwen3-8B' is experimental and disabled.")


def test_finetuned_model_is_refused_for_synth_sft(dataset: Path) -> None:
    error = error_for(minimal_toml(model="ft:Qwen/Qwen3-0.6B:job-1"), dataset, cwd=dataset.parent)
    assert error.code == "model_not_supported"
    assert error.synth_message == "Model 'ft:Qwen/Qwen3-0.6B:job-1' is not supported."
    assert "'Qwen/Qwen3-0.6B'" in error.hint
    assert 'target="local"' in error.hint


def test_unknown_model_lists_supported_ids(dataset: Path) -> None:
    error = error_for(minimal_toml(model="gpt2"), dataset, cwd=dataset.parent)
    assert error.code == "model_not_supported"
    assert error.synth_message == "Model 'gpt2' is not supported."
    assert error.message.startswith("Model 'gpt2' is not supported. ")
    assert "Qwen/Qwen3-0.6B" in error.hint
    close = error_for(minimal_toml(model="Qwen/Qwen3-0.6"), dataset, cwd=dataset.parent)
    assert "Did you mean 'Qwen/Qwen3-0.6B'?" in close.hint


def test_model_override_is_applied_and_warned_about(dataset: Path) -> None:
    plan = plan_for(minimal_toml(), dataset, model="qwen/qwen3-1.7b")
    assert plan.payload["model"] == "Qwen/Qwen3-1.7B"
    assert any("Applied the model argument" in w and "Synth's CLI ignores --model" in w for w in plan.warnings)

    same = plan_for(minimal_toml(), dataset, model="Qwen/Qwen3-0.6B")
    assert not any("model argument" in w for w in same.warnings)


def test_model_override_stands_in_for_a_missing_job_model(dataset: Path) -> None:
    toml_text = f"{ALGORITHM}[job]\n{COMPUTE}"
    plan = plan_for(toml_text, dataset, model="Qwen/Qwen3-0.6B")
    assert plan.model == "Qwen/Qwen3-0.6B"
    assert any(w.startswith("[job].model is required by Synth's CLI pre-check") for w in plan.warnings)


def test_local_target_accepts_paths_hub_ids_and_finetuned_ids(tmp_path: Path, dataset: Path) -> None:
    model_dir = tmp_path / "models" / "tiny"
    model_dir.mkdir(parents=True)
    relative = plan_for(minimal_toml(model="models/tiny"), dataset, target="local", cwd=tmp_path)
    assert relative.payload["model"] == str(model_dir.resolve())
    absolute = plan_for(minimal_toml(model=str(model_dir)), dataset, target="local")
    assert absolute.model == str(model_dir)
    for model in ("sshleifer/tiny-gpt2", "ft:Qwen/Qwen3-0.6B:job-1", "ft:my-local-base:sft_abc", "gpt2"):
        assert plan_for(minimal_toml(model=model), dataset, target="local").model == model
    # No experimental gating locally; registry ids still get canonical casing.
    assert plan_for(minimal_toml(model="qwen/qwen3-4b-thinking-2507"), dataset, target="local").model == (
        "Qwen/Qwen3-4B-Thinking-2507"
    )


def test_local_target_rejects_only_an_empty_model(dataset: Path) -> None:
    blank = error_for(minimal_toml(model="   "), dataset, target="local", cwd=dataset.parent)
    assert (blank.code, blank.message, blank.param) == ("missing_job_model", "Model identifier is empty", "job.model")
    empty = error_for(minimal_toml(model=""), dataset, target="local", cwd=dataset.parent)
    assert empty.synth_message == "[job].model is required"


# ----------------------------------------------------------------------------------------------------------
# Step 6: hyperparameters (exact texts)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("n_epochs = 0", "hyperparameters.n_epochs must be an integer greater than zero"),
        ("n_epochs = true", "hyperparameters.n_epochs must be an integer greater than zero"),
        ("batch_size = -1", "hyperparameters.batch_size must be an integer greater than zero"),
        ("global_batch = 0", "hyperparameters.global_batch must be an integer greater than zero"),
        ("per_device_batch = true", "hyperparameters.per_device_batch must be an integer greater than zero"),
        ("gradient_accumulation_steps = 0", "hyperparameters.gradient_accumulation_steps must be an integer greater than zero"),
        ("sequence_length = -4096", "hyperparameters.sequence_length must be an integer greater than zero"),
        ("learning_rate = 0", "hyperparameters.learning_rate must be greater than zero"),
        ("learning_rate = -0.1", "hyperparameters.learning_rate must be greater than zero"),
        ("learning_rate = true", "hyperparameters.learning_rate must be greater than zero"),
        ("warmup_ratio = 1.5", "hyperparameters.warmup_ratio must be between 0 and 1 inclusive"),
        ("warmup_ratio = -0.1", "hyperparameters.warmup_ratio must be between 0 and 1 inclusive"),
        ("warmup_ratio = false", "hyperparameters.warmup_ratio must be between 0 and 1 inclusive"),
    ],
)
def test_hyperparameter_messages_are_synths(setting: str, message: str, dataset: Path) -> None:
    error = error_for(minimal_toml(hyperparameters=f"{setting}\n"), dataset, cwd=dataset.parent)
    key = setting.split(" = ")[0]
    assert (error.code, error.message, error.param) == ("invalid_hyperparameter", message, f"hyperparameters.{key}")


def test_hyperparameters_need_a_step_key() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_hyperparameters({"batch_size": 8})
    assert caught.value.message == "hyperparameters must include at least one of: n_epochs, total_steps, train_steps, steps"
    assert validate_hyperparameters({"learning_rate": 1, "n_epochs": 2, "extra": "x"}) == {
        "n_epochs": 2,
        "learning_rate": 1.0,
        "extra": "x",
    }


def test_hyperparameter_defaults_coercion_and_order(dataset: Path) -> None:
    plan = plan_for(minimal_toml(hyperparameters="learning_rate = 1\nbatch_size = 4\n"), dataset)
    assert plan.payload["hyperparameters"] == {"n_epochs": 1, "batch_size": 4, "learning_rate": 1.0}
    assert list(plan.payload["hyperparameters"]) == ["n_epochs", "batch_size", "learning_rate"]
    assert isinstance(plan.payload["hyperparameters"]["learning_rate"], float)


def test_validation_keys_only_with_a_training_validation_table(dataset: Path) -> None:
    without = plan_for(minimal_toml(), dataset)
    assert "evaluation_strategy" not in without.payload["hyperparameters"]
    assert "validation" not in without.payload["metadata"]["effective_config"]["training"]

    with_defaults = plan_for(minimal_toml(extra="[training.validation]\n"), dataset)
    assert with_defaults.payload["hyperparameters"] == {
        "n_epochs": 1,
        "evaluation_strategy": "steps",
        "eval_steps": 0,
        "save_best_model_at_end": True,
        "metric_for_best_model": "val.loss",
        "greater_is_better": False,
    }
    assert with_defaults.payload["metadata"]["effective_config"]["training"] == {"validation": {"enabled": True}}


# ----------------------------------------------------------------------------------------------------------
# Forwarded and dropped keys (§9.12)
# ----------------------------------------------------------------------------------------------------------


def test_training_lora_is_forwarded_with_warnings(dataset: Path) -> None:
    extra = '[training.lora]\nr = 8\nalpha = 16\ndropout = 0.05\ntarget_modules = ["q_proj", "v_proj"]\n'
    plan = plan_for(minimal_toml(extra=extra), dataset)
    hyperparameters = plan.payload["hyperparameters"]
    assert hyperparameters == {
        "n_epochs": 1,
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "v_proj"],
    }
    assert plan.dropped_keys == [f"training.lora.{key}" for key in ("r", "alpha", "dropout", "target_modules")]
    assert plan.warnings[0].startswith("[job].data or [job].data_path is required")
    assert plan.warnings[1:] == [
        f"training.lora.{key}: Synth's CLI drops this setting; learning-mcp forwards it as hyperparameters.{dest}. "
        "The embedded backend honours it; Synth's hosted backend may ignore it."
        for key, dest in zip(("r", "alpha", "dropout", "target_modules"), LORA_PAYLOAD_KEYS)
    ]


def test_legacy_lora_and_hyperparameter_lora_keys_are_forwarded(dataset: Path) -> None:
    legacy = plan_for(minimal_toml(extra='[lora]\nr = 4\ntarget_modules = "all-linear"\nbias = "none"\n'), dataset)
    assert legacy.payload["hyperparameters"]["lora_rank"] == 4
    assert legacy.payload["hyperparameters"]["lora_target_modules"] == "all-linear"
    assert legacy.dropped_keys == ["lora.r", "lora.target_modules", "lora.bias"]

    inline = plan_for(minimal_toml(hyperparameters="lora_rank = 16\nlora_alpha = 32\nlora_dropout = 0.05\n"), dataset)
    assert [inline.payload["hyperparameters"][k] for k in ("lora_rank", "lora_alpha", "lora_dropout")] == [16, 32, 0.05]
    assert inline.dropped_keys == ["hyperparameters.lora_rank", "hyperparameters.lora_alpha", "hyperparameters.lora_dropout"]


def test_lora_precedence_and_conflicts(dataset: Path) -> None:
    toml_text = minimal_toml(hyperparameters="lora_rank = 32\n", extra="[training.lora]\nr = 8\n[lora]\nr = 8\n")
    plan = plan_for(toml_text, dataset)
    assert plan.payload["hyperparameters"]["lora_rank"] == 8
    assert "hyperparameters.lora_rank: overridden by training.lora.r = 8; dropped." in plan.warnings
    assert set(plan.dropped_keys) == {"training.lora.r", "hyperparameters.lora_rank", "lora.r"}


def test_invalid_lora_values_name_their_source(dataset: Path) -> None:
    error = error_for(minimal_toml(extra="[training.lora]\nr = 0\n"), dataset, cwd=dataset.parent)
    assert (error.code, error.param) == ("invalid_hyperparameter", "training.lora.r")
    assert error.message == "training.lora.r (hyperparameters.lora_rank) must be an integer greater than zero"
    dropout = error_for(minimal_toml(hyperparameters="lora_dropout = 1.5\n"), dataset, cwd=dataset.parent)
    assert dropout.param == "hyperparameters.lora_dropout"


def test_step_counts_are_forwarded_as_total_steps(dataset: Path) -> None:
    plan = plan_for(minimal_toml(hyperparameters="steps = 40\ntrain_steps = 40\n"), dataset)
    assert plan.payload["hyperparameters"]["total_steps"] == 40
    assert plan.payload["hyperparameters"]["n_epochs"] == 1
    assert plan.dropped_keys == ["hyperparameters.train_steps", "hyperparameters.steps"]
    conflict = error_for(minimal_toml(hyperparameters="total_steps = 10\nsteps = 20\n"), dataset, cwd=dataset.parent)
    assert conflict.code == "invalid_hyperparameter"
    assert conflict.param == "hyperparameters.steps"
    zero = error_for(minimal_toml(hyperparameters="total_steps = 0\n"), dataset, cwd=dataset.parent)
    assert zero.message == "hyperparameters.total_steps must be an integer greater than zero"


def test_negative_weight_decay_is_refused(dataset: Path) -> None:
    error = error_for(minimal_toml(hyperparameters="weight_decay = -0.1\n"), dataset, cwd=dataset.parent)
    assert error.message == "hyperparameters.weight_decay must be a float greater than or equal to zero"


def test_dropped_sections_and_keys_are_listed_one_line_each(dataset: Path) -> None:
    toml_text = minimal_toml(
        hyperparameters="world_size = 8\nmax_grad_norm = 1.0\n",
        extra=(
            '[policy]\nmodel_name = "x"\n[tags]\nexperiment = "e"\n[model_config]\nsupports_vision = true\n'
            '[metadata]\nowner = "me"\n[compute.topology]\ntype = "single"\n'
        ),
    )
    plan = plan_for(toml_text, dataset)
    assert plan.dropped_keys == [
        "compute.topology",
        "hyperparameters.world_size",
        "hyperparameters.max_grad_norm",
        "policy",
        "tags",
        "model_config",
        "metadata",
    ]
    for key in plan.dropped_keys:
        lines = [w for w in plan.warnings if w.startswith(f"{key}:")]
        assert len(lines) == 1, key
        assert "dropped (Synth's CLI drops it too)." in lines[0]
        assert "\n" not in lines[0]
    assert "topology" not in plan.payload["metadata"]["effective_config"]["compute"]
    assert "world_size" not in plan.payload["hyperparameters"]


def test_qlora_lora_and_peft_switches_pass_through(dataset: Path) -> None:
    toml_text = minimal_toml(hyperparameters='train_kind = "peft"\n', extra='[training]\nmode = "lora"\nuse_qlora = true\n')
    toml_text = toml_text.replace('variety = "fft"', 'variety = "lora"')
    plan = plan_for(toml_text, dataset)
    assert plan.payload["hyperparameters"]["train_kind"] == "peft"
    assert plan.payload["metadata"]["effective_config"]["training"] == {"mode": "lora", "use_qlora": True}
    assert not any('variety = "lora"' in w for w in plan.warnings)
    local = plan_for(toml_text, dataset, target="local")
    assert any("plain LoRA" in w for w in local.warnings)


def test_lora_variety_without_lora_switches_warns(dataset: Path) -> None:
    plan = plan_for(minimal_toml().replace('variety = "fft"', 'variety = "lora"'), dataset)
    assert any(w.startswith('variety = "lora" but neither') for w in plan.warnings)


def test_max_images_per_message(dataset: Path) -> None:
    assert plan_for(minimal_toml(model="Qwen/Qwen3-VL-2B-Instruct"), dataset).max_images_per_message == 1
    vision_toml = minimal_toml(model="Qwen/Qwen3-VL-2B-Instruct", extra="[model_config]\nmax_images_per_message = 3\n")
    configured = plan_for(vision_toml, dataset)
    assert configured.max_images_per_message == 3
    assert plan_for(minimal_toml(), dataset).max_images_per_message is None
    error = error_for(minimal_toml(extra="[model_config]\nmax_images_per_message = 0\n"), dataset, cwd=dataset.parent)
    assert error.param == "model_config.max_images_per_message"


# ----------------------------------------------------------------------------------------------------------
# Files, loading, docs
# ----------------------------------------------------------------------------------------------------------


def test_with_files_sets_ids_without_touching_the_plan(dataset: Path) -> None:
    plan = plan_for(REFERENCE_TOML, dataset)
    final = plan.with_files("file-train", "file-val")
    assert final["training_file_id"] == "file-train"
    assert final["metadata"]["effective_config"]["data"] == {"topology": {}, "validation_files": ["file-val"]}
    assert list(final) == ["model", "hyperparameters", "training_type", "metadata", "training_file_id"]
    assert plan.payload["training_file_id"] is None
    assert "validation_files" not in plan.payload["metadata"]["effective_config"]["data"]
    assert "validation_files" not in plan.with_files("file-train", None)["metadata"]["effective_config"]["data"]
    with pytest.raises(ConfigError):
        plan.with_files("  ")


def test_file_ids_given_to_build_are_in_the_payload(tmp_path: Path) -> None:
    plan = build_sft_plan(
        minimal_toml(), training_file_id="file-1", validation_file_id="file-2", cwd=tmp_path, require_dataset_path=False
    )
    assert plan.payload["training_file_id"] == "file-1"
    assert plan.payload["metadata"]["effective_config"]["data"]["validation_files"] == ["file-2"]


def test_load_config_tells_text_from_paths(tmp_path: Path) -> None:
    (tmp_path / "cfg.toml").write_text('[job]\nmodel = "m"\n')
    (tmp_path / "plain").write_text("a = 1\n")
    assert load_config("cfg.toml", cwd=tmp_path) == ({"job": {"model": "m"}}, tmp_path / "cfg.toml")
    assert load_config(tmp_path / "cfg.toml") == ({"job": {"model": "m"}}, tmp_path / "cfg.toml")
    assert load_config("plain", cwd=tmp_path) == ({"a": 1}, tmp_path / "plain")
    assert load_config('[job]\nmodel = "m"\n', cwd=tmp_path) == ({"job": {"model": "m"}}, None)
    assert load_config("a = 1", cwd=tmp_path) == ({"a": 1}, None)
    assert load_config("[job]", cwd=tmp_path) == ({"job": {}}, None)

    for missing in ("configs/missing.toml", "missing", "dir[1]/x.toml"):
        with pytest.raises(ConfigError) as caught:
            load_config(missing, cwd=tmp_path)
        assert caught.value.code == "config_not_found", missing
        assert caught.value.param == "config"
    with pytest.raises(ConfigError) as caught:
        load_config("   ", cwd=tmp_path)
    assert caught.value.code == "config_not_found"


def test_invalid_toml_reports_line_and_column(tmp_path: Path) -> None:
    text = '[job]\nmodel = "m"\ndata = \n'
    with pytest.raises(ConfigError) as caught:
        load_config(text, cwd=tmp_path)
    error = caught.value
    assert error.code == "invalid_toml"
    assert error.details == {"line": 3, "column": 8}
    assert "line 3" in error.message
    assert "Line 3 reads: 'data ='" in error.message

    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        build_sft_plan("bad.toml", cwd=tmp_path)
    assert caught.value.code == "invalid_toml"
    assert str(tmp_path / "bad.toml") in caught.value.message


def test_mapping_config_is_not_mutated(dataset: Path) -> None:
    import tomllib

    config = tomllib.loads(minimal_toml())
    snapshot = copy.deepcopy(config)
    plan = build_sft_plan(config, dataset=dataset, model="Qwen/Qwen3-1.7B", cwd=dataset.parent)
    assert plan.model == "Qwen/Qwen3-1.7B"
    assert config == snapshot


def test_example_toml_builds_for_both_targets(dataset: Path) -> None:
    local = plan_for(EXAMPLE_TOML, dataset, target="local")
    assert local.payload["hyperparameters"]["lora_rank"] == 8
    assert local.payload["hyperparameters"]["train_kind"] == "peft"
    synth = plan_for(EXAMPLE_TOML, dataset, target="synth")
    assert synth.payload["model"] == "Qwen/Qwen3-0.6B"
    for section in ("[algorithm]", "[job]", "[compute]", "[training.lora]", "[hyperparameters]", "qlora"):
        assert section in CONFIG_SCHEMA_DOC


def test_bad_target_is_refused(dataset: Path) -> None:
    assert error_for(minimal_toml(), dataset, target="cloud", cwd=dataset.parent).code == "invalid_argument"


# ----------------------------------------------------------------------------------------------------------
# Model registry
# ----------------------------------------------------------------------------------------------------------


def test_registry_sets() -> None:
    assert len(registry.SFT_SUPPORTED_MODELS) == 36
    assert len(registry.QWEN3_VL_MODELS) == 12
    assert registry.RL_SUPPORTED_MODELS < registry.SFT_SUPPORTED_MODELS
    assert "Qwen/Qwen3-32B" not in registry.RL_SUPPORTED_MODELS
    assert registry.EXPERIMENTAL_DEFAULT_MODELS <= registry.SFT_SUPPORTED_MODELS
    assert "Qwen/Qwen3-VL-8B-Thinking" in registry.THINKING_MODELS
    assert registry.FINETUNED_PREFIXES == ("ft:", "fft:", "qft:", "rl:")


def test_registry_lookup_helpers() -> None:
    assert registry.normalize_model_id(" QWEN/qwen3-VL-2b-instruct ") == "Qwen/Qwen3-VL-2B-Instruct"
    assert registry.normalize_model_id("gpt2") is None
    assert registry.normalize_model_id(None) is None
    assert registry.base_of_finetuned("ft:qwen/qwen3-4b-instruct-2507:ftjob-22") == "Qwen/Qwen3-4B-Instruct-2507"
    assert registry.base_of_finetuned("rl:Qwen/Qwen3-4B:sft_abc123") == "Qwen/Qwen3-4B"
    assert registry.base_of_finetuned("ft:abc123:2024-09-18-034500") == "abc123"
    assert registry.base_of_finetuned("ft:/models/tiny:job_1") == "/models/tiny"
    assert registry.base_of_finetuned("ft:abc123") is None
    assert registry.base_of_finetuned("Qwen/Qwen3-4B") is None
    assert registry.is_vision_model("Qwen/Qwen3-VL-4B-Thinking")
    assert registry.is_vision_model("ft:Qwen/Qwen3-VL-4B-Instruct:job")
    assert not registry.is_vision_model("Qwen/Qwen3-4B")
    assert registry.max_images_per_message("qwen/qwen3-vl-2b-instruct") == 1
    assert registry.max_images_per_message("Qwen/Qwen3-4B") is None
    assert registry.training_modes_for_model("Qwen/Qwen3-32B") == ("sft",)
    assert registry.training_modes_for_model("Qwen/Qwen3-0.6B") == ("rl", "sft")


def test_registry_ensure_allowed_model(monkeypatch: pytest.MonkeyPatch) -> None:
    assert registry.ensure_allowed_model("qwen/qwen3-0.6b") == "Qwen/Qwen3-0.6B"
    assert registry.ensure_allowed_model("ft:Qwen/Qwen3-0.6B:job", allow_finetuned_prefixes=True) == "Qwen/Qwen3-0.6B"
    with pytest.raises(registry.ModelNotSupportedError) as caught:
        registry.ensure_allowed_model("ft:Qwen/Qwen3-0.6B:job")
    assert caught.value.code == "finetuned_model_not_allowed"
    assert str(caught.value).startswith("Model 'ft:Qwen/Qwen3-0.6B:job' is not supported. ")
    with pytest.raises(registry.ModelNotSupportedError) as caught:
        registry.ensure_allowed_model("")
    assert str(caught.value) == "Model identifier is empty"
    with pytest.raises(registry.ModelNotSupportedError) as caught:
        registry.ensure_allowed_model("Qwen/Qwen3-32B", training_mode="rl")
    assert caught.value.code == "model_training_mode"
    with pytest.raises(registry.ModelNotSupportedError) as caught:
        registry.ensure_allowed_model("Qwen/Qwen3-Coder-480B-A35B-Instruct")
    assert caught.value.code == "model_experimental"
    assert isinstance(caught.value, ValueError)
    monkeypatch.setenv("SDK_EXPERIMENTAL", "true")  # Synth accepts exactly "1"
    assert not registry.experimental_enabled()
    monkeypatch.setenv("SDK_EXPERIMENTAL", "1")
    assert registry.ensure_allowed_model("Qwen/Qwen3-Coder-480B-A35B-Instruct") == "Qwen/Qwen3-Coder-480B-A35B-Instruct"
    assert os.environ["SDK_EXPERIMENTAL"] == "1"
