"""The reference's full example TOML (learning-api.md §4.4), with a tiny local model in place of Qwen, runs to
``succeeded`` on the embedded backend — payload built by our config builder exactly as Synth's CLI builds it."""

from __future__ import annotations

import httpx

from conftest import arithmetic_rows, wait_file_ready, wait_job, write_jsonl
from learning_mcp.tools.sft_config import build_sft_plan
from test_sft_config import REFERENCE_TOML  # learning-api.md §4.4, verbatim



def upload(api, path):
    with open(path, "rb") as fh:
        rec = httpx.post(f"{api}/files", files={"file": (path.name, fh, "application/jsonl")},
                         data={"purpose": "fine-tune"}).json()
    return wait_file_ready(api, rec["id"])["id"]


def test_reference_example_toml_runs_to_succeeded(backend, tiny_model, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(64, seed=11))
    val = write_jsonl(tmp_path / "val.jsonl", arithmetic_rows(16, seed=12))
    plan = build_sft_plan(REFERENCE_TOML, dataset=train, model=str(tiny_model), target="local")
    payload = plan.with_files(upload(backend.api, train), upload(backend.api, val))
    assert payload["model"] == str(tiny_model) and payload["training_type"] == "sft_offline"
    assert payload["hyperparameters"]["gradient_accumulation_steps"] == 32
    assert payload["metadata"]["effective_config"]["data"]["validation_files"]
    job = httpx.post(f"{backend.api}/learning/jobs", json=payload).json()
    httpx.post(f"{backend.api}/learning/jobs/{job['id']}/start")
    done = wait_job(backend.api, job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    events = httpx.get(f"{backend.api}/learning/jobs/{job['id']}/events", params={"limit": 500}).json()["events"]
    types = [e["type"] for e in events]
    assert "sft.validation.summary" in types and types[-1] == "workflow.completed"
    metrics = {p["name"] for p in httpx.get(f"{backend.api}/learning/jobs/{job['id']}/metrics").json()["points"]}
    assert {"train.loss", "val.loss"} <= metrics
