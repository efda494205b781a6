"""Real SFT on the tiny offline model: config mapping, loss masks, training runs, errors, cancellation."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

try:
    from conftest_ml import (  # noqa: F401
        RecordingReporter, addition_rows, make_request, ml_root, models_dir, single_digit_pairs, small_model_dir,
        tiny_model_dir, tiny_tokenizer, trained_full, trained_lora, write_jsonl,
    )
except ImportError:  # tests/ became a package
    from tests.conftest_ml import (  # noqa: F401
        RecordingReporter, addition_rows, make_request, ml_root, models_dir, single_digit_pairs, small_model_dir,
        tiny_model_dir, tiny_tokenizer, trained_full, trained_lora, write_jsonl,
    )

from learning_mcp.backend.modelref import (
    ModelNotFoundError, ModelNotLoadableError, check_loadable, parse_fine_tuned_id, read_manifest,
    resolve_model,
)
from learning_mcp.backend.trainer import (
    TrainingCancelled, TrainingError, assistant_spans, build_lora_config, build_sft_config, estimate_total_steps,
    run_training, select_strategy, tokenize_example,
)

log = logging.getLogger(__name__)
REQUIRED_EVENTS = ["sft.config.prepared", "sft.strategy.selected", "sft.training.args", "sft.training.started",
                   "sft.progress", "sft.training.finish"]


# --------------------------------------------------------------------------------------------------
# pure mapping
# --------------------------------------------------------------------------------------------------


def test_build_sft_config_maps_synth_hyperparameters():
    config = build_sft_config({"n_epochs": 2, "per_device_batch": 4, "gradient_accumulation_steps": 8,
                               "sequence_length": 4096, "learning_rate": 1e-5, "warmup_ratio": 0.03,
                               "weight_decay": 0.01, "train_kind": "fft",
                               "parallelism": {"bf16": True, "activation_checkpointing": True}}, 100, "cpu")
    assert config["num_train_epochs"] == 2.0 and config["max_steps"] == -1
    assert config["per_device_train_batch_size"] == 4 and config["gradient_accumulation_steps"] == 8
    assert config["max_length"] == 4096 and config["learning_rate"] == 1e-5
    assert config["warmup_steps"] == 0.03 and config["weight_decay"] == 0.01  # ratio as float (transformers 5)
    assert config["lr_scheduler_type"] == "linear"
    assert config["use_cpu"] and not config["bf16"] and not config["fp16"]
    assert config["activation_checkpointing"] is False  # never on CPU
    assert "optim" not in config  # transformers' default (fused AdamW with torch >= 2.8), on CPU too
    assert config["report_to"] == "none" and config["save_strategy"] == "no"
    assert config["eval_strategy"] == "no" and config["packing"] is False
    # 100 examples / 4 = 25 batches / 8 accumulation = 4 steps per epoch, 2 epochs → 8 steps, log every step
    assert config["logging_steps"] == 1


def test_build_sft_config_steps_batches_defaults_and_eval():
    config = build_sft_config({"total_steps": 500, "global_batch": 32}, 1000, "cpu", kind="lora")
    assert config["max_steps"] == 500 and config["logging_steps"] == 10
    assert config["per_device_train_batch_size"] == 8 and config["gradient_accumulation_steps"] == 4
    assert config["learning_rate"] == 2e-4  # LoRA default
    assert build_sft_config({}, 3, "cpu")["per_device_train_batch_size"] == 3  # min(8, n_examples)
    assert build_sft_config({}, 3, "cpu")["learning_rate"] == 2e-5  # full default
    assert build_sft_config({"steps": 7}, 3, "cpu")["max_steps"] == 7
    assert build_sft_config({"batch_size": 4}, 50, "cpu")["per_device_train_batch_size"] == 4
    assert build_sft_config({"sequence_length": 4096}, 5, "cpu", model_max_length=1024)["max_length"] == 1024
    every_epoch = build_sft_config({"evaluation_strategy": "steps", "eval_steps": 0}, 10, "cpu", has_eval=True)
    assert every_epoch["eval_strategy"] == "epoch"
    stepped = build_sft_config({"evaluation_strategy": "steps", "eval_steps": 50}, 10, "cpu", has_eval=True)
    assert stepped["eval_strategy"] == "steps" and stepped["eval_steps"] == 50
    gpu = build_sft_config({"parallelism": {"bf16": True}}, 10, "cuda", bf16_supported=True)
    assert gpu["bf16"] and not gpu["use_cpu"]
    assert build_sft_config({"parallelism": {"fp16": True}}, 10, "cuda", bf16_supported=True)["fp16"]
    with pytest.raises(TrainingError) as info:
        build_sft_config({"learning_rate": "fast"}, 10, "cpu")
    assert info.value.code == "invalid_hyperparameters" and info.value.param == "hyperparameters.learning_rate"
    with pytest.raises(TrainingError):
        build_sft_config({"per_device_batch": 0}, 10, "cpu")


def test_total_steps_estimate_matches_trainer_formula():
    assert estimate_total_steps(100, 8, 1, 1.0, None) == 13
    assert estimate_total_steps(100, 8, 4, 1.0, None) == 4  # 13 batches → 3 full + 1 partial accumulation
    assert estimate_total_steps(100, 8, 4, 2.5, None) == 10
    assert estimate_total_steps(100, 8, 4, 1.0, 77) == 77


def test_strategy_and_lora_config():
    assert select_strategy({"train_kind": "fft"}, {}) == ("full", False)
    assert select_strategy({"train_kind": "peft"}, {}) == ("lora", False)
    assert select_strategy({}, {"training": {"mode": "lora"}}) == ("lora", False)
    assert select_strategy({"train_kind": "peft"}, {"training": {"mode": "lora", "use_qlora": True}}) == ("lora", True)
    default = build_lora_config({})
    assert (default.r, default.lora_alpha, default.lora_dropout) == (16, 32, 0.05)
    assert default.target_modules == "all-linear"
    custom = build_lora_config({"lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.1,
                                "lora_target_modules": ["q_proj", "v_proj"]})
    assert (custom.r, custom.lora_alpha, custom.lora_dropout) == (4, 8, 0.1)
    assert set(custom.target_modules) == {"q_proj", "v_proj"}


def test_parse_fine_tuned_id_uses_last_colon():
    assert parse_fine_tuned_id("ft:Qwen/Qwen3-0.6B:job_1") == ("Qwen/Qwen3-0.6B", "job_1")
    assert parse_fine_tuned_id("ft:/models/a:b/tiny:job_2") == ("/models/a:b/tiny", "job_2")
    assert parse_fine_tuned_id("ft:ft:base:job_1:job_2") == ("ft:base:job_1", "job_2")


# --------------------------------------------------------------------------------------------------
# tokenisation and masks
# --------------------------------------------------------------------------------------------------


def _trained_text(tokenizer, example) -> list[str]:
    mask = [1 if label != -100 else 0 for label in example.labels]
    return [tokenizer.decode(example.input_ids[a:b]) for a, b in assistant_spans(mask)]


def test_labels_cover_only_assistant_content_and_im_end(tiny_tokenizer):
    messages = [{"role": "system", "content": "add"}, {"role": "user", "content": "2+3=?"},
                {"role": "assistant", "content": "5"}]
    example = tokenize_example(tiny_tokenizer, messages)
    assert _trained_text(tiny_tokenizer, example) == ["5<|im_end|>"]
    assert example.trainable_tokens == 2
    assert [t for t, label in zip(example.input_ids, example.labels) if label != -100] == \
        tiny_tokenizer("5<|im_end|>", add_special_tokens=False)["input_ids"]


def test_weight_zero_assistant_turns_are_not_trained(tiny_tokenizer):
    messages = [{"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "3", "weight": 0},
                {"role": "user", "content": "wrong, again"}, {"role": "assistant", "content": "2", "weight": 1},
                {"role": "user", "content": "and 2+2?"}, {"role": "assistant", "content": "5", "weight": 0.0},
                {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]
    example = tokenize_example(tiny_tokenizer, messages)
    assert _trained_text(tiny_tokenizer, example) == ["2<|im_end|>", "6<|im_end|>"]
    everything_untrained = [messages[0], messages[1]]
    assert tokenize_example(tiny_tokenizer, everything_untrained).trainable_tokens == 0


def test_weight_zero_fallback_when_spans_do_not_match_turns(tiny_tokenizer):
    # a template that trains only the LAST assistant turn: one span for two assistant turns
    template = tiny_tokenizer.chat_template.replace("{%- generation -%}", "{%- if loop.last -%}{%- generation -%}") \
        .replace("{%- endgeneration -%}", "{%- endgeneration -%}{%- else -%}{{ render_content(message.get('content')) }}<|im_end|>{%- endif -%}")
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "weight": 0}]
    assert tokenize_example(tiny_tokenizer, messages, chat_template=template).trainable_tokens == 0
    messages[-1]["weight"] = 1
    assert _trained_text(tiny_tokenizer, tokenize_example(tiny_tokenizer, messages, chat_template=template)) == \
        ["d<|im_end|>"]


def test_tools_multimodal_and_truncation(tiny_tokenizer):
    messages = [{"role": "user", "content": [{"type": "text", "text": "see"},
                                             {"type": "image", "image": "data:image/png;base64,AAAA"}]},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
                {"role": "tool", "tool_call_id": "1", "content": "ok"},
                {"role": "assistant", "content": "done"}]
    tools = [{"name": "f", "description": "d", "parameters": {"type": "object"}}]
    example = tokenize_example(tiny_tokenizer, messages, tools)
    text = tiny_tokenizer.decode(example.input_ids)
    assert "# Tools" in text and "see<image>" in text
    assert _trained_text(tiny_tokenizer, example) == [
        '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call><|im_end|>', "done<|im_end|>"]
    short = tokenize_example(tiny_tokenizer, [{"role": "user", "content": "x" * 50},
                                              {"role": "assistant", "content": "y"}], max_length=20)
    assert len(short.input_ids) == 20 and short.trainable_tokens == 0


# --------------------------------------------------------------------------------------------------
# real training runs (shared session fixtures)
# --------------------------------------------------------------------------------------------------


def test_full_fine_tune_loss_falls_and_events(trained_full):
    reporter, result = trained_full.reporter, trained_full.result
    losses = reporter.values("train.loss")
    assert len(losses) >= 5 and losses[-1] < losses[0] - 0.5, losses
    assert len(reporter.values("train.learning_rate")) == len(losses)
    types = reporter.event_types()
    for required in REQUIRED_EVENTS:
        assert required in types, required
    assert types.index("sft.config.prepared") < types.index("sft.strategy.selected") < \
        types.index("sft.training.started") < types.index("sft.progress") < types.index("sft.training.finish")
    for progress in reporter.of_type("sft.progress"):
        assert set(progress["data"]) - {"learning_rate"} == {"step", "epoch", "loss", "total_steps"}
        assert progress["data"]["total_steps"] == 30
    started = reporter.of_type("sft.training.started")[0]["data"]
    assert started["total_steps"] == 30 and started["examples"] == 80 and started["skipped"] == 2
    strategy = reporter.of_type("sft.strategy.selected")[0]
    assert strategy["data"] == {"strategy": "full", "device": "cpu", "dtype": "float32", "requested": "full"}
    assert result.kind == "full" and result.steps == 30 and result.skipped_examples == 2
    assert result.train_tokens > 0 and result.train_loss == losses[-1]
    prepared = reporter.of_type("sft.config.prepared")[0]
    assert prepared["level"] == "warning" and "skipped 2" in prepared["message"]


def test_validation_file_produces_val_loss(trained_full):
    reporter = trained_full.reporter
    val_points = [m for m in reporter.metrics if m["name"] == "val.loss"]
    assert [m["step"] for m in val_points] == [15, 30]
    assert val_points[-1]["value"] < val_points[0]["value"]
    summaries = reporter.of_type("sft.validation.summary")
    assert [s["data"]["step"] for s in summaries] == [15, 30]
    assert trained_full.result.val_loss == pytest.approx(val_points[-1]["value"])


def test_full_model_saved_with_manifest_and_resolvable(trained_full, models_dir, tiny_model_dir):
    model_dir = models_dir / "job_full"
    manifest = read_manifest(model_dir)
    assert manifest["id"] == trained_full.model_id and manifest["kind"] == "full"
    assert manifest["base_model"] == str(tiny_model_dir) and manifest["job_id"] == "job_full"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    resolved = resolve_model(trained_full.model_id, models_dir)
    assert resolved.kind == "full" and Path(resolved.path) == model_dir.resolve()
    assert not [p for p in models_dir.iterdir() if ".partial-" in p.name]  # no staging left behind
    assert not (model_dir / "trainer").exists()  # no checkpoints


def test_lora_requested_as_qlora_runs_as_lora_on_cpu(trained_lora, models_dir, tiny_model_dir):
    reporter, result = trained_lora.reporter, trained_lora.result
    strategy = reporter.of_type("sft.strategy.selected")[0]
    assert strategy["level"] == "warning"
    assert strategy["data"]["strategy"] == "lora" and strategy["data"]["requested"] == "qlora"
    assert "QLoRA was requested" in strategy["message"] and "LoRA" in strategy["message"]
    losses = reporter.values("train.loss")
    assert losses[-1] < losses[0] - 0.3, losses
    assert result.kind == "lora"
    model_dir = models_dir / "job_lora"
    assert (model_dir / "adapter_config.json").is_file() and (model_dir / "adapter_model.safetensors").is_file()
    assert not (model_dir / "model.safetensors").exists()
    manifest = read_manifest(model_dir)
    assert manifest["kind"] == "lora" and manifest["base_model"] == str(tiny_model_dir)
    resolved = resolve_model(trained_lora.model_id, models_dir)
    assert resolved.kind == "lora" and resolved.base_model == str(tiny_model_dir)


def test_trained_models_load_in_inference_engine(trained_full, trained_lora, models_dir):
    from learning_mcp.backend.inference import InferenceEngine

    engine = InferenceEngine(models_dir, batch_window_s=0.0)
    try:
        for trained in (trained_full, trained_lora):
            response = asyncio.run(engine.chat_completion({
                "model": trained.model_id, "messages": [{"role": "user", "content": "2+2=?"}],
                "temperature": 0, "max_tokens": 4}))
            assert response["model"] == trained.model_id
            assert response["choices"][0]["finish_reason"] in ("stop", "length")
        assert engine.loaded_models() == [trained_full.model_id, trained_lora.model_id]
    finally:
        engine.close()


def test_lora_on_a_fine_tuned_base(trained_full, models_dir, ml_root):
    """A LoRA job whose base is an ft: full model; its manifest points at that ft id."""
    train = write_jsonl(ml_root / "data" / "stacked.jsonl", addition_rows(single_digit_pairs(2)[:8]))
    reporter = RecordingReporter()
    request = make_request(job_id="job_stacked", model=trained_full.model_id, models_dir=models_dir, train_path=train,
                           hyperparameters={"total_steps": 2, "train_kind": "peft"})
    result = run_training(request, reporter)
    assert result.kind == "lora" and result.steps == 2
    assert read_manifest(models_dir / "job_stacked")["base_model"] == trained_full.model_id
    assert resolve_model(request.fine_tuned_model_id, models_dir).base_model == trained_full.model_id


def test_same_seed_same_losses(tiny_model_dir, models_dir, ml_root):
    train = write_jsonl(ml_root / "data" / "determinism.jsonl", addition_rows(single_digit_pairs(3)[:24]))
    runs = []
    for attempt in range(2):
        reporter = RecordingReporter()
        run_training(make_request(job_id=f"job_det_{attempt}", model=tiny_model_dir, models_dir=models_dir,
                                  train_path=train, hyperparameters={"total_steps": 4, "learning_rate": 1e-2,
                                                                     "per_device_batch": 8}, seed=7), reporter)
        runs.append(reporter.values("train.loss"))
    assert runs[0] == runs[1]


# --------------------------------------------------------------------------------------------------
# errors and cancellation
# --------------------------------------------------------------------------------------------------


def test_cancellation_stops_within_a_few_steps(tiny_model_dir, models_dir, ml_root):
    train = write_jsonl(ml_root / "data" / "cancel.jsonl", addition_rows(single_digit_pairs(4)[:32]))
    reporter = RecordingReporter(stop_after_checks=4)  # train begin + 3 steps
    request = make_request(job_id="job_cancel", model=tiny_model_dir, models_dir=models_dir, train_path=train,
                           hyperparameters={"total_steps": 500, "per_device_batch": 4, "learning_rate": 1e-3,
                                            "gradient_accumulation_steps": 2})
    started = time.perf_counter()
    with pytest.raises(TrainingCancelled) as info:
        run_training(request, reporter)
    assert time.perf_counter() - started < 30
    assert info.value.step is not None and 1 <= info.value.step <= 3, info.value.step
    assert reporter.stop_checks == 4  # it stopped at the first True
    assert "sft.training.finish" not in reporter.event_types()
    assert read_manifest(models_dir / "job_cancel") is None
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".job_cancel")]


def test_cancellation_during_evaluation(tiny_model_dir, models_dir, ml_root):
    rows = addition_rows(single_digit_pairs(6)[:40])
    train = write_jsonl(ml_root / "data" / "cancel_eval_train.jsonl", rows[:8])
    val = write_jsonl(ml_root / "data" / "cancel_eval_val.jsonl", rows[8:])
    reporter = RecordingReporter(stop_after_checks=5)  # train begin, step 1, then 3 evaluation batches
    request = make_request(job_id="job_cancel_eval", model=tiny_model_dir, models_dir=models_dir, train_path=train,
                           validation_path=val, hyperparameters={"total_steps": 3, "per_device_batch": 1,
                                                                 "evaluation_strategy": "steps", "eval_steps": 1})
    with pytest.raises(TrainingCancelled) as info:
        run_training(request, reporter)
    assert info.value.step == 1
    assert reporter.values("val.loss") == []  # the evaluation was interrupted


def test_missing_model_path_is_model_not_loadable(models_dir, ml_root, tmp_path):
    train = write_jsonl(ml_root / "data" / "tiny_set.jsonl", addition_rows([(1, 1)]))
    reporter = RecordingReporter()
    with pytest.raises(TrainingError) as info:
        run_training(make_request(job_id="job_missing", model=tmp_path / "no-such-model", models_dir=models_dir,
                                  train_path=train), reporter)
    assert info.value.code == "model_not_loadable" and info.value.param == "model"
    assert "does not exist" in info.value.message
    with pytest.raises(TrainingError) as info:
        run_training(make_request(job_id="job_unknown_ft", model="ft:base:job_nope", models_dir=models_dir,
                                  train_path=train), reporter)
    assert info.value.code == "model_not_loadable" and "GET /api/learning/models" in info.value.message


def test_all_weight_zero_is_no_trainable_examples(tiny_model_dir, models_dir, ml_root):
    rows = [{"messages": [{"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "2", "weight": 0}]}]
    train = write_jsonl(ml_root / "data" / "untrainable.jsonl", rows * 3)
    with pytest.raises(TrainingError) as info:
        run_training(make_request(job_id="job_untrainable", model=tiny_model_dir, models_dir=models_dir,
                                  train_path=train), RecordingReporter())
    assert info.value.code == "no_trainable_examples" and info.value.param == "training_file_id"


def test_invalid_dataset(tiny_model_dir, models_dir, ml_root):
    bad = ml_root / "data" / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}]}\n{not json\n')
    with pytest.raises(TrainingError) as info:
        run_training(make_request(job_id="job_bad", model=tiny_model_dir, models_dir=models_dir, train_path=bad),
                     RecordingReporter())
    assert info.value.code == "invalid_dataset" and "line 2" in info.value.message


def test_check_loadable_hub_id_offline_fails_fast(monkeypatch, models_dir, tmp_path, tiny_model_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.perf_counter()
    with pytest.raises(ModelNotLoadableError) as info:
        check_loadable("Qwen/Qwen3-0.6B", models_dir, timeout_s=5.0)
    assert time.perf_counter() - started < 2.0
    message = info.value.message
    assert "'Qwen/Qwen3-0.6B' is not in the local Hugging Face cache and the Hub is unreachable" in message
    assert "pass a local path" in message and info.value.code == "model_not_loadable"
    check_loadable(str(tiny_model_dir), models_dir)  # a local model is fine
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(ModelNotLoadableError, match="no config.json"):
        check_loadable(str(tmp_path / "empty-model"), models_dir)
    with pytest.raises(ModelNotFoundError, match="GET /api/learning/models"):
        resolve_model("ft:Qwen/Qwen3-0.6B:job_missing", models_dir)


def test_check_loadable_unreachable_hub_times_out(monkeypatch, models_dir, tmp_path):
    """Online mode against an endpoint that never answers: bounded by timeout_s."""
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the TCP connection, never answers
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", endpoint)
    monkeypatch.setattr("huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    try:
        started = time.perf_counter()
        with pytest.raises(ModelNotLoadableError) as info:
            check_loadable("someorg/some-model", models_dir, timeout_s=1.0)
        assert time.perf_counter() - started < 3.0
        assert "the Hub is unreachable" in info.value.message
    finally:
        listener.close()


# --------------------------------------------------------------------------------------------------
# capability and measurements (reported, not asserted beyond sanity)
# --------------------------------------------------------------------------------------------------


def test_small_model_learns_single_digit_addition(small_model_dir, models_dir, ml_root, record_property):
    """training-notes §11: the ~100k-parameter model is capable enough for the toy a+b task."""
    from learning_mcp.backend.inference import InferenceEngine

    pairs = single_digit_pairs(5)
    train = write_jsonl(ml_root / "data" / "small_add.jsonl", addition_rows(pairs))
    reporter = RecordingReporter()
    request = make_request(job_id="job_small_add", model=small_model_dir, models_dir=models_dir, train_path=train,
                           hyperparameters={"total_steps": 200, "per_device_batch": 32, "learning_rate": 2e-3,
                                            "lr_scheduler_type": "constant"})
    result = run_training(request, reporter)
    engine = InferenceEngine(models_dir, max_batch_size=128, batch_window_s=0.05)

    async def score() -> float:
        responses = await asyncio.gather(*[engine.chat_completion({
            "model": request.fine_tuned_model_id, "messages": [{"role": "user", "content": f"{a}+{b}=?"}],
            "temperature": 0, "max_tokens": 4}) for a, b in pairs])
        return sum(r["choices"][0]["message"]["content"] == str(a + b)
                   for r, (a, b) in zip(responses, pairs)) / len(pairs)

    accuracy = asyncio.run(score())
    engine.close()
    record_property("small_train_tokens_per_s", result.tokens_per_second)
    record_property("small_addition_accuracy", accuracy)
    log.info("small model: %d steps in %.1f s (%.0f tokens/s), train loss %.3f, accuracy %.2f",
             result.steps, result.seconds, result.tokens_per_second, result.train_loss, accuracy)
    assert accuracy >= 0.5, accuracy


def test_measure_training_throughput_and_peak_rss(trained_full, trained_lora, tiny_model_dir, ml_root,
                                                 record_property):
    """Reports tokens/s of the tiny runs and the peak RSS of a tiny training run in a fresh process."""
    import subprocess
    import sys

    record_property("tiny_full_train_tokens_per_s", trained_full.result.tokens_per_second)
    record_property("tiny_lora_train_tokens_per_s", trained_lora.result.tokens_per_second)
    code = f"""
import json, os, resource, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest_ml import RecordingReporter, make_request
started = time.perf_counter()
import datasets, peft, torch, transformers, trl
from learning_mcp.backend.trainer import run_training
import_seconds = time.perf_counter() - started
rss_after_imports_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
models = Path({str(ml_root / "rss-models")!r}); models.mkdir(exist_ok=True)
started = time.perf_counter()
result = run_training(make_request(job_id="job_rss", model={str(tiny_model_dir)!r}, models_dir=models,
    train_path=Path({str(trained_full.request.train_path)!r}),
    hyperparameters={{"total_steps": 30, "per_device_batch": 16, "learning_rate": 3e-3}}), RecordingReporter())
print(json.dumps({{"import_seconds": import_seconds, "rss_after_imports_mb": rss_after_imports_mb, "run_seconds": time.perf_counter() - started,
                  "train_seconds": result.train_tokens / result.tokens_per_second, "tokens_per_s": result.tokens_per_second,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1, lines  # training wrote nothing else to stdout
    measured = json.loads(lines[0])
    measured["process_seconds_incl_imports"] = time.perf_counter() - started
    for key, value in measured.items():
        record_property(f"tiny_subprocess_{key}", value)
    log.info("tiny training: full %.0f tokens/s, LoRA %.0f tokens/s; fresh process: %s",
             trained_full.result.tokens_per_second, trained_lora.result.tokens_per_second, measured)
    assert measured["peak_rss_mb"] > 0
