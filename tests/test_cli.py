"""The Synth-style CLI (``learning-mcp train | status | eval | filter | export``) as a user runs it: a subprocess
against a real embedded backend on loopback, Synth's own example TOML, a JSONL; the progress display read from a
real pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import arithmetic_rows, write_jsonl
from test_sft_config import REFERENCE_TOML  # learning-api.md §4.4, verbatim

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(backend, tmp_path: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "learning_mcp", "--backend-url", backend.url,
                           "--data-dir", str(tmp_path / "cli-data"), *args],
                          capture_output=True, text=True, timeout=timeout, env=ENV)


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "no JSON on stdout"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("cli-data") / "train.jsonl", arithmetic_rows(48, seed=7))


@pytest.fixture(scope="module")
def reference_toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli-config") / "sft.toml"
    path.write_text(REFERENCE_TOML)
    return path


@pytest.fixture(scope="module")
def trained_job(backend, tiny_model, dataset, reference_toml, tmp_path_factory) -> dict:
    """train --no-poll --examples --json, then status --follow --json: the job of Synth's example to succeeded."""
    tmp = tmp_path_factory.mktemp("cli-run")
    started = cli(backend, tmp, "train", str(reference_toml), "--dataset", str(dataset), "--model", str(tiny_model),
                  "--examples", "40", "--no-poll", "--json")
    assert started.returncode == 0, started.stderr
    doc = last_json(started.stdout)
    assert doc["ok"] and doc["started"] and doc["job_id"]
    followed = cli(backend, tmp, "status", doc["job_id"], "--follow", "--json", "--poll-interval", "0.5")
    assert followed.returncode == 0, followed.stderr
    return {**doc, **last_json(followed.stdout), "file": doc["training_file_id"]}


def test_train_no_poll_then_status_succeeds(trained_job, backend, tmp_path):
    assert trained_job["status"] == "succeeded"
    assert trained_job["fine_tuned_model"].startswith("ft:")
    file = httpx.get(f"{backend.api}/learning/files/{trained_job['file']}", timeout=30).json()
    assert file["examples"] == 40  # --examples cut the upload to the first 40 records
    once = cli(backend, tmp_path, "status", trained_job["job_id"], "--json")
    assert once.returncode == 0 and last_json(once.stdout)["fine_tuned_model"] == trained_job["fine_tuned_model"]
    text = cli(backend, tmp_path, "status", trained_job["job_id"])
    assert text.returncode == 0 and "succeeded" in text.stderr and trained_job["fine_tuned_model"] in text.stderr
    assert text.stdout == ""  # people's output on stderr; stdout only for --json


def test_progress_bar_in_a_terminal(backend, tiny_model, dataset, reference_toml, tmp_path):
    """A pseudo-terminal: rich draws the live bar with step/total, loss, ETA and ends with the summary."""
    toml = tmp_path / "sft.toml"
    toml.write_text(REFERENCE_TOML.replace("gradient_accumulation_steps = 32", "gradient_accumulation_steps = 1")
                    .replace("per_device_batch = 1", "per_device_batch = 4"))
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "learning_mcp", "--backend-url", backend.url, "--data-dir",
                             str(tmp_path / "cli-data"), "train", str(toml), "--dataset", str(dataset), "--model",
                             str(tiny_model), "--poll-interval", "0.5"],
                            stdin=child, stdout=child, stderr=child, env={**ENV, "COLUMNS": "160", "TERM": "xterm"},
                            close_fds=True)
    os.close(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(main)
    assert proc.wait(timeout=30) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in screen  # a live terminal display, not plain lines
    assert "12/12" in screen  # 48 records / batch 4 = 12 steps: step/total
    assert "loss " in screen and "ETA" in screen
    assert "fine_tuned_model ft:" in screen and "succeeded" in screen


def test_export_writes_a_hugging_face_folder(trained_job, backend, tmp_path):
    target = tmp_path / "exported"
    done = cli(backend, tmp_path, "export", trained_job["fine_tuned_model"], str(target), "--json")
    assert done.returncode == 0, done.stderr
    assert last_json(done.stdout)["ok"]
    assert (target / "config.json").is_file() and any(target.glob("*.safetensors"))


def test_exit_codes_for_scripts(backend, dataset, reference_toml, tmp_path):
    missing = cli(backend, tmp_path, "train", str(tmp_path / "nope.toml"), "--dataset", str(dataset), "--json")
    assert missing.returncode == 2 and not last_json(missing.stdout)["ok"]
    unknown = cli(backend, tmp_path, "status", "ftjob-doesnotexist")
    assert unknown.returncode == 2 and "[unknown_job]" in unknown.stderr and "list_jobs" in unknown.stderr
    bad = cli(backend, tmp_path, "train", str(reference_toml), "--dataset", str(dataset), "--examples", "0")
    assert bad.returncode == 2 and "--examples" in bad.stderr
    nodb = cli(backend, tmp_path, "filter", "--db", str(tmp_path / "none.sqlite"))
    assert nodb.returncode == 2 and "[db_not_found]" in nodb.stderr
    down = subprocess.run([sys.executable, "-m", "learning_mcp", "--backend-url", "http://127.0.0.1:9",
                           "--data-dir", str(tmp_path / "d"), "status", "ftjob-x", "--json"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert down.returncode == 3, (down.stdout, down.stderr)


def test_dry_run_creates_nothing(backend, tiny_model, dataset, reference_toml, tmp_path):
    before = httpx.get(f"{backend.api}/learning/jobs", timeout=30).json()
    done = cli(backend, tmp_path, "train", str(reference_toml), "--dataset", str(dataset), "--model",
               str(tiny_model), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    doc = last_json(done.stdout)
    assert doc["job_id"] is None and doc["payload"]["model"] == str(tiny_model)
    assert httpx.get(f"{backend.api}/learning/jobs", timeout=30).json() == before


def test_export_model_tool(trained_job, backend, tmp_path):
    """The MCP tool export_model runs the same export (tools/export_ops.py) through a real MCP client."""
    import anyio
    from mcp import Client

    from learning_mcp.server.app import create_server
    from learning_mcp.tools.settings import Settings

    target = tmp_path / "tool-export"

    async def call():
        server = create_server(Settings.load(backend_url=backend.url, data_dir=str(tmp_path / "mcp-data")))
        async with Client(server) as client:
            ok = await client.call_tool("export_model", {"model": trained_job["fine_tuned_model"],
                                                         "path": str(target)})
            again = await client.call_tool("export_model", {"model": trained_job["fine_tuned_model"],
                                                            "path": str(target)})
            return ok, again

    ok, again = anyio.run(call)
    assert not ok.is_error and ok.structured_content["done"] and ok.structured_content["format"] == "merged"
    assert (target / "config.json").is_file()
    assert again.is_error  # never overwrites a non-empty folder


def test_eval_then_filter(backend, tiny_model, tmp_path):
    """eval scores a model on a task file through the backend's chat endpoint; filter reads the same traces."""
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"id": f"p{i}", "prompt": f"{i}+1=?", "answer": str(i + 1)}
                                                   for i in range(3)])
    done = cli(backend, tmp_path, "eval", "--model", str(tiny_model), "--tasks", str(tasks), "--max-tokens", "4",
               "--json")
    assert done.returncode == 0, done.stderr
    doc = last_json(done.stdout)
    assert doc["state"] == "succeeded" and doc["problems"] == 3 and doc["samples"] == 3
    assert 0.0 <= doc["pass_at_1"] <= 1.0
    kept = cli(backend, tmp_path, "filter", "--run-id", doc["eval_id"], "--output", str(tmp_path / "kept.jsonl"),
               "--json")
    out = last_json(kept.stdout)
    assert kept.returncode == (0 if out["written"] else 1)
    assert out["counts"] and out["written"] == round(doc["pass_at_1"] * 3)
