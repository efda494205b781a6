"""``preview_dataset`` as an MCP tool (both protocol eras) and as ``POST /api/learning/datasets/preview`` on the real
embedded backend: text data through a Hub model's real chat template (Qwen2.5's, tool calls with JSON-string
arguments) and image data through the tiny vision-language model's processor (issue 8)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from chat_families import FAMILIES, TOOLS, tool_conversation
from conftest import write_jsonl
from test_mcp_server import connect, mode, server  # noqa: F401 (fixtures)
from test_vision import colour_rows, tiny_vl_model  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def qwen25_model(tmp_path_factory) -> Path:
    from learning_mcp.backend.tiny import build_tiny_model

    family = FAMILIES["qwen2_5"]
    return build_tiny_model(tmp_path_factory.mktemp("preview-tool") / "qwen2_5", chat_template=family.text(),
                            special_tokens=family.specials, bos_token=family.bos, eos_token=family.eos)


def tool_rows(n: int) -> list[dict]:
    return [{"messages": tool_conversation(json.dumps({"place": f"town {i}"})), "tools": TOOLS} for i in range(n)]


@pytest.mark.anyio
async def test_preview_tool_shows_tool_call_arguments_as_an_object(server, qwen25_model, tmp_path, mode,
                                                                   anyio_backend):
    path = write_jsonl(tmp_path / "tools.jsonl", tool_rows(4))
    async with connect(server, mode) as s:
        out = await s.ok("preview_dataset", {"path": str(path), "model": str(qwen25_model), "examples": 1})
    first = out["examples"][0]
    assert first["trained_text"][0] == ('<tool_call>\n{"name": "get_forecast", "arguments": {"place": "town 0"}}\n'
                                        "</tool_call><|im_end|>")
    assert '\\"place\\"' not in first["rendered_text"]  # never a double-encoded string
    assert "USERWORDS" not in "".join(first["trained_text"]) and "TOOLWORDS" not in "".join(first["trained_text"])
    totals = out["totals"]
    assert totals["records"] == 4 and totals["complete"] and totals["truncated"] == totals["dropped"] == 0
    assert 0 < totals["trained_tokens"] < totals["tokens"] and totals["span_methods"] == {"prefix-diff": 4}


@pytest.mark.anyio
async def test_preview_tool_uses_the_config_and_reports_truncation(server, qwen25_model, tmp_path, mode,
                                                                   anyio_backend):
    path = write_jsonl(tmp_path / "tools.jsonl", tool_rows(3))
    config = (f'[algorithm]\ntype = "offline"\nmethod = "sft"\nvariety = "fft"\n\n[job]\nmodel = "{qwen25_model}"\n\n'
              "[hyperparameters]\nn_epochs = 1\nsequence_length = 16\n")
    async with connect(server, mode) as s:
        out = await s.ok("preview_dataset", {"path": str(path), "config": config, "examples": 0})
        assert out["sequence_length"] == 16 and out["model"] == str(qwen25_model)
        assert out["totals"]["truncated"] == 3 and any("truncated" in w for w in out["warnings"])
        await s.fails("preview_dataset", {"path": str(tmp_path / "missing.jsonl"), "model": str(qwen25_model)},
                      "file_not_found", "missing.jsonl")
        await s.fails("preview_dataset", {"path": str(path), "model": str(tmp_path / "no-such-model")},
                      "model_not_loadable")
        await s.fails("preview_dataset", {"path": str(path)}, "missing_model", "config")


@pytest.mark.anyio
async def test_preview_tool_on_image_data_uses_the_vision_processor(server, tiny_vl_model, tmp_path, mode,
                                                                    anyio_backend):
    path = write_jsonl(tmp_path / "colours.jsonl", colour_rows(4))
    async with connect(server, mode) as s:
        out = await s.ok("preview_dataset", {"path": str(path), "model": str(tiny_vl_model), "examples": 2})
    first = out["examples"][0]
    assert first["span_method"] == "vision-processor" and first["trained_text"], first
    assert "red" in "".join(first["trained_text"]) and "Which colour?" not in "".join(first["trained_text"])
    assert first["tokens"] > first["trained_tokens"] > 0 and out["totals"]["records"] == 4


@pytest.mark.anyio
async def test_preview_tool_refuses_images_on_a_text_model(server, tiny_model, tmp_path, mode, anyio_backend):
    path = write_jsonl(tmp_path / "colours.jsonl", colour_rows(2))
    async with connect(server, mode) as s:
        await s.fails("preview_dataset", {"path": str(path), "model": str(tiny_model)}, "images_unsupported")


def test_preview_route_by_file_id_and_errors(backend, qwen25_model, tmp_path):
    path = write_jsonl(tmp_path / "tools.jsonl", tool_rows(2))
    with open(path, "rb") as fh:
        file_id = httpx.post(f"{backend.api}/learning/files", files={"file": (path.name, fh, "application/jsonl")},
                             data={"purpose": "fine-tune"}, timeout=30).json()["id"]
    url = f"{backend.api}/learning/datasets/preview"
    out = httpx.post(url, json={"file_id": file_id, "model": str(qwen25_model), "examples": 1}, timeout=60).json()
    assert out["totals"]["records"] == 2 and out["examples"][0]["trained_text"]
    both = httpx.post(url, json={"file_id": file_id, "path": str(path), "model": str(qwen25_model)}, timeout=30)
    assert both.status_code == 400 and both.json()["error"]["param"] == "path"
    unknown = httpx.post(url, json={"file_id": "file-nope", "model": str(qwen25_model)}, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "file_not_found"
    assert "/api/learning/datasets/preview" in httpx.get(f"{backend.url}/openapi.json", timeout=30).json()["paths"]


@pytest.mark.anyio
async def test_assistant_only_loss_false_in_the_toml_reaches_the_rendering(server, qwen25_model, tmp_path,
                                                                          anyio_backend):
    path = write_jsonl(tmp_path / "tools.jsonl", tool_rows(2))
    config = (f'[algorithm]\ntype = "offline"\nmethod = "sft"\nvariety = "fft"\n\n[job]\nmodel = "{qwen25_model}"\n\n'
              "[hyperparameters]\nn_epochs = 1\nassistant_only_loss = false\n")
    async with connect(server, "auto") as s:
        out = await s.ok("preview_dataset", {"path": str(path), "config": config, "examples": 1})
        assert out["assistant_only_loss"] is False and "USERWORDS" in "".join(out["examples"][0]["trained_text"])
        assert any("assistant_only_loss" in w for w in out["warnings"])
        await s.fails("create_job", {"config": config.replace("= false", '= "no"'), "dataset": str(path),
                                     "dry_run": True}, "config_invalid_config", "assistant_only_loss")


def test_contract_refuses_a_non_boolean_assistant_only_loss(backend, qwen25_model):
    body = {"model": str(qwen25_model), "training_type": "sft_offline", "training_file_id": "file-x",
            "hyperparameters": {"n_epochs": 1, "assistant_only_loss": "no"}}
    response = httpx.post(f"{backend.api}/learning/jobs", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "hyperparameters.assistant_only_loss"
