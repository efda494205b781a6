"""One SFT contract (``tools/sft_contract.py``): every rule the trainer needs is refused, with the field named, by
the config builder (what ``create_job`` runs, dry run included), by ``POST /api/learning/jobs`` on a real backend,
and by the trainer's own config mapping — never first inside the training worker.

Also: the backend's settings come from one ``Settings`` object (an env file reaches the upload limit and the
worker's environment), and the contract keeps forwarded keys it does not know.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import anyio
import httpx
import pytest

from conftest import arithmetic_rows, free_port, stop_process_tree, write_jsonl
from learning_mcp.backend.trainer import TrainingError, build_lora_config, build_sft_config, select_strategy
from learning_mcp.tools.errors import LearningMCPError, ToolFailure
from learning_mcp.tools.sft_config import ConfigError, build_sft_plan
from learning_mcp.tools.sft_contract import (
    LR_SCHEDULERS,
    MIN_SEQUENCE_LENGTH,
    ContractError,
    parse_hyperparameters,
    parse_job_payload,
)

# Every value the trainer cannot run: (hyperparameter, value, words the error must contain).
TRAINER_RULES = [
    ("sequence_length", 4, f"at least {MIN_SEQUENCE_LENGTH}"),
    ("sequence_length", 0, "integer greater than zero"),
    ("max_length", 7, f"at least {MIN_SEQUENCE_LENGTH}"),
    ("lora_dropout", 1.0, "[0, 1)"),
    ("lora_dropout", -0.1, "[0, 1)"),
    ("lora_alpha", 0, "greater than zero"),
    ("lora_rank", 0, "integer greater than zero"),
    ("lora_r", -2, "integer greater than zero"),
    ("lora_target_modules", [], "module names"),
    ("learning_rate", 0, "greater than zero"),
    ("learning_rate", "fast", "greater than zero"),
    ("warmup_ratio", 1.5, "between 0 and 1"),
    ("warmup_steps", -1, "integer >= 0"),
    ("weight_decay", -0.5, ">= 0"),
    ("max_grad_norm", -1.0, ">= 0"),
    ("eval_steps", -3, "integer >= 0"),
    ("evaluation_strategy", "sometimes", "one of no, steps, epoch"),
    ("lr_scheduler_type", "warmup_then_magic", "one of linear"),
    ("lr_scheduler", 3, "one of linear"),
    ("seed", -1, "from 0 to"),
    ("seed", 2**40, "from 0 to"),
    ("per_device_batch", 0, "integer greater than zero"),
    ("per_device_batch", True, "integer greater than zero"),
    ("gradient_accumulation_steps", 2.5, "integer greater than zero"),
    ("global_batch", -8, "integer greater than zero"),
    ("batch_size", "8", "integer greater than zero"),
    ("total_steps", 0, "integer greater than zero"),
    ("max_steps", 0, "integer greater than zero"),
    ("n_epochs", 0.5, "integer greater than zero"),
    ("train_kind", 5, "must be a string"),
    ("parallelism", "fsdp", "must be an object"),
]
RULE_IDS = [f"{key}={value!r}" for key, value, _ in TRAINER_RULES]


def hyperparameters_with(key: str, value) -> dict:
    hp = {"n_epochs": 1, key: value}
    if key == "n_epochs":
        hp = {"total_steps": 2, key: value}
    return hp


# --------------------------------------------------------------------------------------------------------------
# the contract itself, and the trainer's mapping that reads it
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value, needle", TRAINER_RULES, ids=RULE_IDS)
def test_contract_refuses_what_the_trainer_cannot_run(key, value, needle):
    with pytest.raises(ContractError) as info:
        parse_hyperparameters(hyperparameters_with(key, value))
    assert info.value.param == f"hyperparameters.{key}" and needle in info.value.message
    assert isinstance(info.value, LearningMCPError) and info.value.status == 400
    assert "Value error" not in info.value.message


@pytest.mark.parametrize("key, value, needle", TRAINER_RULES, ids=RULE_IDS)
def test_trainer_mapping_refuses_the_same_values(key, value, needle):
    with pytest.raises(TrainingError) as info:
        build_sft_config(hyperparameters_with(key, value), 10, "cpu")
        build_lora_config(hyperparameters_with(key, value))
    assert info.value.code == "invalid_hyperparameters" and info.value.param == f"hyperparameters.{key}"
    assert needle in info.value.message


def test_contract_accepts_the_trainers_range_and_keeps_forwarded_keys():
    hp = parse_hyperparameters({"n_epochs": 1, "sequence_length": MIN_SEQUENCE_LENGTH, "lora_dropout": 0.0,
                                "warmup_ratio": 1, "lr_scheduler_type": "Cosine", "evaluation_strategy": "EPOCH",
                                "seed": 0, "lora_target_modules": "q_proj, v_proj", "use_qlora": True,
                                "save_best_model_at_end": True})
    assert hp.lr_scheduler_type == "cosine" and hp.evaluation_strategy == "epoch"
    assert hp.extra("use_qlora") is True and hp.extra("save_best_model_at_end") is True
    config = build_sft_config(hp, 10, "cpu")
    assert config["lr_scheduler_type"] == "cosine" and config["max_length"] == MIN_SEQUENCE_LENGTH
    assert select_strategy({"use_qlora": True}, {}) == ("lora", True)


def test_lr_schedulers_exist_in_the_installed_transformers():
    from transformers import SchedulerType

    assert set(LR_SCHEDULERS) <= {member.value for member in SchedulerType}


@pytest.mark.parametrize("body, param, status", [
    ([1, 2], None, 422),
    ({"training_file_id": "f"}, "model", 400),
    ({"model": "m"}, "training_file_id", 400),
    ({"model": "m", "training_file": "f", "training_type": "rl"}, "training_type", 400),
    ({"model": "m", "training_file": "f", "metadata": {"effective_config": {"training": ["lora"]}}},
     "metadata.effective_config.training", 400),
    ({"model": "m", "training_file": "f", "metadata": {"effective_config": {"training": {"validation": 1}}}},
     "metadata.effective_config.training.validation", 400),
    ({"model": "m", "training_file": "f", "metadata": {"effective_config": {"data": {"validation_files": [3]}}}},
     "metadata.effective_config.data.validation_files", 400),
    ({"model": "m", "training_file": "f", "hyperparameters": {"batch_size": 2}}, "hyperparameters", 400),
])
def test_payload_errors_name_the_field(body, param, status):
    with pytest.raises(ContractError) as info:
        parse_job_payload(body)
    assert info.value.param == param and info.value.status == status


def test_payload_aliases_and_the_body_as_received():
    body = {"model": " tiny ", "training_file": "file-1", "validation_file": "file-2", "extra": {"kept": True},
            "hyperparameters": {"n_epochs": 2, "custom_flag": "x"}}
    spec = parse_job_payload(body)
    assert (spec.model, spec.training_file_id, spec.validation_file_id) == ("tiny", "file-1", "file-2")
    assert spec.body == body and spec.body is not body
    assert spec.hyperparameters.extra("custom_flag") == "x"
    from_metadata = parse_job_payload({"model": "m", "training_file_id": "f", "metadata": {
        "effective_config": {"data": {"validation_files": ["file-v"]}}}})
    assert from_metadata.validation_file_id == "file-v"


# --------------------------------------------------------------------------------------------------------------
# the config builder (what create_job runs; dry run included)
# --------------------------------------------------------------------------------------------------------------

BASE_TOML = """\
[algorithm]
type = "offline"
method = "sft"
variety = "lora"

[job]
model = "Qwen/Qwen3-0.6B"

[training]
mode = "lora"
{training}

[hyperparameters]
n_epochs = 1
train_kind = "peft"
{hyperparameters}
"""

# (TOML fragment, section, the param the builder names)
BUILDER_RULES = [
    ("sequence_length = 4", "hyperparameters", "hyperparameters.sequence_length"),
    ("sequence_length = 0", "hyperparameters", "hyperparameters.sequence_length"),
    ("learning_rate = 0.0", "hyperparameters", "hyperparameters.learning_rate"),
    ("warmup_ratio = 1.5", "hyperparameters", "hyperparameters.warmup_ratio"),
    ("weight_decay = -1.0", "hyperparameters", "hyperparameters.weight_decay"),
    ("per_device_batch = 0", "hyperparameters", "hyperparameters.per_device_batch"),
    ("total_steps = 0", "hyperparameters", "hyperparameters.total_steps"),
    ("lora_dropout = 1.0", "hyperparameters", "hyperparameters.lora_dropout"),
    ("lora_alpha = 0", "hyperparameters", "hyperparameters.lora_alpha"),
    ("lora_rank = 0", "hyperparameters", "hyperparameters.lora_rank"),
    ("[training.lora]\ndropout = 1.0", "training", "training.lora.dropout"),
    ("[training.lora]\ntarget_modules = []", "training", "training.lora.target_modules"),
    ("[training.validation]\nevaluation_strategy = \"sometimes\"", "training",
     "training.validation.evaluation_strategy"),
    ("[training.validation]\neval_steps = -1", "training", "training.validation.eval_steps"),
]


def toml_with(fragment: str, section: str) -> str:
    return BASE_TOML.format(training=fragment if section == "training" else "",
                            hyperparameters=fragment if section == "hyperparameters" else "")


@pytest.mark.parametrize("fragment, section, param", BUILDER_RULES, ids=[r[0] for r in BUILDER_RULES])
@pytest.mark.parametrize("target", ["local", "synth"])
def test_config_builder_refuses_trainer_rules(fragment, section, param, target):
    toml = toml_with(fragment, section) + ("\n[compute]\ngpu_type = \"H100\"\ngpu_count = 1\n" if target == "synth" else "")
    with pytest.raises(ConfigError) as info:
        build_sft_plan(toml, target=target, require_dataset_path=False)
    assert info.value.code == "invalid_hyperparameter" and info.value.param == param
    assert isinstance(info.value, LearningMCPError)


@pytest.mark.parametrize("key, value", [("max_grad_norm", "-1.0"), ("seed", "-1"), ("warmup_steps", "-1"),
                                        ("lr_scheduler_type", '"magic"'), ("max_length", "4")])
def test_config_builder_never_sends_what_it_does_not_check(key, value):
    """Keys the builder drops (as Synth's CLI does) cannot reach the trainer through create_job."""
    plan = build_sft_plan(toml_with(f"{key} = {value}", "hyperparameters"), target="local",
                          require_dataset_path=False)
    assert key not in plan.payload["hyperparameters"] and f"hyperparameters.{key}" in plan.dropped_keys


def test_create_job_dry_run_refuses_trainer_rules(backend, tmp_path):
    """``create_job_from_config(dry_run=True)`` — what the create_job tool calls — against the real backend."""
    from learning_mcp.tools.client import LearningClient
    from learning_mcp.tools.jobs import create_job_from_config
    from learning_mcp.tools.settings import Target, ensure_api_base

    dataset = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(4))

    async def dry_run(fragment: str, section: str):
        async with LearningClient(Target(ensure_api_base(backend.url), "local")) as client:
            return await create_job_from_config(client, toml_with(fragment, section), dataset=str(dataset),
                                                dry_run=True)

    ok = anyio.run(dry_run, "sequence_length = 64", "hyperparameters")
    assert ok.dry_run and ok.payload["hyperparameters"]["sequence_length"] == 64
    for fragment, section, param in (("sequence_length = 4", "hyperparameters", "hyperparameters.sequence_length"),
                                     ("[training.lora]\ndropout = 1.0", "training", "training.lora.dropout"),
                                     ("lora_dropout = 1.0", "hyperparameters", "hyperparameters.lora_dropout")):
        with pytest.raises(ToolFailure) as info:
            anyio.run(dry_run, fragment, section)
        assert info.value.code == "config_invalid_hyperparameter" and param in info.value.message


# --------------------------------------------------------------------------------------------------------------
# POST /api/learning/jobs on a real backend
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ready_file_id(backend, tmp_path_factory) -> str:
    from conftest import wait_file_ready

    path = write_jsonl(tmp_path_factory.mktemp("contract") / "train.jsonl", arithmetic_rows(8, seed=21))
    with open(path, "rb") as fh:
        record = httpx.post(f"{backend.api}/learning/files", files={"file": (path.name, fh)},
                            data={"purpose": "fine-tune"}, timeout=30).json()
    return wait_file_ready(backend.api, record["id"])["id"]


@pytest.mark.parametrize("key, value, needle", TRAINER_RULES, ids=RULE_IDS)
def test_backend_refuses_trainer_rules_at_create(backend, tiny_model, ready_file_id, key, value, needle):
    payload = {"model": str(tiny_model), "training_type": "sft_offline", "training_file_id": ready_file_id,
               "hyperparameters": hyperparameters_with(key, value)}
    r = httpx.post(f"{backend.api}/learning/jobs", json=payload, timeout=30)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"]["param"] == f"hyperparameters.{key}" and needle in body["detail"]
    assert body["error"]["code"] == "invalid_request" and body["detail"] == body["error"]["message"]


def test_backend_refuses_effective_config_the_trainer_cannot_read(backend, tiny_model, ready_file_id):
    for v1 in ("", "/v1"):
        payload = {"model": str(tiny_model), "training_file_id": ready_file_id, "hyperparameters": {"n_epochs": 1},
                   "metadata": {"effective_config": {"training": "lora"}}}
        r = httpx.post(f"{backend.url}/api{v1}/learning/jobs", json=payload, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "metadata.effective_config.training"


# --------------------------------------------------------------------------------------------------------------
# one settings object
# --------------------------------------------------------------------------------------------------------------


def test_env_file_reaches_the_backend_upload_limit_and_worker_environment(tmp_path):
    """A variable set only in an env file (not in the environment) reaches the backend's settings."""
    env_file = tmp_path / "backend.env"
    env_file.write_text("LEARNING_MCP_MAX_UPLOAD_BYTES=300\nLEARNING_MCP_TORCH_THREADS=1\n")
    from learning_mcp.backend.state import worker_environment
    from learning_mcp.tools.settings import Settings

    settings = Settings.load([str(env_file)], environ={"PATH": "/usr/bin"})
    assert settings.max_upload_bytes == 300
    assert worker_environment(settings) == {"PATH": "/usr/bin", "LEARNING_MCP_MAX_UPLOAD_BYTES": "300",
                                            "LEARNING_MCP_TORCH_THREADS": "1"}

    port, data_dir = free_port(), tmp_path / "data"
    script = textwrap.dedent(f"""
        from learning_mcp.backend.launcher import serve
        raise SystemExit(serve(port={port}, data_dir={str(data_dir)!r}, env_files=[{str(env_file)!r}]))
    """)
    log = open(tmp_path / "serve.log", "ab")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "backend did not start"
            time.sleep(0.2)
        r = httpx.post(f"{url}/files", files={"file": ("big.jsonl", b"x" * 400)}, data={"purpose": "fine-tune"})
        assert r.status_code == 413 and "limit of 300 bytes" in r.json()["detail"]
    finally:
        stop_process_tree(proc)
        log.close()


def test_bad_setting_stops_the_backend_with_a_clear_message(tmp_path):
    env_file = tmp_path / "bad.env"
    env_file.write_text("LEARNING_MCP_MAX_CONCURRENT_JOBS=many\n")
    script = ("from learning_mcp.backend.launcher import serve\n"
              f"raise SystemExit(serve(port={free_port()}, data_dir={str(tmp_path / 'd')!r}, "
              f"env_files=[{str(env_file)!r}]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "max_concurrent_jobs" in done.stderr.lower(), done.stderr
