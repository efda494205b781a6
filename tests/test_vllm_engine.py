"""The vLLM engine's pure parts (backend/vllm_engine.py), tested without vLLM: which engine serves, how a request
body becomes ``vllm.SamplingParams`` arguments, how a finished ``RequestOutput`` becomes an OpenAI answer, how a
model id maps to what vLLM loads. The engine class itself needs vLLM and a CUDA GPU and is not executed here.
Also: this machine (no GPU) falls back to transformers, and ``LEARNING_MCP_INFERENCE_ENGINE=vllm`` refuses to
start the backend; the loop's adapter-loading preflight and URL rule (tools/lora_serving.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from learning_mcp.backend.inference import InferenceError, parse_chat_request
from learning_mcp.backend.modelref import ResolvedModel
from learning_mcp.backend.state import Backend
from learning_mcp.backend.vllm_engine import (EngineUnavailableError, completion_from_output, has_non_text_parts,
                                              probe_vllm, sampling_kwargs, select_engine, vllm_target)
from learning_mcp.tools.errors import ToolFailure
from learning_mcp.tools.lora_serving import adapter_api_url
from learning_mcp.tools.loop import LoopConfig, preflight_adapter_loading
from learning_mcp.tools.settings import Settings, Target


# -- selection -----------------------------------------------------------------------------------------------


def test_auto_uses_vllm_only_with_vllm_and_a_gpu():
    assert select_engine("auto", vllm_importable=True, cuda_available=True).engine == "vllm"
    for importable, cuda in ((True, False), (False, True), (False, False)):
        choice = select_engine("auto", vllm_importable=importable, cuda_available=cuda, import_error="boom")
        assert choice.engine == "transformers" and choice.reason.startswith("auto: ")
    assert select_engine("transformers", vllm_importable=True, cuda_available=True).engine == "transformers"
    assert select_engine("vllm", vllm_importable=True, cuda_available=True).engine == "vllm"
    with pytest.raises(EngineUnavailableError) as caught:
        select_engine("vllm", vllm_importable=False, cuda_available=False, import_error="not installed")
    assert caught.value.code == "vllm_unavailable"
    assert "not installed" in caught.value.message and "no CUDA GPU" in caught.value.message
    assert '.[train,vllm]' in caught.value.message and "LEARNING_MCP_INFERENCE_ENGINE" in caught.value.message
    with pytest.raises(ValueError):
        select_engine("fast", vllm_importable=True, cuda_available=True)


def test_this_machine_falls_back_to_transformers(tmp_path):
    importable, cuda, _ = probe_vllm()
    assert not (importable and cuda)  # no GPU here: nothing may pretend that vLLM serves
    backend = Backend(tmp_path / "auto", Settings())
    assert backend.engine_choice is None  # auto decides on first use, without importing torch at start
    engine = backend.engine()
    assert type(engine).__name__ == "InferenceEngine" and backend.engine_choice.engine == "transformers"
    assert backend.engine_choice.reason.startswith("auto: ")
    backend.close()
    with pytest.raises(EngineUnavailableError):
        Backend(tmp_path / "vllm", Settings(inference_engine="vllm"))
    assert Settings.load(environ={"LEARNING_MCP_INFERENCE_ENGINE": "VLLM"}, cwd=tmp_path).inference_engine == "vllm"


def test_the_backend_refuses_to_start_with_vllm_required_and_unavailable(tmp_path):
    env = {**os.environ, "LEARNING_MCP_INFERENCE_ENGINE": "vllm"}
    proc = subprocess.run([sys.executable, "-m", "learning_mcp", "backend", "--port", "0", "--data-dir",
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "[vllm_unavailable]" in proc.stderr and "LEARNING_MCP_INFERENCE_ENGINE=vllm" in proc.stderr


# -- request and response mapping ----------------------------------------------------------------------------


def test_sampling_kwargs_follow_the_request():
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3,
                                  "temperature": 0.7, "top_p": 0.9, "top_k": 40, "max_tokens": 12,
                                  "stop": ["\n\n", "END"], "seed": 2**64 - 1})
    assert sampling_kwargs(request, [7, 9]) == {
        "n": 3, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "max_tokens": 12, "stop": ["\n\n", "END"],
        "seed": (2**64 - 1) % 2**63, "skip_special_tokens": True, "stop_token_ids": [7, 9]}
    greedy = sampling_kwargs(parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                 "temperature": 0, "top_k": 5}))
    # greedy: top-k normalised off (vLLM's -1); no stop strings, no seed, no extra end tokens
    assert greedy == {"n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "max_tokens": 256, "stop": None,
                      "seed": None, "skip_special_tokens": True}


@dataclass
class Completion:  # vllm.CompletionOutput's documented fields
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class Output:  # vllm.RequestOutput's documented fields
    prompt_token_ids: list[int]
    outputs: list[Completion] = field(default_factory=list)


def test_a_request_output_becomes_an_openai_answer():
    request = parse_chat_request({"model": "ft:base:job-1", "messages": [{"role": "user", "content": "2+2"}],
                                  "n": 2})
    answer = completion_from_output(request, Output([1, 2, 3, 4], [
        Completion(1, "4 and more", [5, 6, 7], "length"), Completion(0, "4", [8, 2], "stop")]))
    assert answer["object"] == "chat.completion" and answer["model"] == "ft:base:job-1"
    assert [c["message"]["content"] for c in answer["choices"]] == ["4", "4 and more"]
    assert [c["finish_reason"] for c in answer["choices"]] == ["stop", "length"]
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    assert answer["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    with pytest.raises(InferenceError) as caught:
        completion_from_output(request, Output([1], [Completion(0, "", [], "abort")]))
    assert caught.value.code == "generation_aborted"


def test_what_vllm_loads_for_each_kind_of_model():
    def resolved(kind, path, base=None, id_="m"):
        return ResolvedModel(id=id_, kind=kind, path=path, base_model=base, tokenizer_path=path)

    bases = {"Qwen/Qwen3-0.6B": resolved("base", "Qwen/Qwen3-0.6B"),
             "ft:Qwen/Qwen3-0.6B:job-a": resolved("lora", "/d/models/job-a", "Qwen/Qwen3-0.6B")}
    assert vllm_target(resolved("base", "/m/tiny"), bases.__getitem__).model == "/m/tiny"
    full = vllm_target(resolved("full", "/d/models/job-f", "Qwen/Qwen3-0.6B"), bases.__getitem__)
    assert full.model == "/d/models/job-f" and full.lora_path is None  # a full fine-tune by its saved path
    lora = vllm_target(resolved("lora", "/d/models/job-b", "Qwen/Qwen3-0.6B", "ft:Qwen/Qwen3-0.6B:job-b"),
                       bases.__getitem__)
    assert (lora.model, lora.lora_name, lora.lora_path) == ("Qwen/Qwen3-0.6B", "ft:Qwen/Qwen3-0.6B:job-b",
                                                            "/d/models/job-b")
    # an adapter on an adapter: not one vLLM LoRA request; the transformers engine serves it
    assert vllm_target(resolved("lora", "/d/models/job-c", "ft:Qwen/Qwen3-0.6B:job-a"), bases.__getitem__) is None


def test_requests_with_images_go_to_the_transformers_engine():
    text = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}]}]})
    image = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}, {"type": "text", "text": "?"}]}]})
    assert not has_non_text_parts(text) and has_non_text_parts(image)


# -- the loop's side -----------------------------------------------------------------------------------------


def test_adapter_api_url_follows_the_chat_url():
    assert adapter_api_url("http://h:8000/v1", "load_lora_adapter") == "http://h:8000/v1/load_lora_adapter"
    assert adapter_api_url("http://h:8000/v1/chat/completions", "unload_lora_adapter") == \
        "http://h:8000/v1/unload_lora_adapter"
    assert adapter_api_url("http://h:1/api", "load_lora_adapter") == "http://h:1/api/inference/v1/load_lora_adapter"


def test_adapter_loading_preflight_names_the_fix(tmp_path):
    local = Target("http://127.0.0.1:8765/api", "local")
    cfg = LoopConfig(base_model="m", tasks=str(tmp_path / "t.jsonl"), chat_url="http://127.0.0.1:8001/v1",
                     load_lora_adapters=True)
    preflight_adapter_loading(cfg, local, lora=True)  # the supported combination
    cases = [(cfg, local, False, "load_lora_adapters_needs_lora"),
             (cfg.model_copy(update={"chat_url": None}), local, True, "load_lora_adapters_needs_chat_url"),
             (cfg, Target("https://api.usesynth.ai/api", "synth", "k"), True, "load_lora_adapters_unsupported"),
             (cfg.model_copy(update={"reset_to_base": False}), local, True, "load_lora_adapters_needs_reset_to_base")]
    for config, target, lora, code in cases:
        with pytest.raises(ToolFailure) as caught:
            preflight_adapter_loading(config, target, lora=lora)
        assert caught.value.code == code and caught.value.param == "load_lora_adapters"
