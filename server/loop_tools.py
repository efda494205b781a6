"""Registration of the ReST-EM tools: run_sft_loop / get_loop_status / cancel_loop / list_loops, eval and
filter_traces. What each tool does lives in ``learning_mcp.tools`` (:mod:`~learning_mcp.tools.loop_manager`,
:mod:`~learning_mcp.tools.eval_runs`, :mod:`~learning_mcp.tools.filter_run`); this module only declares the
tools' parameters and maps errors (:func:`~learning_mcp.server.common.tool_errors`).
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult
from pydantic import Field

from learning_mcp.tools.config_source import CONFIG_ARG_HELP
from learning_mcp.server.common import (CANCELS, READ_ONLY_LOCAL, STARTS_WORK, result, state_of,
                                        tool_errors)
from learning_mcp.tools import eval_runs
from learning_mcp.tools.eval_runs import EvalStatusResult, eval_call, remaining_wait
from learning_mcp.tools.filter_run import FilterResult, filter_traces_call
from learning_mcp.tools.loop import (LOOP_CHART_FILE, default_warnings, loop_config_with_sources, preflight,
                                     preflight_model)
from learning_mcp.tools.loop_manager import (LoopListResult, LoopManager, LoopStatusResult, format_table, loop_chart,
                                             loop_samples, loop_status)


def register_loop_tools(server: MCPServer) -> None:
    def manager(ctx: Context) -> LoopManager:
        return state_of(ctx).loops

    @server.tool(title="Run a ReST-EM self-training loop", annotations=STARTS_WORK)
    async def run_sft_loop(
        ctx: Context,
        config: Annotated[str | None, Field(description=f"loop config: {CONFIG_ARG_HELP}; [loop]/[eval]/[filter] "
                                                        "tables plus Synth's SFT sections for the M-step")] = None,
        base_model: Annotated[str | None, Field(description="model to improve (base id, local path or ft: id)")] = None,
        tasks: Annotated[str | None, Field(description="JSONL of problems: id, messages|prompt, answer, split?")] = None,
        verifier: Annotated[str | None, Field(description="exact | numeric | boxed | answer | math | "
                                                          "module:function")] = None,
        iterations: Annotated[int | None, Field(ge=1, le=50)] = None,
        n: Annotated[int | None, Field(ge=1, le=128, description="samples per train problem (paper: 32)")] = None,
        temperature: Annotated[float | None, Field(ge=0, le=2)] = None,
        max_per_problem: Annotated[int | None, Field(ge=1, description="keep at most K correct per problem")] = None,
        reset_to_base: Annotated[bool | None, Field(description="train every iteration from the base model")] = None,
        hyperparameters: Annotated[dict[str, Any] | None, Field(description="SFT hyperparameter overrides")] = None,
        seed: Annotated[int | None, Field(description="fixes the split, the sampling and the training")] = None,
        sample_from: Annotated[str | None, Field(description="latest | best: the model that samples next")] = None,
        chat_template_kwargs: Annotated[dict[str, Any] | None, Field(
            description="passed to the chat template when sampling, e.g. {\"enable_thinking\": false}")] = None,
        wait_seconds: Annotated[float, Field(ge=0, le=50, description=(
            "wait this long before returning (the model probe's time comes off it: ~45 s in all)"))] = 20,
    ) -> Annotated[CallToolResult, LoopStatusResult]:
        """Start ReST-EM self-training: eval the model on the train problems (n samples each), keep the samples
        the verifier accepts, fine-tune on them, evaluate greedily on held-out problems, repeat.

        Starts billable training jobs on Synth (local and free on the embedded backend). Returns a loop_id
        within wait_seconds, with progress; the loop runs on in the background and survives server restarts.
        Poll get_loop_status(loop_id) for the per-iteration table and the best model; stop it with cancel_loop.
        Do not start a second loop for the same task while one is running. Arguments override the TOML;
        resource learning://config/loop-example shows every setting and the task-file format. The result's
        `config` is every setting with its source (argument | file | default); `warnings` names defaults used.
        Refused before any sampling: a bad task file (every bad line listed), a bad verifier or SFT config, a
        base_model the sampling endpoint cannot load ([model_not_loadable]).
        """
        started = anyio.current_time()  # the probe's time counts against wait_seconds (the call returns in ~45 s)
        with tool_errors("starting the loop"):
            cfg, resolved = loop_config_with_sources(config, {
                "base_model": base_model, "tasks": tasks, "verifier": verifier, "iterations": iterations, "n": n,
                "temperature": temperature, "max_per_problem": max_per_problem, "reset_to_base": reset_to_base,
                "hyperparameters": hyperparameters, "seed": seed, "sample_from": sample_from,
                "chat_template_kwargs": chat_template_kwargs})
            api = await state_of(ctx).client()
            environ = state_of(ctx).settings.environ
            config_warnings = await anyio.to_thread.run_sync(lambda: preflight(cfg, api.target, environ))
            await preflight_model(cfg, api.target, environ, timeout_s=eval_runs.PROBE_TIMEOUT_S)
            state = await manager(ctx).start(cfg, resolved=resolved,
                                             warnings=default_warnings(resolved) + config_warnings)
            state = await manager(ctx).wait(state.loop_id, remaining_wait(started, wait_seconds), ctx)
        status = loop_status(state, manager(ctx).loop_dir(state.loop_id))
        return result(status, f"loop {state.loop_id}: {state.state} — {state.message}")

    @server.tool(title="Get a loop's status", annotations=READ_ONLY_LOCAL)
    async def get_loop_status(
        ctx: Context,
        loop_id: Annotated[str, Field(description="loop_id returned by run_sft_loop")],
        wait_seconds: Annotated[float, Field(ge=0, le=50, description="wait up to this long for the end")] = 0,
        chart: Annotated[bool, Field(description="also return the per-iteration chart (validation pass@1, "
                                                 "train pass@n, kept, train loss) as a PNG image")] = False,
        include_samples: Annotated[int, Field(ge=0, le=10, description="return up to this many completions per "
                                                                       "problem (correct and incorrect) of the "
                                                                       "latest validation eval")] = 0,
    ) -> Annotated[CallToolResult, LoopStatusResult]:
        """The loop's state, per-iteration table (samples, problems solved, kept, truncated samples dropped,
        job_id, final train loss, validation pass@1), the best model so far, and the resolved config with the
        source of every value. Read-only; loop state is kept on disk indefinitely."""
        with tool_errors(f"reading loop {loop_id}"):
            mgr = manager(ctx)
            state = await mgr.wait(loop_id, wait_seconds, ctx) if wait_seconds else mgr.read(loop_id)
            status = loop_status(state, mgr.loop_dir(loop_id))
            if include_samples:
                status.completions = await anyio.to_thread.run_sync(
                    lambda: loop_samples(state, mgr.loop_dir(loop_id), include_samples))
            png = None
            if chart:
                png = await anyio.to_thread.run_sync(lambda: loop_chart(state, mgr.loop_dir(loop_id)))
                status.chart_path = str(mgr.loop_dir(loop_id) / LOOP_CHART_FILE)
        return result(status, f"loop {loop_id}: {state.state} — {state.message}\n{format_table(status)}", image=png)

    @server.tool(title="Cancel a loop", annotations=CANCELS)
    async def cancel_loop(
        ctx: Context,
        loop_id: Annotated[str, Field(description="loop_id returned by run_sft_loop")],
    ) -> Annotated[CallToolResult, LoopStatusResult]:
        """Stop a running loop and cancel its current training job. Safe to call twice; a finished loop is left
        as it is. Its traces and the models already trained stay available."""
        with tool_errors(f"cancelling loop {loop_id}"):
            state = await manager(ctx).cancel(loop_id)
        status = loop_status(state, manager(ctx).loop_dir(loop_id))
        return result(status, f"loop {loop_id}: {state.state}")

    @server.tool(title="List loops", annotations=READ_ONLY_LOCAL)
    async def list_loops(ctx: Context) -> Annotated[CallToolResult, LoopListResult]:
        """Loops known to this server (newest first) with their state and best model. Read-only."""
        loops = manager(ctx).summaries()
        return result(LoopListResult(loops=loops), f"{len(loops)} loop(s)")

    @server.tool(name="eval", title="Evaluate a model on tasks", annotations=STARTS_WORK)
    async def eval_tool(
        ctx: Context,
        model: Annotated[str | None, Field(description="model id (base, local path or ft:) to evaluate")] = None,
        tasks: Annotated[str | None, Field(description="JSONL of problems (same format as run_sft_loop)")] = None,
        split: Annotated[str, Field(description="all | train | validation (the loop's split rule)")] = "all",
        n: Annotated[int, Field(ge=1, le=128, description="samples per problem (1 + temperature 0 = greedy)")] = 1,
        temperature: Annotated[float, Field(ge=0, le=2)] = 0.0,
        top_k: Annotated[int | None, Field(ge=1)] = None,
        top_p: Annotated[float, Field(gt=0, le=1)] = 1.0,
        max_tokens: Annotated[int, Field(ge=1, le=8192)] = 64,
        verifier: Annotated[str, Field(description="exact | numeric | boxed | answer | math | "
                                                   "module:function")] = "exact",
        chat_url: Annotated[str | None, Field(description="OpenAI-compatible endpoint (default: the learning "
                                                          "API's inference endpoint)")] = None,
        max_problems: Annotated[int | None, Field(ge=1)] = None,
        val_fraction: Annotated[float, Field(ge=0, lt=1, description="split rule for train/validation (as the "
                                                                     "loop's val_fraction)")] = 0.2,
        split_seed: Annotated[int, Field(description="as the loop's split_seed")] = 0,
        eval_id: Annotated[str | None, Field(description="check on an eval started earlier instead")] = None,
        wait_seconds: Annotated[float, Field(ge=0, le=50)] = 40,
        include_samples: Annotated[int, Field(ge=0, le=10, description="return up to this many completions per "
                                                                       "problem, correct and incorrect")] = 0,
        chat_template_kwargs: Annotated[dict[str, Any] | None, Field(
            description="passed to the chat template, e.g. {\"enable_thinking\": false}")] = None,
    ) -> Annotated[CallToolResult, EvalStatusResult]:
        """Sample a model on a task set and score every sample with a binary verifier: pass@1 and pass@n.

        Every sample is stored as a trace (filter them with filter_traces(run_id=eval_id)). Returns the
        summary if it finishes within wait_seconds, else an eval_id: call eval(eval_id=...) again for the result.
        """
        with tool_errors("evaluating"):
            out, text = await eval_call(
                state_of(ctx).evals, model=model, tasks=tasks, split=split, n=n, temperature=temperature,
                top_k=top_k, top_p=top_p, max_tokens=max_tokens, verifier=verifier, chat_url=chat_url,
                max_problems=max_problems, val_fraction=val_fraction, split_seed=split_seed, eval_id=eval_id,
                wait_seconds=wait_seconds, include_samples=include_samples, chat_template_kwargs=chat_template_kwargs)
        return result(out, text)

    @server.tool(title="Filter traces into an SFT dataset", annotations=READ_ONLY_LOCAL.model_copy(
        update={"read_only_hint": False, "destructive_hint": False}))
    async def filter_traces(
        ctx: Context,
        config: Annotated[str | None, Field(description=f"Synth filter config with a [filter] table: "
                                                        f"{CONFIG_ARG_HELP}")] = None,
        run_id: Annotated[str | None, Field(description="eval_id or loop_id whose traces to filter (one with no "
                                                        "traces at all is refused: [unknown_run])")] = None,
        db: Annotated[str | None, Field(description="trace database (default: this server's)")] = None,
        output: Annotated[str | None, Field(description="JSONL to write (default: next to the database)")] = None,
        reward_threshold: Annotated[float | None, Field(description="keep samples with reward ≥ this")] = None,
        max_per_problem: Annotated[int | None, Field(ge=1, description="keep at most K per problem")] = None,
        dedupe: Annotated[bool | None, Field(description="drop duplicate completions of a problem")] = None,
        limit: Annotated[int | None, Field(ge=1)] = None,
        overwrite: Annotated[bool, Field(description="replace output if it already exists")] = False,
    ) -> Annotated[CallToolResult, FilterResult]:
        """Keep the traces a binary reward accepted and write them as SFT JSONL (Synth's filter output shape).

        Takes Synth's [filter] keys (db, output, splits, task_ids, models, min/max_official_score, limit, …) and
        ReST-EM's (reward_threshold, max_per_problem, dedupe). Reports how many records survive each stage.
        Next: upload_file(output) and create_job, or validate_dataset(output).
        """
        with tool_errors("filtering traces"):
            mgr = manager(ctx)
            out, text = await filter_traces_call(
                loops_root=mgr.root, traces_db=state_of(ctx).evals.traces_db, config=config, run_id=run_id, db=db,
                output=output, reward_threshold=reward_threshold, max_per_problem=max_per_problem, dedupe=dedupe,
                limit=limit, overwrite=overwrite)
        return result(out, text)
