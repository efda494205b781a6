"""export_model: a full and a LoRA job trained by the real backend, exported, loaded with transformers / PEFT, and
generating the same greedy text as the backend's chat completions for a fixed prompt."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from conftest import arithmetic_rows, upload_ready, wait_job, write_jsonl

PROMPT = [{"role": "user", "content": "3+4=?"}]
MAX_TOKENS = 6


def _train(backend, tiny_model: Path, dataset: Path, **hyperparameters) -> str:
    file_id = upload_ready(backend.api, dataset)
    lora = hyperparameters.get("train_kind") == "peft"
    payload = {"model": str(tiny_model), "training_type": "sft_offline", "training_file_id": file_id,
               "hyperparameters": {"n_epochs": 1, "total_steps": 30, "per_device_batch": 8, **hyperparameters},
               "metadata": {"effective_config": {"training": {"mode": "lora" if lora else "sft_offline"}}}}
    job = httpx.post(f"{backend.api}/learning/jobs", json=payload, timeout=30).json()
    httpx.post(f"{backend.api}/learning/jobs/{job['id']}/start", timeout=30)
    done = wait_job(backend.api, job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    return done["fine_tuned_model"]


@pytest.fixture(scope="module")
def trained(backend, tiny_model, tmp_path_factory) -> dict[str, str]:
    dataset = write_jsonl(tmp_path_factory.mktemp("export-data") / "train.jsonl", arithmetic_rows(48, seed=3))
    return {
        "full": _train(backend, tiny_model, dataset, learning_rate=2e-2),
        "lora": _train(backend, tiny_model, dataset, learning_rate=3e-2, train_kind="peft", lora_rank=8,
                       lora_alpha=16, lora_dropout=0.0),
    }


def backend_text(backend, model: str) -> str:
    body = httpx.post(f"{backend.api}/inference/v1/chat/completions", timeout=120, json={
        "model": model, "messages": PROMPT, "temperature": 0, "max_tokens": MAX_TOKENS}).json()
    return body["choices"][0]["message"]["content"]


def hf_text(model, tokenizer) -> str:
    """Greedy text the way a transformers user would get it: chat template, generate, stop at EOS, decode."""
    import torch

    inputs = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    end = next((i for i, token in enumerate(new) if token in eos), len(new))
    return tokenizer.decode(new[:end], skip_special_tokens=True)


def export(backend, model: str, path: Path, merge_lora: bool = True):
    from learning_mcp.backend.export import export_model

    return export_model(model, path, merge_lora, models_dir=backend.data_dir / "models")


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_merged_export_loads_with_transformers_and_matches_backend(backend, trained, tmp_path, kind):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export(backend, trained[kind], tmp_path / "out")
    assert result.format == "merged" and result.source_kind == kind and result.chat_template
    names = set(result.files)
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "generation_config.json"} <= names, names
    assert "chat_template.jinja" in names or "chat_template" in (tmp_path / "out" / "tokenizer_config.json").read_text()
    assert not any(name.startswith("adapter_") or name == "learning_mcp_model.json" for name in names), names
    assert result.bytes == sum((tmp_path / "out" / n).stat().st_size for n in names)

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out", local_files_only=True)
    expected = backend_text(backend, trained[kind])
    assert hf_text(model, tokenizer) == expected
    assert expected  # the fixed prompt produces text at all


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft 0.21 on transformers 5
def test_adapter_export_loads_with_peft_and_matches_backend(backend, trained, tiny_model, tmp_path):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export(backend, trained["lora"], tmp_path / "adapter", merge_lora=False)
    assert result.format == "peft_adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= set(result.files)
    assert "model.safetensors" not in result.files
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == Path(tiny_model).resolve()
    assert result.base_model == config["base_model_name_or_path"]

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "adapter", local_files_only=True)
    expected = backend_text(backend, trained["lora"])
    # PEFT's one-liner, which reads base_model_name_or_path
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter", local_files_only=True).eval()
    assert hf_text(auto, tokenizer) == expected
    # and the explicit form, base + adapter
    base = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    explicit = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert hf_text(explicit, tokenizer) == expected


def test_base_model_and_adapter_flag_on_a_full_model_export_weights(backend, trained, tiny_model, tmp_path):
    from safetensors.torch import load_file

    base = export(backend, str(tiny_model), tmp_path / "base")
    assert base.source_kind == "base" and base.format == "merged"
    # merge_lora=False means nothing for a full fine-tune: it has no adapter
    full = export(backend, trained["full"], tmp_path / "full", merge_lora=False)
    assert full.format == "merged" and full.source_kind == "full"
    base_w, full_w = load_file(tmp_path / "base" / "model.safetensors"), load_file(tmp_path / "full" / "model.safetensors")
    assert base_w.keys() == full_w.keys()
    assert any(not base_w[k].equal(full_w[k]) for k in base_w), "the fine-tuned weights equal the base's"


def test_refuses_to_overwrite_and_leaves_no_temp_folder(backend, trained, tmp_path):
    from learning_mcp.backend.export import ExportError

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(ExportError) as info:
        export(backend, trained["full"], occupied)
    assert info.value.code == "export_target_not_empty" and info.value.param == "path"
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()  # an empty directory is fine
    assert export(backend, trained["full"], empty).path == str(empty)

    with pytest.raises(ExportError) as info:
        export(backend, "ft:nothing:ftjob-missing", tmp_path / "missing")
    assert info.value.code == "model_not_found" and info.value.param == "model"
    with pytest.raises(ExportError) as info:
        export(backend, trained["full"], tmp_path / "no" / "such" / "parent")
    assert info.value.code == "export_parent_missing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "occupied"]  # no .export-* leftovers


def test_export_route_over_http(backend, trained, tmp_path):
    from urllib.parse import quote

    def post(model: str, **body):
        return httpx.post(f"{backend.api}/learning/models/{quote(model, safe='')}/export", json=body, timeout=120)

    ok = post(trained["lora"], path=str(tmp_path / "adapter"), merge_lora=False)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["format"] == "peft_adapter" and body["path"] == str(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == sorted(body["files"])

    again = post(trained["lora"], path=str(tmp_path / "adapter"))
    assert again.status_code == 400 and again.json()["error"]["code"] == "export_target_not_empty"
    relative = post(trained["full"], path="relative/folder")
    assert relative.status_code == 400 and relative.json()["error"] == {
        "code": "invalid_path", "param": "path", "message": relative.json()["detail"]}
    missing = post("ft:nothing:ftjob-missing", path=str(tmp_path / "x"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert post(trained["full"]).status_code == 422  # path is required
