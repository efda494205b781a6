"""LoRA (issue 8 item 4): applied whenever one of Synth's LoRA signals says so (``variety = "lora"`` alone
included), and every ``target_modules`` entry must match a module of the model — checked offline from the
config by ``create_job`` (dry run included), by the backend at job creation and by the worker."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from conftest import arithmetic_rows, job_history, upload_ready, write_jsonl
from test_mcp_server import connect, mode, poll_to_terminal, server  # noqa: F401 (fixtures)

CASES = Path("/work/shared/cases")
TINY_PLACEHOLDER = "PATH-TO-A-TINY-MODEL"

VARIETY_ONLY = """[algorithm]
type = "offline"
method = "sft"
variety = "lora"

[job]
model = "PATH-TO-A-TINY-MODEL"

[training.lora]
r = 8
alpha = 16
dropout = 0.05

[hyperparameters]
n_epochs = 1
per_device_batch = 4
learning_rate = 1e-3
"""

TARGET_TYPO = """[algorithm]
type = "offline"
method = "sft"
variety = "lora"

[job]
model = "PATH-TO-A-TINY-MODEL"

[training]
mode = "lora"

[training.lora]
r = 8
alpha = 16
target_modules = ["q_proj", "k_prj"]

[hyperparameters]
n_epochs = 1
train_kind = "peft"
per_device_batch = 4
learning_rate = 1e-3
"""


def case(name: str, fallback: str, model: Path) -> str:
    """The shared case (``/work/shared/cases/<name>.toml``) when present, else the same text kept here."""
    path = CASES / f"{name}.toml"
    text = path.read_text() if path.is_file() else fallback
    return text.replace(TINY_PLACEHOLDER, str(model))


# --------------------------------------------------------------------------------------------------
# signals
# --------------------------------------------------------------------------------------------------


def test_variety_lora_alone_selects_lora(tiny_model, tmp_path):
    from learning_mcp.backend.trainer import select_strategy
    from learning_mcp.tools.sft_config import ConfigError, build_sft_plan

    dataset = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(4))
    for target in ("local", "synth"):
        model = str(tiny_model) if target == "local" else "Qwen/Qwen3-0.6B"
        config = case("lora_variety_only", VARIETY_ONLY, Path(model))
        if target == "synth":
            config += '\n[compute]\ngpu_type = "H100"\ngpu_count = 1\n'
        plan = build_sft_plan(config, dataset=str(dataset), target=target, cwd=tmp_path)
        hyperparameters = plan.payload["hyperparameters"]
        assert hyperparameters["train_kind"] == "peft" and hyperparameters["lora_rank"] == 8
        assert select_strategy(hyperparameters, plan.payload["metadata"]["effective_config"]) == ("lora", False)
        assert any('sends train_kind = "peft"' in w for w in plan.warnings)
    # an explicit full fine-tune contradicts variety = "lora": an error naming the key, not a silent choice
    contradicting = VARIETY_ONLY.replace("n_epochs = 1", 'n_epochs = 1\ntrain_kind = "fft"').replace(
        TINY_PLACEHOLDER, str(tiny_model))
    with pytest.raises(ConfigError) as caught:
        build_sft_plan(contradicting, dataset=str(dataset), target="local", cwd=tmp_path)
    assert caught.value.param == "hyperparameters.train_kind" and 'variety = "lora"' in caught.value.message
    # variety = "fft" with no LoRA switch stays a full fine-tune
    fft = build_sft_plan(VARIETY_ONLY.replace('variety = "lora"', 'variety = "fft"').replace(
        TINY_PLACEHOLDER, str(tiny_model)), dataset=str(dataset), target="local", cwd=tmp_path)
    assert "train_kind" not in fft.payload["hyperparameters"]
    assert select_strategy(fft.payload["hyperparameters"], fft.payload["metadata"]["effective_config"])[0] == "full"


# --------------------------------------------------------------------------------------------------
# target modules
# --------------------------------------------------------------------------------------------------


def test_module_inventory_and_target_check(tiny_model, tmp_path):
    from learning_mcp.backend.lora import TargetModulesError, check_target_modules, module_inventory

    inventory = module_inventory(str(tiny_model), tmp_path)
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(inventory.linear)
    assert "model.layers.0.self_attn.q_proj" in inventory.names and not inventory.vision
    for fine in (["q_proj", "v_proj"], "q_proj, v_proj", ["self_attn.q_proj"], "all-linear", None,
                 ["model.layers.1.mlp.up_proj"]):
        check_target_modules(fine, inventory)
    with pytest.raises(TargetModulesError) as caught:
        check_target_modules(["q_proj", "k_prj", "mm_projector"], inventory, model="tiny")
    assert caught.value.unmatched == ["k_prj", "mm_projector"]
    assert "'k_prj', 'mm_projector'" in caught.value.message and "k_proj" in caught.value.message
    with pytest.raises(TargetModulesError):
        check_target_modules(["proj"], inventory)  # a suffix must end at a dot: PEFT's rule, not substring


@pytest.mark.anyio
async def test_create_job_refuses_a_target_module_typo(server, backend, tiny_model, tmp_path, mode, anyio_backend):
    dataset = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(8))
    config = case("lora_target_module_typo", TARGET_TYPO, tiny_model)
    async with connect(server, mode) as s:
        await s.fails("create_job", {"config": config, "dataset": str(dataset), "dry_run": True},
                      "lora_target_modules_invalid", "'k_prj'", "q_proj", "k_proj", "down_proj", "all-linear")


def test_backend_refuses_a_target_module_typo_at_job_creation(backend, tiny_model, tmp_path):
    dataset = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(8, seed=5))
    file_id = upload_ready(backend.api, dataset)
    payload = {"model": str(tiny_model), "training_file_id": file_id, "training_type": "sft_offline",
               "hyperparameters": {"n_epochs": 1, "train_kind": "peft", "lora_target_modules": ["q_proj", "k_prj"]}}
    response = httpx.post(f"{backend.api}/learning/jobs", json=payload, timeout=90)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "lora_target_modules_invalid"
    assert error["param"] == "hyperparameters.lora_target_modules" and "'k_prj'" in error["message"]
    # a full fine-tune does not use target modules: nothing to refuse
    full = {**payload, "hyperparameters": {**payload["hyperparameters"], "train_kind": "fft"}}
    created = httpx.post(f"{backend.api}/learning/jobs", json=full, timeout=90)
    assert created.status_code == 200, created.text
    httpx.post(f"{backend.api}/learning/jobs/{created.json()['id']}/cancel", timeout=10)


def test_worker_refuses_a_target_module_typo(tiny_model, tmp_path):
    from conftest_ml import make_request, refused_before_training

    error = refused_before_training(make_request(
        job_id="typo", model=tiny_model, models_dir=tmp_path / "models",
        train_path=write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(4)),
        hyperparameters={"n_epochs": 1, "train_kind": "peft", "lora_target_modules": ["q_proj", "k_prj"]}))
    assert error.code == "lora_target_modules_invalid" and "'k_prj'" in error.message


# --------------------------------------------------------------------------------------------------
# a real job: variety = "lora" alone trains a LoRA adapter
# --------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_variety_only_job_trains_a_lora_adapter(server, backend, tiny_model, tmp_path, anyio_backend):
    dataset = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(16, seed=3))
    async with connect(server, "auto") as s:
        created = await s.ok("create_job", {"config": case("lora_variety_only", VARIETY_ONLY, tiny_model),
                                            "dataset": str(dataset)})
        assert created["payload"]["hyperparameters"]["train_kind"] == "peft"
        final, events = await poll_to_terminal(s, created["job_id"])
    assert final["status"] == "succeeded", final
    history = job_history(backend.api, created["job_id"])
    strategy = next(e for e in history if e["type"] == "sft.strategy.selected")
    assert strategy["data"]["strategy"] == "lora"
    finish = next(e for e in history if e["type"] == "sft.training.finish")["data"]
    model_dir = Path(finish["output_dir"])
    adapter = json.loads((model_dir / "adapter_config.json").read_text())  # a PEFT adapter, not full weights
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 8 and adapter["lora_alpha"] == 16
    assert not (model_dir / "model.safetensors").exists()
    manifest = json.loads((model_dir / "learning_mcp_model.json").read_text())
    assert manifest["kind"] == "lora" and manifest["base_model"] == str(tiny_model)
