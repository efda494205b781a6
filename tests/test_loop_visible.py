"""Visible settings and early checks of run_sft_loop, through a real MCP client in both protocol eras: the
resolved config with the source of every value, the preflight model check, task-file errors with line numbers,
sample completions on request (eval and get_loop_status), the per-iteration chart as MCP image content, and the
zero-score warning at the start of a loop."""

from __future__ import annotations

import base64
import json

import anyio
import pytest
from mcp import Client

from conftest import write_jsonl
from test_loop import LOOP_HP, one_digit_tasks, seed_model, server, wait_loop  # noqa: F401 (fixture)

pytestmark = pytest.mark.anyio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_bad_model_and_bad_task_lines_are_refused_before_the_loop(backend, seed_model, tmp_path, mode):
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps({"id": "a", "prompt": "1+1=?", "answer": "2"}),
                              json.dumps({"id": "b", "answer": "3"}),  # no prompt
                              json.dumps({"id": "c", "prompt": "2+2=?", "answer": "4"}),
                              "{not json",
                              json.dumps({"id": "a", "prompt": "1+2=?", "answer": "3"})]) + "\n")
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    broken = tmp_path / "broken-model"  # has a config.json, but no tokenizer or weights: only loading can tell
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    async with Client(server(backend, tmp_path / "mcp"), mode=mode) as client:
        r = await client.call_tool("run_sft_loop", {"base_model": seed_model, "tasks": str(bad)})
        text = r.content[0].text
        assert r.is_error and "[invalid_tasks]" in text, text
        for line in ("line 2", "line 4", "line 5"):  # every bad line, with its number
            assert line in text, text
        assert "— each task line" not in text
        for model in (str(not_a_model), str(tmp_path / "missing-model"), str(broken)):
            r = await client.call_tool("run_sft_loop", {"base_model": model, "tasks": str(tasks),
                                                        "hyperparameters": LOOP_HP})
            text = r.content[0].text
            assert r.is_error and "[model_not_loadable]" in text, text
            assert model in text and "URL path" not in text
            # eval refuses the same model up front too (it used to start, then report failed)
            r = await client.call_tool("eval", {"model": model, "tasks": str(tasks), "wait_seconds": 0})
            text = r.content[0].text
            assert r.is_error and "[model_not_loadable]" in text and model in text and "eval" in text, text
        assert (await client.call_tool("list_loops", {})).structured_content["loops"] == []


async def test_resolved_config_samples_and_chart(backend, seed_model, tmp_path):
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    cfg = tmp_path / "loop.toml"
    cfg.write_text("[loop]\niterations = 1\n[eval]\nmax_tokens = 4\n")
    data_dir = tmp_path / "mcp"
    async with Client(server(backend, data_dir), mode="auto") as client:
        # only base_model + tasks (+ a file): the M-step's defaults are picked for this model and SAID
        r = await client.call_tool("run_sft_loop", {"config": str(cfg), "base_model": seed_model,
                                                    "tasks": str(tasks), "n": 2, "wait_seconds": 0})
        assert not r.is_error, r.content[0].text
        st = r.structured_content
        loop, hp = st["config"]["loop"], st["config"]["hyperparameters"]
        assert loop["n"] == {"value": 2, "source": "argument"}
        assert loop["iterations"] == {"value": 1, "source": "file"}
        assert loop["max_tokens"] == {"value": 4, "source": "file"}
        assert loop["temperature"] == {"value": 0.7, "source": "default"}
        assert loop["split_seed"]["value"] == 0 and loop["split_seed"]["source"].startswith("default")
        # the seed model is the tiny model (hidden_size 64): a learning rate that can move it, not 1e-5
        assert hp["learning_rate"]["value"] == 2e-3 and "hidden_size 64" in hp["learning_rate"]["source"]
        assert hp["seed"]["value"] == 0
        assert any("learning_rate" in w and "hyperparameters" in w for w in st["warnings"]), st["warnings"]
        done = await wait_loop(client, st["loop_id"], timeout=400)
        assert done["state"] == "succeeded", done
        assert done["config"] == st["config"]  # get_loop_status keeps it
        row = done["table"][0]
        assert row["truncated_dropped"] is not None and row["truncated_dropped"] >= 0
        assert row["kept"] > 0
        job_hp = (await client.call_tool("get_job_status", {"job_id": row["job_id"]})).structured_content
        assert job_hp["status"] == "succeeded"

    async with Client(server(backend, data_dir), mode="legacy") as client:  # the other era, same loop on disk
        r = await client.call_tool("get_loop_status", {"loop_id": st["loop_id"], "chart": True,
                                                       "include_samples": 2})
        assert not r.is_error, r.content[0].text
        images = [c for c in r.content if c.type == "image"]
        assert len(images) == 1 and images[0].mime_type == "image/png"
        assert base64.b64decode(images[0].data).startswith(PNG_MAGIC)
        out = r.structured_content
        assert out["chart_path"] and open(out["chart_path"], "rb").read(8) == PNG_MAGIC
        samples = out["completions"]
        assert samples and all(1 <= len(p["samples"]) <= 2 for p in samples)
        assert all(isinstance(s["completion"], str) and isinstance(s["correct"], bool)
                   for p in samples for s in p["samples"])
        assert "trunc" in r.content[0].text  # the table's truncated column
        # eval returns completions too, correct and incorrect mixed
        r = await client.call_tool("eval", {"model": seed_model, "tasks": str(tasks), "split": "validation",
                                            "n": 3, "temperature": 1.0, "max_tokens": 4, "include_samples": 3,
                                            "wait_seconds": 50})
        assert not r.is_error, r.content[0].text
        ev = r.structured_content
        assert ev["state"] == "succeeded" and len(ev["completions"]) == 20
        flat = [s for p in ev["completions"] for s in p["samples"]]
        assert all(len(p["samples"]) == 3 for p in ev["completions"])
        # n = k: every sample is shown, so the shown verdicts add up to the eval's count
        assert sum(s["correct"] for s in flat) == ev["correct"] and len(flat) == ev["samples"]
        assert {s["correct"] for s in flat} <= {True, False}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_verifier_that_scores_nothing_is_reported_at_the_start(backend, seed_model, tmp_path, mode):
    pairs = [(a, b) for a in range(10) for b in range(10)]
    rows = [{"id": f"{a}+{b}", "prompt": f"{a}+{b}=?", "answer": f"The answer is #### {a + b} units",
             "split": "validation" if i < 10 else "train"} for i, (a, b) in enumerate(pairs[:40])]
    tasks = write_jsonl(tmp_path / "tasks.jsonl", rows)  # exact match can never read these references
    async with Client(server(backend, tmp_path / "mcp"), mode=mode) as client:
        r = await client.call_tool("run_sft_loop", {"base_model": seed_model, "tasks": str(tasks), "n": 2,
                                                    "iterations": 1, "hyperparameters": LOOP_HP,
                                                    "wait_seconds": 0})
        assert not r.is_error, r.content[0].text
        loop_id = r.structured_content["loop_id"]
        with anyio.fail_after(120):
            while True:  # reported as soon as the seed model's validation eval is done
                st = (await client.call_tool("get_loop_status", {"loop_id": loop_id, "wait_seconds": 2})
                      ).structured_content
                if st["warnings"] and "scored all" in " ".join(st["warnings"]) or st["terminal"]:
                    break
        warning = " ".join(st["warnings"])
        assert "scored all 10 validation problem(s) 0" in warning, st
        await client.call_tool("cancel_loop", {"loop_id": loop_id})


async def test_loop_config_typos_are_named(backend, seed_model, tmp_path):
    """A misspelt loop table or setting is refused with a "did you mean"; a misspelt SFT key reaches the loop's
    warnings the way create_job reports it (a fresh-user trial saw all three ignored without a word)."""
    tasks = one_digit_tasks(tmp_path / "tasks.jsonl")
    base = f'[loop]\nbase_model = "{seed_model}"\ntasks = "{tasks}"\niterations = 1\n'
    async with Client(server(backend, tmp_path / "mcp")) as client:
        r = await client.call_tool("run_sft_loop", {"config": base + "[filtr]\nmax_per_problem = 1\n"})
        assert r.is_error and "[invalid_loop_config]" in r.content[0].text, r.content[0].text
        assert "[filtr]" in r.content[0].text and "did you mean [filter]?" in r.content[0].text
        r = await client.call_tool("run_sft_loop", {"config": base.replace("iterations", "iteratons")})
        text = r.content[0].text
        assert r.is_error and "unknown setting 'iteratons' (did you mean 'iterations'?)" in text, text
        assert "Pass base_model and tasks" not in text
        hp = "".join(f"{k} = {v}\n" for k, v in LOOP_HP.items())
        r = await client.call_tool("run_sft_loop", {"config": base + '[algorithm]\ntype = "offline"\nmethod = "sft"\n'
                                                   'variety = "fft"\n[hyperparameters]\n' + hp +
                                                   "learning_rat = 1e-3\n", "wait_seconds": 0})
        assert not r.is_error, r.content[0].text
        out = r.structured_content
        assert any("hyperparameters.learning_rat" in w and "did you mean hyperparameters.learning_rate?" in w
                   for w in out["warnings"]), out["warnings"]
        await client.call_tool("cancel_loop", {"loop_id": out["loop_id"]})
