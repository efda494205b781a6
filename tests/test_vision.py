"""Images (issue 8 item 3): refused on a text-only model before training — by ``create_job`` (dry run included,
through a real MCP client) and by the backend at job creation — and really trained on a vision-language model
(the tiny LLaVA-style model built offline by ``tiny-model --size vl``) through the real backend, loss falling."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import httpx
import pytest

from conftest import arithmetic_rows, job_history, upload_ready, write_jsonl
from test_mcp_server import connect, mode, poll_to_terminal, server  # noqa: F401 (fixtures)

CASE = Path("/work/shared/cases/images_for_text_model.jsonl")
CASE_ROWS = [json.loads(line) for line in CASE.read_text().splitlines()] if CASE.is_file() else None


def png_data_url(rgb: tuple[int, int, int], size: int = 4) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def colour_rows(n: int) -> list[dict]:
    """Alternating red / blue images; the assistant names the colour (learnable only by looking)."""
    colours = [((230, 20, 20), "red"), ((20, 20, 230), "blue")]
    rows = []
    for i in range(n):
        rgb, name = colours[i % 2]
        rows.append({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "Which colour?"},
                                         {"type": "image_url", "image_url": {"url": png_data_url(rgb)}}]},
            {"role": "assistant", "content": name}]})
    return rows


def images_case(tmp_path: Path) -> Path:
    """The shared case file when present (12 examples, images from line 1), else an equivalent one."""
    if CASE.is_file():
        return Path(shutil.copy(CASE, tmp_path / CASE.name))
    return write_jsonl(tmp_path / "images.jsonl", colour_rows(12))


@pytest.fixture(scope="session")
def tiny_vl_model(tmp_path_factory) -> Path:
    from learning_mcp.backend.tiny import build_tiny_vl_model

    return build_tiny_vl_model(tmp_path_factory.mktemp("models") / "tiny-vl", seed=0)


def vl_toml(model: Path, *, epochs: int = 1, per_device_batch: int = 4, learning_rate: str = "1e-2") -> str:
    return (f'[algorithm]\ntype = "offline"\nmethod = "sft"\nvariety = "fft"\n\n[job]\nmodel = "{model}"\n\n'
            f'[hyperparameters]\nn_epochs = {epochs}\ntrain_kind = "fft"\nper_device_batch = {per_device_batch}\n'
            f"learning_rate = {learning_rate}\n")


# --------------------------------------------------------------------------------------------------
# detection and images, offline
# --------------------------------------------------------------------------------------------------


def test_vision_language_detection_from_config(tiny_model, tiny_vl_model, tmp_path):
    from learning_mcp.backend.vision import model_is_vision_language
    from learning_mcp.tools.model_checks import is_vision_language, scan_images

    assert is_vision_language(str(tiny_vl_model), "local") is True
    assert is_vision_language(str(tiny_model), "local") is False
    assert is_vision_language(str(tmp_path / "missing"), "local") is None  # unknown here: the backend decides
    assert is_vision_language("Qwen/Qwen3-VL-2B-Instruct", "synth") is True  # Synth's registry
    assert is_vision_language("Qwen/Qwen3-0.6B", "synth") is False
    assert model_is_vision_language(str(tiny_vl_model), tmp_path) is True
    assert model_is_vision_language(str(tiny_model), tmp_path) is False

    scan = scan_images(images_case(tmp_path))
    assert scan.examples == 12 and scan.first_line == 1
    mixed = write_jsonl(tmp_path / "mixed.jsonl", arithmetic_rows(3) + colour_rows(2) + arithmetic_rows(1))
    assert (scan_images(mixed).examples, scan_images(mixed).first_line) == (2, 4)
    assert scan_images(write_jsonl(tmp_path / "text.jsonl", arithmetic_rows(5))).first_line is None


def test_load_image_sources(tmp_path, monkeypatch):
    from PIL import Image

    from learning_mcp.backend.vision import ImageError, load_image

    assert load_image(png_data_url((1, 2, 3))).size == (4, 4)
    path = tmp_path / "dot.png"
    Image.new("RGB", (3, 5), (9, 9, 9)).save(path)
    assert load_image(str(path)).size == (3, 5)
    assert load_image(f"file://{path}").getpixel((0, 0)) == (9, 9, 9)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ImageError, match="offline"):
        load_image("https://example.com/cat.png")
    with pytest.raises(ImageError, match="relative"):
        load_image("images/cat.png")
    with pytest.raises(ImageError, match="cannot be read"):
        load_image("data:image/png;base64,bm90IGFuIGltYWdl")
    with pytest.raises(ImageError, match="cannot be read"):
        load_image(str(tmp_path / "missing.png"))


def test_weight_zero_clamp_and_trimming_on_the_vision_path(tiny_vl_model, tmp_path):
    """Prepared rows count trained tokens as TRL's collator will; weight 0 blanks that turn's span in the
    collated labels; per_device_batch is clamped to 1 with gradient accumulation raised to keep the batch."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from learning_mcp.backend.modelref import resolve_model
    from learning_mcp.backend.vision import VisionJob, _WeightAwareCollator

    red, blue = png_data_url((230, 20, 20)), png_data_url((20, 20, 230))
    conversation = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": red}}, {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": "red", "weight": 0},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": blue}},
                                     {"type": "image_url", "image_url": {"url": blue}}]},
        {"role": "assistant", "content": "blue"},
    ]
    path = write_jsonl(tmp_path / "two.jsonl", [{"messages": conversation}])
    job = VisionJob.detect(str(tiny_vl_model), resolve_model(str(tiny_vl_model), tmp_path), tmp_path, path)
    assert job is not None
    job.max_images = 1  # Synth's Qwen3-VL value: the second image of the second turn is trimmed
    weighted = job.prepare_examples([{"messages": conversation, "line": 1}], max_length=1024)
    unweighted = job.prepare_examples([{"messages": [{k: v for k, v in m.items() if k != "weight"}
                                                     for m in conversation], "line": 1}], max_length=1024)
    assert weighted.trimmed_images == 1 and any("max_images_per_message=1" in n for n in job.notes)
    assert weighted.trainable_tokens == len("blue") + 1  # the end-of-turn token is trained too
    assert unweighted.trainable_tokens == len("red") + 1 + len("blue") + 1

    inner = DataCollatorForVisionLanguageModeling(job.processor, assistant_only_loss=True,
                                                  chat_template=job.chat_template)
    batch = _WeightAwareCollator(inner)([weighted.to_dataset()[0]])
    tokenizer = job.processor.tokenizer
    trained = [t for t, label in zip(batch["input_ids"][0].tolist(), batch["labels"][0].tolist()) if label != -100]
    assert tokenizer.decode(trained) == "blue<|im_end|>"
    assert batch["pixel_values"].shape[0] == 2  # two images reached the model (the third was trimmed)

    sft_kwargs = {"per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "gradient_accumulation_steps": 2}
    notes = job.adjust_sft_kwargs(sft_kwargs)
    assert sft_kwargs["per_device_train_batch_size"] == sft_kwargs["per_device_eval_batch_size"] == 1
    assert sft_kwargs["gradient_accumulation_steps"] == 8 and sft_kwargs["assistant_only_loss"] is True
    assert any("clamped from 4 to 1" in n for n in notes)


# --------------------------------------------------------------------------------------------------
# refused before training
# --------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_create_job_refuses_images_for_a_text_model(server, backend, tiny_model, tmp_path, mode, anyio_backend):
    dataset = images_case(tmp_path)
    files_before = len(httpx.get(f"{backend.api}/learning/files", timeout=10).json()["data"])
    config = vl_toml(tiny_model)
    async with connect(server, mode) as s:
        for dry_run in (True, False):
            await s.fails("create_job", {"config": config, "dataset": str(dataset), "dry_run": dry_run},
                          "images_unsupported", "12 examples with images (first at line 1)", str(tiny_model),
                          "text-only", "Qwen/Qwen2-VL-2B-Instruct", "remove the images")
    assert len(httpx.get(f"{backend.api}/learning/files", timeout=10).json()["data"]) == files_before  # no upload


def test_backend_refuses_images_for_a_text_model_at_job_creation(backend, tiny_model, tiny_vl_model, tmp_path):
    dataset = images_case(tmp_path)
    file_id = upload_ready(backend.api, dataset)
    payload = {"model": str(tiny_model), "training_file_id": file_id, "training_type": "sft_offline",
               "hyperparameters": {"n_epochs": 1}}
    response = httpx.post(f"{backend.api}/learning/jobs", json=payload, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "images_unsupported" and error["param"] == "model"
    assert "first at line 1" in error["message"] and "text-only" in error["message"]
    # the same file is accepted for the vision-language model
    accepted = httpx.post(f"{backend.api}/learning/jobs", json={**payload, "model": str(tiny_vl_model)}, timeout=60)
    assert accepted.status_code == 200, accepted.text
    httpx.post(f"{backend.api}/learning/jobs/{accepted.json()['id']}/cancel", timeout=10)


def test_worker_refuses_images_for_a_text_model(tiny_model, tmp_path):
    """A payload that reached the worker anyway (e.g. created before the check) fails before any training."""
    from conftest_ml import make_request, refused_before_training

    error = refused_before_training(make_request(job_id="vl-text", model=tiny_model, models_dir=tmp_path / "models",
                                                 train_path=images_case(tmp_path), hyperparameters={"n_epochs": 1}))
    assert error.code == "images_unsupported" and "line 1" in error.message


# --------------------------------------------------------------------------------------------------
# trained on the tiny vision-language model
# --------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_image_dataset_trains_on_the_tiny_vl_model(server, backend, tiny_vl_model, tmp_path, anyio_backend):
    dataset = write_jsonl(tmp_path / "colours.jsonl", colour_rows(16))
    async with connect(server, "auto") as s:
        dry = await s.ok("create_job", {"config": vl_toml(tiny_vl_model, epochs=4), "dataset": str(dataset),
                                        "dry_run": True})
        assert dry["dry_run"]
        created = await s.ok("create_job", {"config": vl_toml(tiny_vl_model, epochs=4), "dataset": str(dataset)})
        final, events = await poll_to_terminal(s, created["job_id"])
    assert final["status"] == "succeeded", final
    job_id = created["job_id"]
    by_type = {e["type"]: e for e in job_history(backend.api, job_id)}
    prepared = by_type["sft.config.prepared"]
    assert prepared["data"]["vision_language"] is True and prepared["data"]["examples"] == 16
    assert "per_device_batch clamped from 4 to 1" in prepared["message"]
    args = by_type["sft.training.args"]["data"]
    assert args["per_device_train_batch_size"] == 1 and args["gradient_accumulation_steps"] == 4
    assert args["assistant_only_loss"] is True
    finish = by_type["sft.training.finish"]["data"]
    assert finish["steps"] == 16
    assert finish["train_loss"] < 0.7 * finish["first_loss"], finish  # the loss falls
    model_dir = Path(finish["output_dir"])
    assert (model_dir / "processor_config.json").is_file()  # saved with its processor, loadable as a VL model
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llava" and "vision_config" in config
