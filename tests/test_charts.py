"""tools/charts.py: a real job's loss curves read from the backend's metrics, and a loop chart, as valid PNGs."""

from __future__ import annotations

import base64
import io

import anyio
import httpx
import numpy as np
import pytest

from conftest import arithmetic_rows, upload_ready, wait_job, write_jsonl
from learning_mcp.tools import charts
from learning_mcp.tools.loop import IterationRecord, LoopConfig, LoopState

# matplotlib's default colour cycle, as RGB 0-255
TAB = {"blue": (31, 119, 180), "orange": (255, 127, 14), "green": (44, 160, 44), "red": (214, 39, 40),
       "purple": (148, 103, 189)}


def decode(png: bytes) -> np.ndarray:
    """The PNG as an H x W x 3 uint8 array (fails on anything that is not a PNG)."""
    from PIL import Image

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def pixels_near(rgb: np.ndarray, color: tuple[int, int, int], tolerance: int = 40) -> int:
    return int((np.abs(rgb.astype(int) - np.array(color)).max(axis=2) <= tolerance).sum())


@pytest.fixture(scope="module")
def job_with_validation(backend, tiny_model, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("chart-data")
    train_id = upload_ready(backend.api, write_jsonl(folder / "train.jsonl", arithmetic_rows(64, seed=1)))
    val_id = upload_ready(backend.api, write_jsonl(folder / "val.jsonl", arithmetic_rows(16, seed=9)))
    payload = {"model": str(tiny_model), "training_type": "sft_offline", "training_file_id": train_id,
               "hyperparameters": {"n_epochs": 1, "total_steps": 40, "per_device_batch": 8, "learning_rate": 1e-2,
                                   "evaluation_strategy": "steps", "eval_steps": 10},
               "metadata": {"effective_config": {"data": {"validation_files": [val_id]}}}}
    job = httpx.post(f"{backend.api}/learning/jobs", json=payload, timeout=30).json()
    httpx.post(f"{backend.api}/learning/jobs/{job['id']}/start", timeout=30)
    assert wait_job(backend.api, job["id"], timeout=300)["status"] == "succeeded"
    return job["id"]


def test_job_loss_chart_from_the_backend_metrics(backend, job_with_validation, tmp_path):
    from learning_mcp.tools.client import LearningClient
    from learning_mcp.tools.settings import Target, ensure_api_base

    out = charts.job_chart_path(tmp_path, job_with_validation)

    async def render() -> bytes:
        async with LearningClient(Target(ensure_api_base(backend.url), "custom", None)) as client:
            return await charts.job_loss_chart(client, job_with_validation, out_path=out)

    png = anyio.run(render)
    assert out == tmp_path / "jobs" / job_with_validation / "loss.png" and out.read_bytes() == png
    rgb = decode(png)
    assert rgb.shape == (400, 700, 3)
    assert (rgb < 250).any(axis=2).mean() > 0.03  # not blank: axes, text and curves
    assert pixels_near(rgb, TAB["blue"]) > 300, "no training-loss curve"
    assert pixels_near(rgb, TAB["orange"]) > 100, "no validation-loss curve"

    points = httpx.get(f"{backend.api}/learning/jobs/{job_with_validation}/metrics").json()["points"]
    train = charts.loss_series(points, charts.TRAIN_LOSS_NAMES)
    val = charts.loss_series(points, charts.VAL_LOSS_NAMES)
    assert len(train) >= 10 and len(val) == 4 and [s for s, _ in val] == [10, 20, 30, 40]

    only_train = decode(charts.loss_chart_png([p for p in points if p["name"] == "train.loss"]))
    assert pixels_near(only_train, TAB["orange"]) < 20  # the orange curve was the validation loss


def test_empty_metrics_still_give_a_labelled_png():
    rgb = decode(charts.loss_chart_png([], title="job ftjob-x"))
    assert rgb.shape == (400, 700, 3) and (rgb < 250).any(axis=2).mean() > 0.005
    assert pixels_near(rgb, TAB["blue"]) == 0


def loop_state() -> LoopState:
    config = LoopConfig(base_model="m", tasks="t.jsonl", iterations=3, n=8)
    records = [
        IterationRecord(iteration=1, step="done", sampler_model="m", samples=320, problems=40, solved=12,
                        train_pass_at_1=0.08, kept=30, final_train_loss=0.9, val_pass_at_1=0.42),
        IterationRecord(iteration=2, step="done", sampler_model="ft:m:a", samples=320, problems=40, solved=31,
                        train_pass_at_1=0.55, kept=96, final_train_loss=0.35, val_pass_at_1=0.71),
        IterationRecord(iteration=3, step="train", sampler_model="ft:m:b", samples=320, problems=40, solved=36,
                        train_pass_at_1=0.74, kept=120),  # still training: no loss or validation yet
    ]
    return LoopState(loop_id="loop-test", state="running", config=config, base_val_pass_at_1=0.05,
                     iterations=records, best_model="ft:m:b", best_val_pass_at_1=0.71, best_iteration=2)


def test_loop_chart_shows_each_series():
    state = loop_state()
    for source in (state, state.model_dump(mode="json")):  # the model or state.json's dict
        rgb = decode(charts.loop_chart_png(source))
        assert rgb.shape == (600, 800, 3)
        for name in ("green", "purple", "blue", "red"):  # val pass@1, train pass@n, train pass@1, train loss
            assert pixels_near(rgb, TAB[name]) > 80, name
    empty = LoopState(loop_id="loop-new", config=state.config)
    assert decode(charts.loop_chart_png(empty)).shape == (600, 800, 3)


def test_png_image_content_round_trips():
    png = charts.loss_chart_png([{"name": "train.loss", "value": 1.0, "step": 1},
                                 {"name": "train.loss", "value": 0.5, "step": 2}])
    block = charts.png_image_content(png)
    assert block.type == "image" and block.mime_type == "image/png"
    assert base64.b64decode(block.data) == png


def test_job_chart_path_refuses_path_like_ids(tmp_path):
    from learning_mcp.tools.errors import LearningMCPError

    for bad in ("../x", "a/b", "", ".."):
        with pytest.raises(LearningMCPError):
            charts.job_chart_path(tmp_path, bad)


@pytest.mark.anyio
async def test_get_job_status_chart_returns_image_content_and_writes_the_png(backend, job_with_validation, tmp_path,
                                                                           anyio_backend):
    from mcp import Client

    from learning_mcp.server.app import ServerSettings, create_server

    server = create_server(ServerSettings(backend_url=backend.url, data_dir=str(tmp_path / "mcp-data")))
    async with Client(server) as client:
        plain = await client.call_tool("get_job_status", {"job_id": job_with_validation})
        charted = await client.call_tool("get_job_status", {"job_id": job_with_validation, "chart": True})
        missing = await client.call_tool("get_job_status", {"job_id": "ftjob-nope", "chart": True})
    assert not plain.is_error and [c.type for c in plain.content] == ["text", "text"]
    assert not charted.is_error and [c.type for c in charted.content] == ["text", "text", "image"]
    assert charted.structured_content == plain.structured_content
    image = charted.content[2]
    png = base64.b64decode(image.data)
    assert image.mime_type == "image/png" and decode(png).shape == (400, 700, 3)
    path = tmp_path / "mcp-data" / "jobs" / job_with_validation / "loss.png"
    assert path.read_bytes() == png and str(path) in charted.content[0].text
    assert missing.is_error and "[unknown_job]" in missing.content[0].text
