"""Shared fixtures for the embedded backend's ML tests: tiny offline models, data, a recording reporter.

Test modules import what they use explicitly (``from conftest_ml import …``); this file is not a
``conftest.py``. Session fixtures cache their products in module globals, so a fixture imported into
several test modules (pytest makes one fixture definition per importing module) still builds each
model and runs each training job once per session.

Everything runs offline: ``HF_HUB_OFFLINE=1`` is set before any Hugging Face import, and the models
come from :func:`learning_mcp.backend.tiny.build_tiny_model`.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

_SESSION_CACHE: dict[str, Any] = {}


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


@dataclass
class RecordingReporter:
    """A :class:`learning_mcp.backend.trainer.Reporter` that keeps everything in lists.

    ``stop_after_checks``: once ``sft.training.started`` was reported, ``should_stop()`` turns True on
    its N-th call (the job was "cancelled" mid-training; the trainer polls once per step).
    """

    stop_after_checks: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    stop_checks: int = 0

    def event(self, type: str, message: str, data: dict | None = None, level: str = "info") -> None:
        json.dumps(data)  # what the job store will do: data must be JSON-serialisable
        self.events.append({"type": type, "message": message, "data": data, "level": level})

    def metric(self, name: str, value: float, step: int, epoch: float | None = None, phase: str = "train",
               data: dict | None = None) -> None:
        self.metrics.append({"name": name, "value": value, "step": step, "epoch": epoch, "phase": phase})

    def should_stop(self) -> bool:
        if self.stop_after_checks is None or "sft.training.started" not in self.event_types():
            return False
        self.stop_checks += 1
        return self.stop_checks >= self.stop_after_checks

    # queries
    def of_type(self, type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type]

    def values(self, name: str) -> list[float]:
        return [m["value"] for m in self.metrics if m["name"] == name]

    def event_types(self) -> list[str]:
        return [e["type"] for e in self.events]


def addition_rows(pairs: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """The toy ``a+b=?`` task of training-notes §11, as conversational rows."""
    return [{"messages": [{"role": "user", "content": f"{a}+{b}=?"}, {"role": "assistant", "content": str(a + b)}],
             "metadata": {"a": a, "b": b}}
            for a, b in pairs]


def single_digit_pairs(seed: int = 0) -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(10) for b in range(10)]
    random.Random(seed).shuffle(pairs)
    return pairs


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def make_request(**overrides: Any):
    """A :class:`TrainRequest` with defaults filled in (``model``, paths and ``job_id`` are required)."""
    from learning_mcp.backend.trainer import TrainRequest

    job_id = overrides.pop("job_id")
    models_dir = Path(overrides.pop("models_dir"))
    model = overrides.pop("model")
    defaults: dict[str, Any] = {
        "job_id": job_id, "model": str(model), "validation_path": None, "hyperparameters": {},
        "effective_config": {}, "output_dir": models_dir / job_id, "models_dir": models_dir,
        "fine_tuned_model_id": f"ft:{model}:{job_id}", "seed": 0,
    }
    defaults.update(overrides)
    defaults["output_dir"].mkdir(parents=True, exist_ok=True)  # the worker creates it before training
    return TrainRequest(**defaults)


# --------------------------------------------------------------------------------------------------
# session fixtures
# --------------------------------------------------------------------------------------------------


def _cached(key: str, build):
    if key not in _SESSION_CACHE:
        _SESSION_CACHE[key] = build()
    return _SESSION_CACHE[key]


@pytest.fixture(scope="session")
def ml_root(tmp_path_factory) -> Path:
    return _cached("root", lambda: tmp_path_factory.mktemp("ml"))


@pytest.fixture(scope="session")
def tiny_model_dir(ml_root) -> Path:
    from learning_mcp.backend.tiny import build_tiny_model

    return _cached("tiny", lambda: build_tiny_model(ml_root / "base-tiny", size="tiny", seed=0))


@pytest.fixture(scope="session")
def small_model_dir(ml_root) -> Path:
    from learning_mcp.backend.tiny import build_tiny_model

    return _cached("small", lambda: build_tiny_model(ml_root / "base-small", size="small", seed=0))


@pytest.fixture(scope="session")
def models_dir(ml_root) -> Path:
    path = ml_root / "models"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return _cached("tiny_tokenizer", lambda: AutoTokenizer.from_pretrained(tiny_model_dir))


@dataclass
class TrainedModel:
    model_id: str
    result: Any  # TrainResult
    reporter: RecordingReporter
    request: Any  # TrainRequest


def _train_full(ml_root: Path, models_dir: Path, tiny_model_dir: Path) -> TrainedModel:
    from learning_mcp.backend.trainer import run_training

    pairs = single_digit_pairs()
    untrainable = [{"messages": [{"role": "user", "content": "9+9=?"},
                                 {"role": "assistant", "content": "18", "weight": 0}]}] * 2
    train = write_jsonl(ml_root / "data" / "train_full.jsonl", addition_rows(pairs[:80]) + untrainable)
    val = write_jsonl(ml_root / "data" / "val_full.jsonl", addition_rows(pairs[80:96]))
    reporter = RecordingReporter()
    request = make_request(
        job_id="job_full", model=tiny_model_dir, models_dir=models_dir, train_path=train, validation_path=val,
        hyperparameters={"n_epochs": 1, "total_steps": 30, "per_device_batch": 16, "learning_rate": 3e-3,
                         "train_kind": "fft", "sequence_length": 64, "evaluation_strategy": "steps",
                         "eval_steps": 15, "metric_for_best_model": "val.loss", "greater_is_better": False},
        effective_config={"training": {"mode": "sft_offline", "use_qlora": False, "validation": {"enabled": True}},
                          "data": {"validation_files": ["file-val"]}},
    )
    result = run_training(request, reporter)
    return TrainedModel(model_id=request.fine_tuned_model_id, result=result, reporter=reporter, request=request)


def _train_lora(ml_root: Path, models_dir: Path, tiny_model_dir: Path) -> TrainedModel:
    """Synth's QLoRA mode switch (use_qlora, mode=lora, train_kind=peft): on CPU it must run as LoRA."""
    from learning_mcp.backend.trainer import run_training

    train = write_jsonl(ml_root / "data" / "train_lora.jsonl", addition_rows(single_digit_pairs(1)[:64]))
    reporter = RecordingReporter()
    request = make_request(
        job_id="job_lora", model=tiny_model_dir, models_dir=models_dir, train_path=train,
        hyperparameters={"n_epochs": 1, "total_steps": 30, "per_device_batch": 16, "learning_rate": 2e-2,
                         "train_kind": "peft", "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        effective_config={"training": {"mode": "lora", "use_qlora": True}},
    )
    result = run_training(request, reporter)
    return TrainedModel(model_id=request.fine_tuned_model_id, result=result, reporter=reporter, request=request)


@pytest.fixture(scope="session")
def trained_full(ml_root, models_dir, tiny_model_dir) -> TrainedModel:
    """Full fine-tuning of the tiny model: 30 steps, validation every 15, two weight-0-only rows."""
    return _cached("trained_full", lambda: _train_full(ml_root, models_dir, tiny_model_dir))


@pytest.fixture(scope="session")
def trained_lora(ml_root, models_dir, tiny_model_dir) -> TrainedModel:
    """LoRA (requested as QLoRA) on the tiny model: 30 steps."""
    return _cached("trained_lora", lambda: _train_lora(ml_root, models_dir, tiny_model_dir))


def refused_before_training(request) -> Any:
    """Run ``request``; it must fail with a ``TrainingError`` before training starts. Returns the error."""
    from learning_mcp.backend.trainer import TrainingError, run_training

    reporter = RecordingReporter()
    try:
        run_training(request, reporter)
    except TrainingError as exc:
        assert "sft.training.started" not in reporter.event_types()
        return exc
    raise AssertionError("training ran; it should have been refused")
