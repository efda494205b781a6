"""Memory at real size (backend/memory.py): full fine-tunes saved in the base dtype; the inference cache's budget,
evict-before-load and idle unloading — with real tiny models."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

try:
    from conftest_ml import (  # noqa: F401
        RecordingReporter, addition_rows, make_request, ml_root, models_dir, single_digit_pairs, tiny_model_dir,
        trained_full, trained_lora, write_jsonl,
    )
except ImportError:  # tests/ became a package
    from tests.conftest_ml import (  # noqa: F401
        RecordingReporter, addition_rows, make_request, ml_root, models_dir, single_digit_pairs, tiny_model_dir,
        trained_full, trained_lora, write_jsonl,
    )

from learning_mcp.backend.inference import InferenceEngine, InferenceError
from learning_mcp.backend.memory import estimate_model_bytes, loaded_bytes
from learning_mcp.backend.modelref import resolve_model
from learning_mcp.backend.trainer import TrainingError, run_training


def _safetensors_dtypes(path: Path) -> set[str]:
    raw = (path / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


@pytest.fixture(scope="module")
def bf16_base(ml_root, tiny_model_dir) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = ml_root / "tiny-bf16"
    if not out.exists():
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(out)
        AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_full_fine_tune_is_saved_in_the_base_dtype(bf16_base, ml_root, models_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", addition_rows(single_digit_pairs()[:16]))
    assert _safetensors_dtypes(bf16_base) == {"BF16"}
    req = make_request(model=str(bf16_base), train_path=data, output_dir=models_dir / "bf16-ft", job_id="bf16-ft",
                       models_dir=models_dir, fine_tuned_model_id=f"ft:{bf16_base}:bf16-ft",
                       hyperparameters={"total_steps": 2, "per_device_batch": 4})
    run_training(req, RecordingReporter())
    assert _safetensors_dtypes(models_dir / "bf16-ft") == {"BF16"}  # trained in fp32 on CPU, saved as the base
    asked = make_request(model=str(bf16_base), train_path=data, output_dir=models_dir / "fp32-ft", job_id="fp32-ft",
                         models_dir=models_dir, fine_tuned_model_id=f"ft:{bf16_base}:fp32-ft",
                         hyperparameters={"total_steps": 1, "per_device_batch": 4, "save_dtype": "float32"})
    run_training(asked, RecordingReporter())
    assert _safetensors_dtypes(models_dir / "fp32-ft") == {"F32"}
    bad = make_request(model=str(bf16_base), train_path=data, output_dir=tmp_path / "x", models_dir=models_dir,
                       job_id="bad",
                       hyperparameters={"total_steps": 1, "save_dtype": "int4"})
    with pytest.raises(TrainingError) as info:
        run_training(bad, RecordingReporter())
    assert info.value.param == "hyperparameters.save_dtype" and "float32" in info.value.message


def _chat(engine: InferenceEngine, model: str) -> dict:
    return asyncio.run(engine.chat_completion({"model": model, "messages": [{"role": "user", "content": "1+1"}],
                                               "max_tokens": 2, "temperature": 0}))


def test_budget_evicts_before_loading_and_refuses_what_cannot_fit(trained_full, trained_lora, tiny_model_dir,
                                                                  models_dir):
    import torch

    one = estimate_model_bytes(resolve_model(str(tiny_model_dir), models_dir), models_dir, torch.float32)
    assert one > 0
    # room for one model by bytes (count limit 5): the second load evicts the first before it loads
    engine = InferenceEngine(models_dir, batch_window_s=0.0, max_loaded_models=5, idle_unload_s=0,
                             memory_budget_mb=1)
    engine.memory_budget_bytes = int(one * 1.5)
    try:
        _chat(engine, str(tiny_model_dir))
        loaded = engine._models[str(tiny_model_dir)]
        assert abs(loaded.bytes - one) <= one * 0.2  # the estimate matches what loading took
        assert loaded.bytes == loaded_bytes(loaded.model)
        _chat(engine, trained_full.model_id)
        assert engine.loaded_models() == [trained_full.model_id]
        engine.memory_budget_bytes = one // 2  # smaller than any model: a clear refusal, nothing loaded
        with pytest.raises(InferenceError) as info:
            _chat(engine, trained_lora.model_id)
        assert info.value.status == 503 and info.value.code == "insufficient_memory"
        assert "LEARNING_MCP_INFERENCE_MEMORY_MB" in info.value.message
        assert engine.loaded_models() == []
    finally:
        engine.close()


def test_idle_models_are_unloaded(tiny_model_dir, models_dir):
    engine = InferenceEngine(models_dir, batch_window_s=0.0, idle_unload_s=0.4, memory_budget_mb=0)
    try:
        _chat(engine, str(tiny_model_dir))
        assert engine.stats["model_loads"] == 1
        deadline = time.monotonic() + 10
        while engine.loaded_models() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert engine.loaded_models() == []  # the daemon thread unloaded it
        _chat(engine, str(tiny_model_dir))  # and it loads again on demand
        assert engine.stats["model_loads"] == 2
    finally:
        engine.close()
