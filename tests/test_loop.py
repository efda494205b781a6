"""run_sft_loop end to end: a real MCP client, the real embedded backend, real training and sampling."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from mcp import Client

from conftest import wait_job, write_jsonl
from learning_mcp.server.app import create_server
from learning_mcp.tools.settings import Settings

pytestmark = pytest.mark.anyio


def one_digit_tasks(path: Path, *, n_val: int = 20) -> Path:
    pairs = [(a, b) for a in range(10) for b in range(10)]
    random.Random(1).shuffle(pairs)
    rows = [{"id": f"{a}+{b}", "prompt": f"{a}+{b}=?", "answer": str(a + b),
             "split": "validation" if i < n_val else "train"} for i, (a, b) in enumerate(pairs)]
    return write_jsonl(path, rows)


@pytest.fixture(scope="module")
def seed_model(backend, tmp_path_factory) -> str:
    """A weak seed model: the small tiny model briefly trained on half the one-digit sums."""
    from learning_mcp.backend.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("seed")
    init = build_tiny_model(root / "small", size="small", seed=0)
    pairs = [(a, b) for a in range(10) for b in range(10)][::2]
    data = write_jsonl(root / "seed.jsonl", [{"messages": [{"role": "user", "content": f"{a}+{b}=?"},
                                                           {"role": "assistant", "content": str(a + b)}]}
                                             for a, b in pairs])
    with open(data, "rb") as fh:
        file_id = httpx.post(f"{backend.api}/files", files={"file": ("seed.jsonl", fh)},
                             data={"purpose": "fine-tune"}).json()["id"]
    job = httpx.post(f"{backend.api}/learning/jobs", json={
        "model": str(init), "training_file_id": file_id, "training_type": "sft_offline",
        "hyperparameters": {"n_epochs": 1, "total_steps": 60, "per_device_batch": 25, "learning_rate": 3e-3}}).json()
    httpx.post(f"{backend.api}/learning/jobs/{job['id']}/start")
    done = wait_job(backend.api, job["id"])
    assert done["status"] == "succeeded", done
    return done["fine_tuned_model"]


LOOP_HP = {"n_epochs": 1, "total_steps": 40, "per_device_batch": 16, "learning_rate": 3e-3}


async def wait_loop(client: Client, loop_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await client.call_tool("get_loop_status", {"loop_id": loop_id, "wait_seconds": 10})
        assert not r.is_error, r.content[0].text
        if r.structured_content["terminal"]:
            return r.structured_content
    raise AssertionError(f"loop {loop_id} did not finish")


async def wait_step(client: Client, loop_id: str, step: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = (await client.call_tool("get_loop_status", {"loop_id": loop_id})).structured_content
        if st["table"] and st["table"][-1]["step"] == step and (step != "train" or st["current_job_id"]):
            return st
        assert not st["terminal"], st
        await anyio.sleep(0.2)
    raise AssertionError(f"loop never reached {step}")


def server(backend, data_dir: Path):
    return create_server(Settings.load(backend_url=backend.url, data_dir=str(data_dir)))


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_two_iteration_loop_runs_to_the_end(backend, seed_model, tmp_path, mode):
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    async with Client(server(backend, tmp_path / "mcp"), mode=mode) as client:
        progress: list[tuple] = []

        async def on_progress(p, total, message):
            progress.append((p, total, message))

        t0 = time.monotonic()
        r = await client.call_tool("run_sft_loop", {
            "base_model": seed_model, "tasks": str(tasks), "iterations": 2, "n": 4, "temperature": 1.0,
            "hyperparameters": LOOP_HP, "wait_seconds": 3}, progress_callback=on_progress)
        assert not r.is_error, r.content[0].text
        assert time.monotonic() - t0 < 15  # returns a handle within wait_seconds (+ slack)
        assert r.structured_content["state"] == "running" and progress
        loop_id = r.structured_content["loop_id"]
        st = await wait_loop(client, loop_id)
    assert st["state"] == "succeeded", st
    assert st["stopped_reason"] in {"completed", "val_not_improving"}
    rows = st["table"]
    assert 1 <= len(rows) <= 2 and all(r["step"] == "done" for r in rows)
    first = rows[0]
    assert first["model"] == seed_model and first["samples"] == 80 * 4 and first["problems"] == 80
    assert 0 < first["kept"] <= 4 * first["solved"]
    assert first["job_id"] and first["fine_tuned_model"].startswith("ft:") and first["final_train_loss"] is not None
    assert st["base_val_pass_at_1"] is not None and first["val_pass_at_1"] is not None
    # reset_to_base: every M-step trained from the base model, not the previous ft model
    for row in rows:
        job = httpx.get(f"{backend.api}/learning/jobs/{row['job_id']}").json()
        assert job["model"] == seed_model
    # the kept samples are valid SFT data in Synth's filter-output shape, at most 4 per problem
    kept = [json.loads(l) for l in (Path(st["state_dir"]) / "iter_01_kept.jsonl").read_text().splitlines()]
    per_problem: dict[str, int] = {}
    for row in kept:
        assert row["messages"][-1]["role"] == "assistant" and row["metadata"]["total_reward"] == 1
        per_problem[row["metadata"]["task_id"]] = per_problem.get(row["metadata"]["task_id"], 0) + 1
    assert max(per_problem.values()) <= 4


async def test_early_stopping_triggers_when_validation_does_not_improve(backend, seed_model, tmp_path):
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    frozen = {**LOOP_HP, "total_steps": 2, "learning_rate": 1e-12}  # the M-step cannot change the model
    async with Client(server(backend, tmp_path / "mcp")) as client:
        r = await client.call_tool("run_sft_loop", {
            "base_model": seed_model, "tasks": str(tasks), "iterations": 4, "n": 2, "hyperparameters": frozen,
            "wait_seconds": 0})
        st = await wait_loop(client, r.structured_content["loop_id"])
    assert st["state"] == "succeeded" and st["stopped_reason"] == "val_not_improving"
    assert len(st["table"]) == 1  # stopped after the first iteration that did not beat the seed model
    assert st["best_model"] == seed_model


async def test_loop_survives_a_server_restart(backend, seed_model, tmp_path):
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    data_dir = tmp_path / "mcp"
    async with Client(server(backend, data_dir)) as client:
        r = await client.call_tool("run_sft_loop", {
            "base_model": seed_model, "tasks": str(tasks), "iterations": 1, "n": 2, "hyperparameters": LOOP_HP,
            "wait_seconds": 0})
        loop_id = r.structured_content["loop_id"]
        st = await wait_step(client, loop_id, "train")
        job_id = st["current_job_id"]
    # the first server is gone; its loop is still 'running' on disk and resumes in a new server
    state = json.loads((data_dir / "loops" / loop_id / "state.json").read_text())
    assert state["state"] == "running"
    async with Client(server(backend, data_dir)) as client:
        st = await wait_loop(client, loop_id)
    assert st["state"] == "succeeded", st
    assert st["table"][0]["job_id"] == job_id  # re-attached to the same job, not a second one
    jobs = httpx.get(f"{backend.api}/learning/jobs", params={"limit": 500}).json()["jobs"]
    assert [j["id"] for j in jobs if j["training_file_id"] == st["table"][0]["file_id"]] == [job_id]


async def test_cancel_loop_cancels_its_job(backend, seed_model, tmp_path):
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    slow = {**LOOP_HP, "total_steps": 100000}
    async with Client(server(backend, tmp_path / "mcp")) as client:
        r = await client.call_tool("run_sft_loop", {
            "base_model": seed_model, "tasks": str(tasks), "iterations": 1, "n": 2, "hyperparameters": slow,
            "wait_seconds": 0})
        loop_id = r.structured_content["loop_id"]
        st = await wait_step(client, loop_id, "train")
        job_id = st["current_job_id"]
        # cancelling a *call* does not cancel the loop
        with anyio.move_on_after(0.5):
            await client.call_tool("get_loop_status", {"loop_id": loop_id, "wait_seconds": 30})
        assert not (await client.call_tool("get_loop_status", {"loop_id": loop_id})).structured_content["terminal"]
        r = await client.call_tool("cancel_loop", {"loop_id": loop_id})
        assert r.structured_content["state"] == "cancelled"
        again = await client.call_tool("cancel_loop", {"loop_id": loop_id})  # harmless
        assert again.structured_content["state"] == "cancelled"
    assert wait_job(backend.api, job_id, timeout=30)["status"] == "cancelled"


@pytest.mark.parametrize("case", ["raising_verifier", "unreachable_chat", "empty_filter"])
async def test_failures_end_the_loop_with_a_clear_status(backend, seed_model, tiny_model, tmp_path, case):
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    args = {"base_model": seed_model, "tasks": str(tasks), "iterations": 1, "n": 2, "hyperparameters": LOOP_HP,
            "wait_seconds": 0}
    expect = {}
    if case == "raising_verifier":
        (tmp_path / "myverifier.py").write_text("def check(completion, answer, task):\n    raise ValueError('boom')\n")
        args["verifier"] = f"{tmp_path / 'myverifier.py'}:check"
        expect = {"code": "verifier_error", "phrase": "boom"}
    elif case == "unreachable_chat":
        cfg = tmp_path / "loop.toml"
        cfg.write_text(f'[loop]\nchat_url = "http://127.0.0.1:9/v1"\n')
        args["config"] = str(cfg)
        expect = {"code": "chat_endpoint_error", "phrase": "127.0.0.1:9"}
    else:
        args["base_model"] = str(tiny_model)  # an untrained model solves nothing
        expect = {"code": "empty_filter_result", "phrase": "no sample passed the verifier"}
    async with Client(server(backend, tmp_path / "mcp")) as client:
        r = await client.call_tool("run_sft_loop", args)
        assert not r.is_error, r.content[0].text
        with anyio.fail_after(120):
            st = await wait_loop(client, r.structured_content["loop_id"], timeout=120)
    assert st["state"] == "failed"
    assert st["error"]["code"] == expect["code"], st["error"]
    assert expect["phrase"] in st["error"]["message"], st["error"]


async def test_bad_loop_arguments_are_tool_errors(backend, seed_model, tmp_path):
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    sft_rows = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                  {"role": "assistant", "content": "yo"}]}])
    async with Client(server(backend, tmp_path / "mcp")) as client:
        # refused before any sampling is spent, each with what to fix
        for args, code in (
            ({"verifier": "no_such_module_xyz:check"}, "[verifier_error]"),
            ({"verifier": "fuzzy"}, "[verifier_error]"),
            ({"tasks": str(sft_rows)}, "[invalid_tasks]"),
            ({"hyperparameters": {"learning_rate": -1}}, "learning_rate must be greater than zero"),
        ):
            r = await client.call_tool("run_sft_loop", {"base_model": seed_model, "tasks": str(tasks), **args})
            assert r.is_error and code in r.content[0].text, r.content[0].text
        assert (await client.call_tool("list_loops", {})).structured_content["loops"] == []
        r = await client.call_tool("run_sft_loop", {"base_model": "x", "tasks": str(tmp_path / "missing.jsonl")})
        assert r.is_error and "[tasks_not_found]" in r.content[0].text
        r = await client.call_tool("run_sft_loop", {"tasks": str(tmp_path)})
        assert r.is_error and "[invalid_loop_config]" in r.content[0].text and "base_model" in r.content[0].text
        r = await client.call_tool("get_loop_status", {"loop_id": "loop-nope"})
        assert r.is_error and "Unknown loop_id" in r.content[0].text


async def test_eval_and_filter_tools(backend, seed_model, tmp_path):
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    async with Client(server(backend, tmp_path / "mcp")) as client:
        r = await client.call_tool("eval", {"model": seed_model, "tasks": str(tasks), "n": 4, "temperature": 1.0,
                                            "max_tokens": 4, "wait_seconds": 50})
        assert not r.is_error, r.content[0].text
        ev = r.structured_content
        assert ev["state"] == "succeeded" and ev["problems"] == 100 and ev["samples"] == 400
        assert 0 < ev["pass_at_1"] <= ev["pass_at_n"] <= 1
        again = await client.call_tool("eval", {"eval_id": ev["eval_id"]})
        assert again.structured_content["pass_at_1"] == ev["pass_at_1"]
        r = await client.call_tool("filter_traces", {"run_id": ev["eval_id"], "max_per_problem": 1})
        assert not r.is_error, r.content[0].text
        fl = r.structured_content
        assert fl["written"] == fl["counts"]["written"] == ev["solved_any"] and fl["valid"]
        r = await client.call_tool("validate_dataset", {"path": fl["output"], "min_messages": 2})
        assert r.structured_content["ok"]


def one_digit_task_app(env_key: str):
    """A Synth-style task app: seed s asks (s // 10) + (s % 10); it calls the policy's inference_url itself."""
    app = FastAPI()

    @app.post("/rollout")
    async def rollout(request: Request):
        if request.headers.get("x-api-key") != env_key:
            return JSONResponse({"detail": "Invalid or missing API key"}, status_code=401)
        body = await request.json()
        seed = body["env"]["seed"]
        a, b = (seed // 10) % 10, seed % 10
        messages = [{"role": "user", "content": f"{a}+{b}=?"}]
        config = body["policy"]["config"]
        async with httpx.AsyncClient(timeout=60) as client:
            reply = await client.post(config["inference_url"], json={
                "model": config["model"], "messages": messages, "max_tokens": 4,
                "temperature": config.get("temperature", 0.0)})
        text = reply.json()["choices"][0]["message"]["content"]
        reward = 1.0 if text.strip() == str(a + b) else 0.0
        return {"run_id": body["run_id"], "trajectories": [], "metrics": {"mean_return": reward, "num_episodes": 1},
                "aborted": False, "ops_executed": 2,
                "trace": {"session_trace": {"session_id": f"s{seed}", "markov_blanket_message_history": [
                    {"message_type": "user", "content": {"text": messages[0]["content"]}},
                    {"message_type": "assistant", "content": {"text": text}}]}}}

    return app


async def test_loop_with_a_task_app_as_the_environment(backend, seed_model, tmp_path, monkeypatch):
    from chat_stub import serve_asgi

    monkeypatch.setenv("ENVIRONMENT_API_KEY", "env-secret")
    base_url, stop = serve_asgi(one_digit_task_app("env-secret"))
    try:
        cfg = tmp_path / "loop.toml"
        cfg.write_text(f'[loop]\ntask_app_url = "{base_url}"\ntrain_seeds = {list(range(20, 100))}\n'
                       f'val_seeds = {list(range(0, 20))}\niterations = 1\ntemperature = 1.0\n')
        async with Client(server(backend, tmp_path / "mcp")) as client:
            r = await client.call_tool("run_sft_loop", {"config": str(cfg), "base_model": seed_model,
                                                        "hyperparameters": LOOP_HP, "wait_seconds": 0})
            assert not r.is_error, r.content[0].text
            st = await wait_loop(client, r.structured_content["loop_id"])
    finally:
        stop()
    assert st["state"] == "succeeded", st
    row = st["table"][0]
    assert row["problems"] == 80 and row["kept"] and row["fine_tuned_model"]
    assert st["base_val_pass_at_1"] is not None and row["val_pass_at_1"] is not None


async def test_a_crashed_training_worker_is_retried(backend, seed_model, tmp_path):
    import os
    import signal

    import psutil

    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    async with Client(server(backend, tmp_path / "mcp")) as client:
        r = await client.call_tool("run_sft_loop", {
            "base_model": seed_model, "tasks": str(tasks), "iterations": 1, "n": 2,
            "hyperparameters": {**LOOP_HP, "total_steps": 400}, "wait_seconds": 0})
        loop_id = r.structured_content["loop_id"]
        first_job = (await wait_step(client, loop_id, "train"))["current_job_id"]
        pid = None
        deadline = time.monotonic() + 60
        while pid is None and time.monotonic() < deadline:
            for child in psutil.Process(backend.proc.pid).children(recursive=True):
                try:
                    if first_job in " ".join(child.cmdline()):
                        pid = child.pid
                except psutil.Error:
                    continue
            await anyio.sleep(0.2)
        assert pid, "worker not found"
        os.kill(pid, signal.SIGKILL)
        st = await wait_loop(client, loop_id)
    assert st["state"] == "succeeded", st
    assert st["table"][0]["job_id"] != first_job
    assert httpx.get(f"{backend.api}/learning/jobs/{first_job}").json()["error"]["code"] == "worker_crashed"


async def test_keys_only_go_where_they_belong(backend, seed_model, tmp_path, monkeypatch):
    """An agent-chosen endpoint never receives the learning API's key or an arbitrary environment secret."""
    from chat_stub import start_chat_stub

    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-TOPSECRET")
    stub = start_chat_stub(lambda messages, index: "3")
    try:
        settings = Settings.load(backend_url=backend.url, data_dir=str(tmp_path / "mcp"))
        monkeypatch.setenv("SYNTH_API_KEY", "sk-SECRET-KEY")  # sent to the learning API only
        async with Client(create_server(settings)) as client:
            r = await client.call_tool("eval", {"model": seed_model, "tasks": str(tasks), "chat_url": stub.chat_url,
                                                "max_problems": 3, "wait_seconds": 30})
            assert r.structured_content["state"] == "succeeded", r.content[0].text
            cfg = tmp_path / "loop.toml"
            cfg.write_text(f'[loop]\nchat_url = "{stub.chat_url}"\nchat_api_key_env = "AWS_SECRET_ACCESS_KEY"\n')
            r = await client.call_tool("run_sft_loop", {"config": str(cfg), "base_model": seed_model,
                                                        "tasks": str(tasks)})
            assert r.is_error and "[key_not_allowed]" in r.content[0].text
        seen = json.dumps([dict(h) for h in stub.state.headers])
        assert "sk-SECRET-KEY" not in seen and "aws-TOPSECRET" not in seen
        assert stub.state.served > 0
    finally:
        stub.stop()


async def test_filter_traces_never_clobbers_a_file(backend, seed_model, tmp_path):
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    precious = tmp_path / "precious.jsonl"
    precious.write_text("keep me\n")
    async with Client(server(backend, tmp_path / "mcp")) as client:
        ev = (await client.call_tool("eval", {"model": seed_model, "tasks": str(tasks), "max_problems": 5,
                                              "wait_seconds": 40})).structured_content
        r = await client.call_tool("filter_traces", {"run_id": ev["eval_id"], "output": str(precious)})
        assert r.is_error and "[output_exists]" in r.content[0].text
        assert precious.read_text() == "keep me\n"
        r = await client.call_tool("filter_traces", {"run_id": "typo", "output": str(tmp_path / "new.jsonl")})
        assert r.is_error and "[unknown_run]" in r.content[0].text and not (tmp_path / "new.jsonl").exists()
        r = await client.call_tool("filter_traces", {"db": str(precious), "output": str(tmp_path / "x.jsonl")})
        assert r.is_error and "[invalid_db]" in r.content[0].text


async def test_two_servers_on_one_data_dir_run_a_loop_once(backend, seed_model, tmp_path):
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    data_dir = tmp_path / "mcp"
    async with Client(server(backend, data_dir)) as first:
        r = await first.call_tool("run_sft_loop", {"base_model": seed_model, "tasks": str(tasks), "iterations": 1,
                                                   "n": 2, "hyperparameters": LOOP_HP, "wait_seconds": 0})
        loop_id = r.structured_content["loop_id"]
        async with Client(server(backend, data_dir)) as second:  # its start-up resume must not run the loop again
            await anyio.sleep(2)
            st = (await second.call_tool("get_loop_status", {"loop_id": loop_id})).structured_content
            assert st["state"] == "running"
            # a cancel from the other server reaches the loop through the cancel file
            r = await second.call_tool("cancel_loop", {"loop_id": loop_id})
            assert r.structured_content["state"] == "cancelled", r.content[0].text
        st = (await first.call_tool("get_loop_status", {"loop_id": loop_id})).structured_content
        assert st["state"] == "cancelled"


def test_loop_example_resource_is_a_valid_loop_config():
    from learning_mcp.tools.loop import LOOP_EXAMPLE_TOML, LoopConfig, parse_loop_toml
    from learning_mcp.tools.sft_config import build_sft_plan

    args, _ = parse_loop_toml(LOOP_EXAMPLE_TOML)
    cfg = LoopConfig(**args)
    assert cfg.reset_to_base and cfg.n == 8 and cfg.max_per_problem == 4
    plan = build_sft_plan(cfg.sft_config, training_file_id="file-x", model=cfg.base_model, target="local",
                          require_dataset_path=False)
    assert plan.payload["hyperparameters"]["n_epochs"] == 2 and plan.payload["hyperparameters"]["learning_rate"] == 2e-3
