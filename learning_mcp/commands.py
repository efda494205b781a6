"""The Synth-style commands: ``learning-mcp train | status | eval | filter | loop | export``.

They mirror ``synth-ai train`` / ``eval`` / ``filter`` and run the SAME code the MCP tools run (one implementation):
``train`` is :func:`tools.jobs.create_job_from_config` (validate → upload → create → start, as ``create_job``) then
:func:`tools.jobs.job_status` in a loop (as ``get_job_status`` with ``wait_seconds``); ``eval`` is
:func:`tools.eval_runs.eval_call`; ``filter`` is :func:`tools.filter_run.filter_traces_call`; ``loop`` is
:class:`tools.loop_manager.LoopManager` on :func:`tools.loop.loop_config_from` + ``preflight`` (as
``run_sft_loop``); ``export`` posts to the backend's export route (what the ``export_model`` contract does). The
server's :class:`~learning_mcp.server.app.AppState` supplies the client (starting the embedded backend when no
learning API is configured), so target resolution is the server's too.

Output: a rich progress display on stderr (step/total, loss, ETA while a job trains; iterations while a loop runs),
then a summary; with ``--json`` no display and one JSON document on stdout. Exit codes (:data:`EXIT_CODES`):
0 succeeded (or created, with ``--no-poll``; or still running, for ``status``), 1 the job/loop/eval failed or was
cancelled, 2 a usage, config or dataset error (nothing was started), 3 the learning API could not be reached or
answered 5xx, 130 interrupted (the job keeps running; ``learning-mcp status JOB`` follows it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from learning_mcp.tools.errors import LearningMCPError
from learning_mcp.tools.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = {EXIT_OK: "succeeded", EXIT_FAILED: "failed or cancelled", EXIT_USAGE: "usage, config or dataset error",
              EXIT_API: "learning API unreachable or 5xx", EXIT_INTERRUPTED: "interrupted"}
API_CODES = {"unreachable", "backend_unreachable", "backend_error", "backend_start_failed", "auth_failed", "rate_limited", "invalid_response"}
FOLLOW_OUTAGE_S = 120.0  # following a job gives up after the API is unreachable this long (exit 3)
COMMANDS = ("train", "status", "eval", "filter", "loop", "export")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the commands on the top-level parser's subparsers."""
    epilog = "exit codes: " + ", ".join(f"{code} {what}" for code, what in EXIT_CODES.items())
    train = sub.add_parser("train", help="validate, upload, create and start an SFT job from a TOML, then follow it",
                           description="As `synth-ai train`: the TOML's [job].data (or --dataset) is validated and "
                                       "uploaded, the job is created and started, then followed to the end.",
                           epilog=epilog)
    train.add_argument("config", help="SFT TOML (Synth's format; see learning://config/example)")
    train.add_argument("--dataset", help="training JSONL (overrides [job].data)")
    train.add_argument("--model", help="base model (overrides [job].model): Hub id, local path or ft: id")
    train.add_argument("--examples", type=int, metavar="N", help="upload only the first N records")
    train.add_argument("--no-poll", action="store_true", help="return after starting the job (print its id)")
    train.add_argument("--poll-interval", type=float, default=2.0, metavar="S",
                       help="seconds between status reads (default %(default)s)")
    train.add_argument("--dry-run", action="store_true", help="validate config and dataset only; create nothing")
    train.add_argument("--json", action="store_true", help="one JSON document on stdout, no progress display")

    status = sub.add_parser("status", help="a job's status, progress and fine-tuned model",
                            description="One read of a job (as get_job_status); --follow follows it to the end.",
                            epilog=epilog)
    status.add_argument("job_id")
    status.add_argument("--follow", action="store_true", help="follow the job until it ends, with a progress bar")
    status.add_argument("--poll-interval", type=float, default=2.0, metavar="S")
    status.add_argument("--json", action="store_true")

    ev = sub.add_parser("eval", help="sample a model on a task file and score it (pass@1, pass@n)",
                        description="As the eval tool: the chat endpoint of the learning API answers each problem.",
                        epilog=epilog)
    ev.add_argument("--model", required=True, help="base id, local path or ft: id")
    ev.add_argument("--tasks", required=True, help="tasks JSONL (see learning://config/loop-example)")
    ev.add_argument("--split", default="all", choices=["all", "train", "validation"])
    ev.add_argument("--n", type=int, default=1, help="samples per problem (default 1)")
    ev.add_argument("--temperature", type=float, default=0.0)
    ev.add_argument("--top-p", type=float, default=1.0)
    ev.add_argument("--top-k", type=int, default=None)
    ev.add_argument("--max-tokens", type=int, default=256)
    ev.add_argument("--verifier", default="exact", help="exact | numeric | boxed | answer | module:function")
    ev.add_argument("--max-problems", type=int, default=None)
    ev.add_argument("--val-fraction", type=float, default=0.2)
    ev.add_argument("--split-seed", type=int, default=0)
    ev.add_argument("--chat-url", default=None, help="another OpenAI-compatible chat completions URL")
    ev.add_argument("--json", action="store_true")

    fl = sub.add_parser("filter", help="turn correct traces into an SFT JSONL (as filter_traces)", epilog=epilog)
    fl.add_argument("config", nargs="?", help="filter TOML ([filter] table), optional")
    fl.add_argument("--run-id", help="an eval_id or loop_id whose traces to use")
    fl.add_argument("--db", help="trace database (default: the data dir's)")
    fl.add_argument("--output", help="JSONL to write")
    fl.add_argument("--reward-threshold", type=float)
    fl.add_argument("--max-per-problem", type=int)
    fl.add_argument("--limit", type=int)
    fl.add_argument("--overwrite", action="store_true")
    fl.add_argument("--json", action="store_true")

    lp = sub.add_parser("loop", help="run a ReST-EM self-training loop from a loop TOML, with progress",
                        description="As run_sft_loop, in this process: the state is on disk under the data dir, so "
                                    "an interrupted loop is resumed by the MCP server (or followed with "
                                    "get_loop_status).", epilog=epilog)
    lp.add_argument("config", help="loop TOML (see learning://config/loop-example)")
    lp.add_argument("--json", action="store_true")

    ex = sub.add_parser("export", help="write a fine-tuned model as a Hugging Face folder", epilog=epilog)
    ex.add_argument("model", help="ft: id (or a base model)")
    ex.add_argument("path", help="new or empty folder (absolute on the backend's machine)")
    ex.add_argument("--no-merge", action="store_true", help="LoRA jobs: write the PEFT adapter, not merged weights")
    ex.add_argument("--json", action="store_true")


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of :data:`COMMANDS`; returns the exit code."""
    out = _Output(json_mode=getattr(args, "json", False))
    handler = {"train": _train, "status": _status, "eval": _eval, "filter": _filter, "loop": _loop,
               "export": _export}[args.command]
    try:
        return anyio.run(handler, args, settings, out)
    except KeyboardInterrupt:
        out.error("interrupted", "interrupted; work already started keeps running on the backend")
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------------------
class _Output:
    """stderr for people (rich), stdout for ``--json``."""

    def __init__(self, *, json_mode: bool):
        from rich.console import Console

        self.json_mode = json_mode
        self.console = Console(stderr=True, highlight=False)

    def info(self, text: str) -> None:
        if not self.json_mode:
            self.console.print(text, markup=False)

    def error(self, code: str, message: str) -> None:
        if self.json_mode:
            self.emit({"ok": False, "error": {"code": code, "message": message}})
        else:
            self.console.print(f"Error: [{code}] {message}", markup=False, style="red")

    def emit(self, doc: dict) -> None:
        sys.stdout.write(json.dumps(doc, default=str) + "\n")
        sys.stdout.flush()

    def job_progress(self):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[extra]}"), TextColumn("elapsed"), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False,
                        disable=self.json_mode)


def _exit_for(exc: LearningMCPError) -> int:
    if exc.code in API_CODES or (isinstance(getattr(exc, "status", None), int) and exc.status >= 500):
        return EXIT_API
    return EXIT_USAGE


def _app(settings: Settings):
    """The MCP server's AppState (client, data dir, loops, evals) without the MCP server; unlike the server, a
    command does not resume other unfinished loops."""
    from learning_mcp.server.app import app_state

    async def managers(state: Any) -> None:
        from learning_mcp.tools.eval_runs import EvalRuns
        from learning_mcp.tools.loop_manager import LoopManager

        state.loops, state.evals = LoopManager(state), EvalRuns(state)

    return app_state(settings, attach=managers)


# ---------------------------------------------------------------------------------------------------------
# train / status
# ---------------------------------------------------------------------------------------------------------
async def _train(args: argparse.Namespace, settings: Settings, out: _Output) -> int:
    from learning_mcp.tools import jobs as job_ops

    if args.examples is not None and args.examples < 1:
        out.error("invalid_examples", "--examples must be at least 1")
        return EXIT_USAGE
    async with _app(settings) as app:
        try:
            client = await app.client()
            upload_task = None
            with out.job_progress() as bar:
                async def on_upload(done: float, total: float | None, message: str) -> None:
                    nonlocal upload_task
                    if upload_task is None:
                        upload_task = bar.add_task("upload", total=total or None, extra="")
                    bar.update(upload_task, completed=done, total=total or None)

                created = await job_ops.create_job_from_config(
                    client, args.config, dataset=args.dataset, model=args.model, examples=args.examples,
                    dry_run=args.dry_run, progress=on_upload, environ=settings.environ)
        except LearningMCPError as exc:
            out.error(exc.code, exc.message)
            return _exit_for(exc)
        doc: dict[str, Any] = {"ok": True, "job_id": created.job_id, "status": created.status, "model": created.model,
                               "training_file_id": created.training_file_id, "warnings": created.warnings,
                               "started": created.started}
        for warning in created.warnings:
            out.info(f"warning: {warning}")
        if created.dry_run:
            doc["payload"] = created.payload
            out.info(f"dry run: payload for {created.model} built, datasets valid; nothing created")
            if out.json_mode:
                out.emit(doc)
            return EXIT_OK
        out.info(f"created job {created.job_id} ({created.model}) from file {created.training_file_id}"
                 + ("" if created.started else f"; not started: {created.start_error}"))
        if not created.started:
            doc["ok"] = False
            doc["start_error"] = created.start_error
            if out.json_mode:
                out.emit(doc)
            return EXIT_API
        if args.no_poll:
            out.info(f"follow it with: learning-mcp status {created.job_id} --follow")
            if out.json_mode:
                out.emit(doc)
            return EXIT_OK
        return await _follow(client, created.job_id, args.poll_interval, out)


async def _status(args: argparse.Namespace, settings: Settings, out: _Output) -> int:
    async with _app(settings) as app:
        try:
            client = await app.client()
            if args.follow:
                return await _follow(client, args.job_id, args.poll_interval, out)
            from learning_mcp.tools import jobs as job_ops

            snap = await job_ops.job_status(client, args.job_id)
            doc = await _job_doc(client, snap)
        except LearningMCPError as exc:
            out.error(exc.code, exc.message)
            return _exit_for(exc)
    _summary(out, doc)
    return _job_exit(doc["status"])


async def _follow(client: Any, job_id: str, poll_interval: float, out: _Output) -> int:
    """Follow a job to its end with a progress bar (step/total, loss, ETA); print the summary; the exit code."""
    from learning_mcp.tools import jobs as job_ops
    from learning_mcp.tools.client import TERMINAL_STATUSES

    since, started, failing_since = 0, time.monotonic(), None
    with out.job_progress() as bar:
        task = bar.add_task(f"{job_id} queued", total=None, extra="")
        while True:
            try:
                snap = await job_ops.job_status(client, job_id, since_seq=since,
                                                wait_seconds=max(0.0, min(poll_interval, 50.0)))
            except LearningMCPError as exc:
                failing_since = failing_since or time.monotonic()
                if exc.code in API_CODES and time.monotonic() - failing_since < FOLLOW_OUTAGE_S:
                    out.info(f"warning: {exc.message}; retrying")  # a blip: the job keeps going on the backend
                    await anyio.sleep(max(poll_interval, 1.0))
                    continue
                out.error(exc.code, exc.message)
                return _exit_for(exc)
            failing_since = None
            since = snap.next_since_seq
            status = snap.record.status
            for event in snap.events:
                if event.type != "sft.progress" and not out.json_mode:
                    bar.console.print(f"  [{event.type}] {event.message}", markup=False)
            progress = snap.progress or {}
            step, total, loss = progress.get("step"), progress.get("total_steps"), progress.get("loss")
            extra = f"loss {loss:.4f}" if isinstance(loss, (int, float)) else ""
            bar.update(task, description=f"{job_id} {status}", total=total or None,
                       completed=step or 0, extra=extra)
            if status in TERMINAL_STATUSES:
                break
            if not snap.events:
                await anyio.sleep(poll_interval if status != "running" else min(poll_interval, 0.5))
    doc = await _job_doc(client, snap)
    doc["seconds"] = round(time.monotonic() - started, 1)
    _summary(out, doc)
    return _job_exit(status)


async def _job_doc(client: Any, snap: Any) -> dict:
    from learning_mcp.tools import jobs as job_ops

    rec = snap.record
    ftm = job_ops.fine_tuned_model_of(rec, snap.events)
    if rec.status == "succeeded" and not ftm:
        ftm = job_ops.fine_tuned_model_of(rec, await client.events(rec.id, since_seq=0, limit=1000))
    return {"ok": rec.status != "failed" and rec.status != "cancelled", "job_id": rec.id, "status": rec.status,
            "model": rec.model, "fine_tuned_model": ftm, "progress": snap.progress,
            "latest_metrics": snap.latest_metrics, "error": job_ops.error_dict(rec.error),
            "failure_kind": job_ops.failure_kind(rec.status, rec.error)}


def _summary(out: _Output, doc: dict) -> None:
    if out.json_mode:
        out.emit(doc)
        return
    progress = doc.get("progress") or {}
    lines = [f"job {doc['job_id']}: {doc['status']}"]
    if progress.get("step") is not None:
        loss = progress.get("loss")
        lines.append(f"  steps {progress.get('step')}/{progress.get('total_steps')}"
                     + (f", final loss {loss:.4f}" if isinstance(loss, (int, float)) else ""))
    if doc.get("fine_tuned_model"):
        lines.append(f"  fine_tuned_model {doc['fine_tuned_model']}")
    if doc.get("error"):
        lines.append(f"  error: {doc['error'].get('message') if isinstance(doc['error'], dict) else doc['error']}")
    if doc.get("seconds") is not None:
        lines.append(f"  {doc['seconds']} s")
    for line in lines:
        out.info(line)


def _job_exit(status: str) -> int:
    return EXIT_FAILED if status in {"failed", "cancelled"} else EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# eval / filter / loop / export
# ---------------------------------------------------------------------------------------------------------
async def _eval(args: argparse.Namespace, settings: Settings, out: _Output) -> int:
    from learning_mcp.tools.eval_runs import eval_call

    async with _app(settings) as app:
        try:
            with out.job_progress() as bar:
                task = bar.add_task(f"eval {args.model}", total=None, extra="")
                result, text = await eval_call(
                    app.evals, model=args.model, tasks=args.tasks, split=args.split, n=args.n,
                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, max_tokens=args.max_tokens,
                    verifier=args.verifier, chat_url=args.chat_url, max_problems=args.max_problems,
                    val_fraction=args.val_fraction, split_seed=args.split_seed, eval_id=None, wait_seconds=1)
                while result.state == "running":
                    result, text = await eval_call(
                        app.evals, model=None, tasks=None, split="all", n=1, temperature=0, top_k=None, top_p=1,
                        max_tokens=1, verifier="exact", chat_url=None, max_problems=None, val_fraction=0.2,
                        split_seed=0, eval_id=result.eval_id, wait_seconds=1)
                    bar.update(task, description=f"eval {result.eval_id} {result.state}")
        except LearningMCPError as exc:
            out.error(exc.code, exc.message)
            return _exit_for(exc)
    if out.json_mode:
        out.emit({"ok": result.state == "succeeded", **result.model_dump()})
    else:
        out.info(text)
        if result.error:
            out.info(f"  error: {result.error}")
    return EXIT_OK if result.state == "succeeded" else EXIT_FAILED


async def _filter(args: argparse.Namespace, settings: Settings, out: _Output) -> int:
    from learning_mcp.tools.filter_run import filter_traces_call

    data_dir = settings.resolved_data_dir()
    try:
        result, text = await filter_traces_call(
            loops_root=data_dir / "loops", traces_db=data_dir / "traces.sqlite", config=args.config,
            run_id=args.run_id, db=args.db, output=args.output, reward_threshold=args.reward_threshold,
            max_per_problem=args.max_per_problem, dedupe=None, limit=args.limit, overwrite=args.overwrite)
    except LearningMCPError as exc:
        out.error(exc.code, exc.message)
        return _exit_for(exc)
    if out.json_mode:
        out.emit({"ok": True, **result.model_dump()})
    else:
        out.info(text)
    return EXIT_OK if result.written else EXIT_FAILED


async def _loop(args: argparse.Namespace, settings: Settings, out: _Output) -> int:
    from learning_mcp.tools.loop import loop_config_from, preflight
    from learning_mcp.tools.loop_manager import format_table, loop_status

    async with _app(settings) as app:
        try:
            cfg = loop_config_from(args.config, {})
            client = await app.client()
            config_warnings = await anyio.to_thread.run_sync(lambda: preflight(cfg, client.target, settings.environ))
            state = await app.loops.start(cfg, warnings=config_warnings)
        except LearningMCPError as exc:
            out.error(exc.code, exc.message)
            return _exit_for(exc)
        out.info(f"loop {state.loop_id} started (state in {app.loops.loop_dir(state.loop_id)})")
        for warning in config_warnings:
            out.info(f"warning: {warning}")
        with out.job_progress() as bar:
            task = bar.add_task(f"loop {state.loop_id}", total=cfg.iterations, extra="")
            while True:
                state = await app.loops.wait(state.loop_id, 1.0, None)
                current = state.current
                step = f"iter {current.iteration} {current.step}" if current else "baseline"
                done = sum(1 for it in state.iterations if it.step == "done")
                bar.update(task, completed=done, extra=f"{step}: {state.message}"[:60])
                if state.state != "running":
                    break
        table = format_table(loop_status(state, app.loops.loop_dir(state.loop_id)))
    if out.json_mode:
        out.emit({"ok": state.state == "succeeded", "loop_id": state.loop_id, "state": state.state,
                  "message": state.message, "best_model": state.best_model,
                  "best_val_pass_at_1": state.best_val_pass_at_1, "iterations": len(state.iterations)})
    else:
        out.info(table)
        out.info(f"loop {state.loop_id}: {state.state} — {state.message}; best model {state.best_model}")
    return EXIT_OK if state.state == "succeeded" else EXIT_FAILED


async def _export(args: argparse.Namespace, settings: Settings, out: _Output) -> int:
    from learning_mcp.tools.export_ops import export_model

    path = str(Path(args.path).expanduser().resolve())
    async with _app(settings) as app:
        try:
            client = await app.client()
            out.info(f"exporting {args.model} to {path} ({'adapter' if args.no_merge else 'merged'}) …")
            result = await export_model(client, args.model, path, merge_lora=not args.no_merge)
        except LearningMCPError as exc:
            out.error(exc.code, exc.message)
            return _exit_for(exc)
    if out.json_mode:
        out.emit({"ok": True, **result})
    else:
        out.info(f"exported {args.model} to {result.get('path', path)}")
    return EXIT_OK
