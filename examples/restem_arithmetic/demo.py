"""ReST-EM on two-digit addition, driven by an agent-style MCP client — the README's main command.

What it does, exactly as an agent host would:

1. builds a tiny model offline (no Hub) and generates the data with a fixed seed (``make_data.py``);
2. starts ``learning-mcp`` over stdio (the server starts the embedded backend on its own);
3. seed model: ``validate_dataset`` → ``upload_file`` → ``create_job`` → polls ``get_job_status`` until the job
   succeeds and hands back ``fine_tuned_model``;
4. ``run_sft_loop`` from that seed model (``loop.toml``), polls ``get_loop_status`` and prints the
   per-iteration table, then the held-out greedy accuracy of the seed model and of the best model.

Run: ``python examples/restem_arithmetic/demo.py`` (``--help`` for options). Everything it writes goes under
``examples/restem_arithmetic/out/`` (or ``--out``); the backend it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_data import make_data  # noqa: E402


def say(message: str) -> None:
    print(message, flush=True)


async def call(client, tool: str, args: dict) -> dict:
    result = await client.call_tool(tool, args)
    if result.is_error:
        raise SystemExit(f"{tool} failed: {result.content[0].text}")
    return result.structured_content


async def run_demo(args: argparse.Namespace) -> dict:
    from mcp import Client, StdioServerParameters

    out = Path(args.out).resolve()
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    from learning_mcp.backend.tiny import build_tiny_model

    model_dir = build_tiny_model(out / "tiny-init", size="small", seed=args.seed)
    data = make_data(out, seed=args.seed, n_seed=args.seed_examples, n_train=args.train_problems,
                     n_val=args.val_problems)
    say(f"built the tiny model at {model_dir} and the data in {out} (seed {args.seed})")

    env = {**os.environ, "LEARNING_MCP_DATA_DIR": str(out / "data"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    for name in ("SYNTH_API_KEY", "SYNTH_BACKEND_URL", "BACKEND_BASE_URL", "SYNTH_BACKEND_OVERRIDE"):
        env.pop(name, None)  # the demo runs on the embedded backend
    params = StdioServerParameters(command=sys.executable, args=["-m", "learning_mcp", "--log-level", args.log_level],
                                   env=env, cwd=str(HERE))
    summary: dict = {}
    try:
        async with Client(params) as client:
            say(f"connected to learning-mcp over stdio ({client.protocol_version})")
            # -- the seed model, through the dataset and job tools -------------------------------------------
            report = await call(client, "validate_dataset", {"path": str(data["seed"])})
            say(f"validate_dataset: ok={report['ok']} examples={report['examples']}")
            upload = await call(client, "upload_file", {"path": str(data["seed"])})
            say(f"upload_file: {upload['file_id']} ({upload['bytes']} bytes, {upload['status']})")
            job = await call(client, "create_job", {"config": str(HERE / "seed_sft.toml"),
                                                    "training_file_id": upload["file_id"], "model": str(model_dir)})
            say(f"create_job: {job['job_id']} started={job['started']}")
            since = 0
            while True:
                status = await call(client, "get_job_status", {"job_id": job["job_id"], "since_seq": since,
                                                               "wait_seconds": 20})
                since = status["next_since_seq"]
                prog = status.get("progress") or {}
                if prog.get("step") is not None:
                    say(f"  job {status['status']}: step {prog['step']}/{prog.get('total_steps')} "
                        f"loss {prog.get('loss') or 0:.4f}")
                else:
                    say(f"  job {status['status']}")
                if status["terminal"]:
                    break
            if status["status"] != "succeeded":
                raise SystemExit(f"seed job ended {status['status']}: {status.get('error')}")
            seed_model = status["fine_tuned_model"]
            say(f"seed model: {seed_model}")

            # -- ReST-EM ---------------------------------------------------------------------------------------
            loop_args = {"config": str(HERE / "loop.toml"), "base_model": seed_model,
                         "tasks": str(data["tasks"]), "wait_seconds": 10}
            if args.iterations:
                loop_args["iterations"] = args.iterations
            loop = await call(client, "run_sft_loop", loop_args)
            loop_id = loop["loop_id"]
            say(f"run_sft_loop: {loop_id} ({loop['state']})")
            last = None
            while True:
                loop = await call(client, "get_loop_status", {"loop_id": loop_id, "wait_seconds": 30})
                if loop["message"] != last:
                    last = loop["message"]
                    say(f"  [{time.monotonic() - t_start:6.0f}s] {last}")
                if loop["terminal"]:
                    break
            from learning_mcp.tools.loop_manager import LoopStatusResult, format_table

            say("")
            say(format_table(LoopStatusResult(**loop)))
            say("")
            if loop["state"] != "succeeded":
                raise SystemExit(f"loop ended {loop['state']}: {loop.get('error')}")
            base_acc, best_acc = loop["base_val_pass_at_1"], loop["best_val_pass_at_1"]
            gain = (best_acc - base_acc) * 100
            say(f"held-out greedy accuracy ({loop['val_problems']} problems): seed model {base_acc:.1%} -> best "
                f"{best_acc:.1%} (iteration {loop['best_iteration']}, {gain:+.1f} points); stopped: "
                f"{loop['stopped_reason']}")
            summary = {"seed": args.seed, "seed_model": seed_model, "loop_id": loop_id,
                       "base_val_pass_at_1": base_acc, "best_val_pass_at_1": best_acc, "gain_points": gain,
                       "best_iteration": loop["best_iteration"], "stopped_reason": loop["stopped_reason"],
                       "table": loop["table"], "seconds": round(time.monotonic() - t_start, 1)}
    finally:
        stop_backend(out / "data")
    say(f"total time {time.monotonic() - t_start:.0f}s")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def stop_backend(data_dir: Path) -> None:
    """Stop the embedded backend the server started for this demo (it runs detached on purpose)."""
    from learning_mcp.backend.launcher import stop_backend as stop

    say(stop(data_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE / "out"), help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data and model seed")
    parser.add_argument("--iterations", type=int, default=None, help="override [loop] iterations")
    parser.add_argument("--seed-examples", type=int, default=400)
    parser.add_argument("--train-problems", type=int, default=2000)
    parser.add_argument("--val-problems", type=int, default=500)
    parser.add_argument("--keep", action="store_true", help="do not wipe the output folder first")
    parser.add_argument("--log-level", default="WARNING", help="the MCP server's stderr log level")
    parser.add_argument("--min-gain", type=float, default=None,
                        help="exit 1 unless held-out accuracy rises by at least this many points")
    args = parser.parse_args(argv)
    summary = anyio.run(run_demo, args)
    if args.min_gain is not None and summary.get("gain_points", 0) < args.min_gain:
        say(f"FAILED: gain {summary.get('gain_points', 0):.1f} < {args.min_gain} points")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
