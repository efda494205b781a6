"""[training] report_to: from the TOML into the payload, honoured by the trainer (TensorBoard event files in the
backend's data directory), and a clear job failure for a tracker that is not installed."""

from __future__ import annotations

import importlib.util

import httpx
import pytest

from conftest import arithmetic_rows, upload_ready, wait_job, write_jsonl
from learning_mcp.tools.sft_config import ConfigError, build_sft_plan

TOML = """[algorithm]
type = "offline"
method = "sft"
variety = "fft"

[job]
model = "{model}"

[hyperparameters]
n_epochs = 1
total_steps = 12
per_device_batch = 8
learning_rate = 0.01

[training]
mode = "full_finetune"
{report_to}
"""


def plan(tmp_path, report_to: str, model: str = "local-model"):
    data = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(16))
    (tmp_path / model).mkdir(exist_ok=True)
    return build_sft_plan(TOML.format(model=model, report_to=report_to), dataset=data, target="local", cwd=tmp_path)


@pytest.mark.parametrize("line, sent", [
    ('report_to = "tensorboard"', ["tensorboard"]),
    ('report_to = ["TensorBoard", "trackio", "tensorboard"]', ["tensorboard", "trackio"]),
    ('report_to = "none"', "none"),
])
def test_toml_report_to_reaches_the_payload(tmp_path, line, sent):
    p = plan(tmp_path, line)
    assert p.payload["hyperparameters"]["report_to"] == sent
    assert "training.report_to" in p.dropped_keys
    notes = [w for w in p.warnings if w.startswith("training.report_to")]
    assert len(notes) == 1 and "forwards it as hyperparameters.report_to" in notes[0]


def test_no_report_to_sends_nothing(tmp_path):
    p = plan(tmp_path, "")
    assert "report_to" not in p.payload["hyperparameters"] and "training.report_to" not in p.dropped_keys


@pytest.mark.parametrize("line", ['report_to = "comet"', "report_to = 3", 'report_to = [""]'])
def test_bad_report_to_is_a_config_error_naming_the_key(tmp_path, line):
    with pytest.raises(ConfigError) as info:
        plan(tmp_path, line)
    assert info.value.code == "invalid_config" and info.value.param == "training.report_to"
    assert "'tensorboard'" in info.value.message and "training.report_to" in info.value.message


def test_configure_tracking_only_fills_what_is_unset(tmp_path):
    from learning_mcp.backend.tracking import configure_tracking, tensorboard_dir

    env: dict[str, str] = {}
    applied = configure_tracking({"report_to": ["tensorboard", "wandb"]}, tmp_path, "ftjob-1", env)
    assert applied == env == {"TENSORBOARD_LOGGING_DIR": str(tensorboard_dir(tmp_path, "ftjob-1")),
                              "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_MODE": "offline"}
    env = {"TENSORBOARD_LOGGING_DIR": "/elsewhere", "WANDB_API_KEY": "k"}  # an operator's settings win
    assert configure_tracking({"report_to": ["tensorboard", "wandb"]}, tmp_path, "j", env) == {
        "WANDB_DIR": str(tmp_path / "wandb")}
    assert configure_tracking({}, tmp_path, "j", {}) == {}


def run_job(backend, tiny_model, tmp_path, report_to_line: str) -> dict:
    p = plan(tmp_path, report_to_line, model=str(tiny_model))
    payload = p.with_files(upload_ready(backend.api, p.dataset_path))
    job = httpx.post(f"{backend.api}/learning/jobs", json=payload, timeout=30).json()
    httpx.post(f"{backend.api}/learning/jobs/{job['id']}/start", timeout=30)
    return wait_job(backend.api, job["id"], timeout=300)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_event_files_appear_for_a_real_job(backend, tiny_model, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    done = run_job(backend, tiny_model, tmp_path, 'report_to = "tensorboard"')
    assert done["status"] == "succeeded", done
    assert done["hyperparameters"]["report_to"] == ["tensorboard"]
    logdir = backend.data_dir / "tensorboard" / done["id"]
    events = list(logdir.rglob("events.out.tfevents.*"))
    assert events, f"no event files under {logdir}"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    losses = accumulator.Scalars("train/loss")
    assert len(losses) >= 5 and losses[-1].step == 12
    points = httpx.get(f"{backend.api}/learning/jobs/{done['id']}/metrics", params={"name": "train.loss"}).json()
    assert [p["step"] for p in points["points"]] == [s.step for s in losses]  # the job's own metrics still recorded
    # and the model folder holds only the model, not the logs
    assert not list((backend.data_dir / "models" / done["id"]).rglob("events.out.tfevents.*"))


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed here")
def test_a_tracker_that_is_not_installed_fails_the_job_with_the_install_hint(backend, tiny_model, tmp_path):
    done = run_job(backend, tiny_model, tmp_path, 'report_to = ["tensorboard", "mlflow"]')
    assert done["status"] == "failed"
    error = done["error"]
    assert error["code"] == "tracking_unavailable"  # (a failed job's error carries no param: finish_failed)
    assert "mlflow" in error["message"] and "pip install mlflow" in error["message"] and "report_to" in error["message"]
    assert "tensorboard" not in error["message"]  # installed, so not blamed
