"""The ReST-EM tools: run_sft_loop / get_loop_status / cancel_loop, plus eval and filter_traces.

Loops and evals are background runs owned by the server's task group, each with an opaque handle. Their state
lives on disk under ``<data_dir>/loops/<loop_id>/`` and ``<data_dir>/evals/``; a restarted server resumes
every loop that was still running. Cancelling a *call* (a host timeout, the user pressing Stop) only ends that
call's wait; ``cancel_loop`` is the one way to stop a loop, and it cancels the loop's training job too.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult
from pydantic import BaseModel, Field, ValidationError

from learning_mcp.tools.errors import ToolFailure
from learning_mcp.tools.loop import IterationRecord, LoopConfig, LoopRunner, LoopState, parse_loop_toml, preflight

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------------
class LoopRow(BaseModel):
    iteration: int
    step: str
    model: str = Field(description="the model that generated this iteration's samples")
    samples: int | None
    problems: int | None
    solved: int | None = Field(description="train problems with at least one correct sample")
    kept: int | None = Field(description="samples kept by the filter (the SFT set)")
    file_id: str | None = Field(None, description="the uploaded kept set")
    job_id: str | None
    fine_tuned_model: str | None
    final_train_loss: float | None
    val_pass_at_1: float | None
    seconds: float


class LoopStatusResult(BaseModel):
    loop_id: str
    state: str = Field(description="running | succeeded | failed | cancelled")
    terminal: bool
    message: str
    iteration: int = Field(description="iterations started so far")
    iterations: int = Field(description="iterations requested")
    base_model: str
    base_val_pass_at_1: float | None
    best_model: str | None
    best_val_pass_at_1: float | None
    best_iteration: int | None
    stopped_reason: str | None = Field(description="completed | val_not_improving | cancelled | None")
    table: list[LoopRow]
    current_job_id: str | None
    error: dict | None
    train_problems: int | None
    val_problems: int | None
    state_dir: str
    next_poll_seconds: float | None
    next_step: str


class LoopListResult(BaseModel):
    loops: list[dict[str, Any]]


class EvalStatusResult(BaseModel):
    eval_id: str
    state: str = Field(description="running | succeeded | failed")
    model: str
    problems: int | None = None
    samples: int | None = None
    correct: int | None = None
    solved_any: int | None = None
    pass_at_1: float | None = None
    pass_at_n: float | None = None
    mean_reward: float | None = None
    seconds: float | None = None
    error: str | None = None
    traces_db: str
    next_step: str


class FilterResult(BaseModel):
    output: str
    counts: dict[str, int] = Field(description="records left after each stage, in order")
    problems: int
    written: int
    valid: bool = Field(description="the output passes validate_dataset")
    message: str
    next_step: str


def _row(record: IterationRecord) -> LoopRow:
    return LoopRow(iteration=record.iteration, step=record.step, model=record.sampler_model, samples=record.samples,
                   problems=record.problems, solved=record.solved, kept=record.kept, file_id=record.file_id, job_id=record.job_id,
                   fine_tuned_model=record.fine_tuned_model, final_train_loss=record.final_train_loss,
                   val_pass_at_1=record.val_pass_at_1, seconds=round(record.seconds, 1))


def loop_status(state: LoopState, state_dir: Path) -> LoopStatusResult:
    terminal = state.state != "running"
    current = state.current
    if state.state == "running":
        next_step = (f"Loop is running ({state.message}). Poll get_loop_status(loop_id={state.loop_id!r}) every ~15 s; "
                     "do not start another loop for the same task.")
    elif state.state == "succeeded":
        next_step = (f"Done ({state.stopped_reason}). Best model: {state.best_model} (validation pass@1 "
                     f"{state.best_val_pass_at_1}). Use it as a model id.")
    elif state.state == "failed":
        reason = ((state.error or {}).get("message") or "unknown error").rstrip(". ")
        next_step = f"The loop failed ({reason}). Fix the cause, then start a new loop with run_sft_loop."
    else:
        next_step = "The loop was cancelled; start a new one with run_sft_loop if needed."
    return LoopStatusResult(
        loop_id=state.loop_id, state=state.state, terminal=terminal, message=state.message,
        iteration=len(state.iterations), iterations=state.config.iterations, base_model=state.config.base_model,
        base_val_pass_at_1=state.base_val_pass_at_1, best_model=state.best_model,
        best_val_pass_at_1=state.best_val_pass_at_1, best_iteration=state.best_iteration,
        stopped_reason=state.stopped_reason, table=[_row(r) for r in state.iterations],
        current_job_id=current.job_id if current and current.step == "train" else None, error=state.error,
        train_problems=state.train_problems, val_problems=state.val_problems, state_dir=str(state_dir),
        next_poll_seconds=None if terminal else 15.0, next_step=next_step)


def format_table(status: LoopStatusResult) -> str:
    """The per-iteration table as fixed-width text (for the tool summary and the demo)."""
    head = f"{'iter':>4} {'samples':>7} {'solved':>9} {'kept':>5} {'train loss':>10} {'val pass@1':>10}  model"
    lines = [head, f"{0:>4} {'-':>7} {'-':>9} {'-':>5} {'-':>10} "
                   f"{_fmt(status.base_val_pass_at_1):>10}  {short_model(status.base_model)} (base)"]
    for row in status.table:
        solved = f"{row.solved}/{row.problems}" if row.solved is not None else "-"
        lines.append(f"{row.iteration:>4} {row.samples if row.samples is not None else '-':>7} {solved:>9} "
                     f"{row.kept if row.kept is not None else '-':>5} {_fmt(row.final_train_loss):>10} "
                     f"{_fmt(row.val_pass_at_1):>10}  {short_model(row.fine_tuned_model) if row.fine_tuned_model else '(' + row.step + ')'}")
    return "\n".join(lines)


def short_model(model: str | None) -> str:
    """``ft:ft:/long/path:job-a:job-b`` → ``ft:…:job-b`` (the table stays readable; ids are in the JSON)."""
    if model and model.startswith(("ft:", "fft:", "qft:", "rl:")) and model.count(":") >= 2:
        return f"{model.split(':', 1)[0]}:…:{model.rsplit(':', 1)[1]}"
    return model or "-"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------------------------------------
# the manager
# --------------------------------------------------------------------------------------------------------
@dataclass
class _Handle:
    runner: LoopRunner
    lock_file: Any = None
    scope: anyio.CancelScope | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


def _try_lock(loop_dir: Path):
    """An exclusive lock on the loop: only one server process runs a loop (several may share a data dir)."""
    import fcntl

    loop_dir.mkdir(parents=True, exist_ok=True)
    fh = open(loop_dir / "lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


@dataclass
class _EvalRun:
    eval_id: str
    model: str
    state: str = "running"
    summary: dict | None = None
    error: str | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


class LoopManager:
    def __init__(self, app_state: Any):
        self.app = app_state
        self.root = app_state.data_dir / "loops"
        self.root.mkdir(parents=True, exist_ok=True)
        self.handles: dict[str, _Handle] = {}
        self.evals: dict[str, _EvalRun] = {}

    def loop_dir(self, loop_id: str) -> Path:
        if not loop_id or "/" in loop_id or loop_id.startswith("."):
            raise ToolFailure("unknown_loop", f"Unknown loop_id {loop_id!r}; start one with run_sft_loop")
        return self.root / loop_id

    def read(self, loop_id: str) -> LoopState:
        handle = self.handles.get(loop_id)
        if handle is not None:
            return handle.runner.state
        path = self.loop_dir(loop_id) / "state.json"
        if not path.is_file():
            raise ToolFailure("unknown_loop", f"Unknown loop_id {loop_id!r}; start one with run_sft_loop "
                                              "(or call list_loops)")
        return LoopRunner.load(path.parent)

    async def start(self, config: LoopConfig) -> LoopState:
        loop_id = f"loop-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        state = LoopState(loop_id=loop_id, config=config)
        await self._launch(state)
        return state

    async def _launch(self, state: LoopState) -> bool:
        """Run the loop here, unless another server process already runs it (returns False then)."""
        lock = _try_lock(self.loop_dir(state.loop_id))
        if lock is None:
            return False
        try:
            client = await self.app.client()
        except BaseException:
            lock.close()
            raise
        runner = LoopRunner(state, self.loop_dir(state.loop_id), client)
        runner.save()
        handle = _Handle(runner, lock_file=lock)
        self.handles[state.loop_id] = handle

        async def run() -> None:
            try:
                with anyio.CancelScope() as scope:
                    handle.scope = scope
                    await runner.run()
            finally:
                handle.done.set()
                self.handles.pop(state.loop_id, None)
                lock.close()

        self.app.tg.start_soon(run)
        return True

    async def resume_all(self) -> list[str]:
        resumed = []
        for path in sorted(self.root.glob("*/state.json")):
            try:
                state = LoopRunner.load(path.parent)
            except (OSError, ValueError, ValidationError) as exc:
                log.warning("skipping unreadable loop state %s: %s", path, exc)
                continue
            if state.state == "running" and state.loop_id not in self.handles:
                state.message = f"resumed after a server restart ({state.message})"
                try:
                    if await self._launch(state):
                        resumed.append(state.loop_id)
                except ToolFailure as exc:
                    log.warning("cannot resume loop %s yet: %s", state.loop_id, exc)
        return resumed

    async def cancel(self, loop_id: str) -> LoopState:
        state = self.read(loop_id)
        if state.state != "running":
            return state
        handle = self.handles.get(loop_id)
        if handle is not None:
            handle.runner.state.cancel_requested = True
            handle.runner.save()
            if handle.scope is not None:
                handle.scope.cancel()
            with anyio.move_on_after(20):
                await handle.done.wait()
            return handle.runner.state
        # running on disk but not in this process
        loop_dir = self.loop_dir(loop_id)
        lock = _try_lock(loop_dir)
        if lock is None:  # another server process runs it: ask it to stop, and wait a little
            (loop_dir / "cancel").write_text(str(time.time()))
            with anyio.move_on_after(20):
                while self.read(loop_id).state == "running":
                    await anyio.sleep(0.5)
            return self.read(loop_id)
        try:  # nobody runs it (its server is gone): cancel it here
            state.cancel_requested = True
            runner = LoopRunner(state, loop_dir, await self.app.client())
            await runner._finish_cancelled()
        finally:
            lock.close()
        return state

    async def wait(self, loop_id: str, seconds: float, ctx: Context | None) -> LoopState:
        """Wait at most ``seconds`` for the loop to finish, reporting progress; never cancels the loop."""
        handle = self.handles.get(loop_id)
        if handle is None:
            return self.read(loop_id)
        total = handle.runner.state.config.iterations
        with anyio.move_on_after(seconds):
            last = None
            while not handle.done.is_set():
                state = handle.runner.state
                progress = (len(state.iterations), state.message)
                if ctx is not None and progress != last:
                    last = progress
                    try:
                        await ctx.report_progress(len(state.iterations), total, state.message)
                    except Exception:
                        pass
                with anyio.move_on_after(1.0):
                    await handle.done.wait()
        return handle.runner.state

    # -- evals -------------------------------------------------------------------------------------------
    @property
    def traces_db(self) -> Path:
        return self.app.data_dir / "traces.sqlite"

    async def start_eval(self, *, model: str, tasks_path: str, split: str, settings: dict, verifier: Any,
                         chat_url: str | None, max_problems: int | None) -> _EvalRun:
        from learning_mcp.tools.evaluate import ChatEndpointError, SamplingSettings, evaluate
        from learning_mcp.tools.rewards import VerifierError, make_verifier
        from learning_mcp.tools.tasks import TaskFileError, load_tasks, split_tasks
        from learning_mcp.tools.settings import endpoint_key
        from learning_mcp.tools.traces import TraceStore

        try:
            tasks = await anyio.to_thread.run_sync(lambda: load_tasks(tasks_path))
            checker = make_verifier(verifier, base_dir=Path(tasks_path).parent)
        except (TaskFileError, VerifierError) as exc:
            raise ToolFailure(getattr(exc, "code", "invalid_input"), str(exc)) from None
        if split != "all":
            train, val = split_tasks(tasks, val_fraction=settings.pop("val_fraction"),
                                     seed=settings.pop("split_seed"))
            tasks = train if split == "train" else val
        settings.pop("val_fraction", None)
        settings.pop("split_seed", None)
        if max_problems:
            tasks = tasks[:max_problems]
        if not tasks:
            raise ToolFailure("no_problems", f"no problems in split {split!r} of {tasks_path}")
        client = await self.app.client()
        run = _EvalRun(eval_id=f"eval-{uuid.uuid4().hex[:10]}", model=model)
        self.evals[run.eval_id] = run
        greedy = settings.get("n", 1) == 1 and settings.get("temperature", 0.0) == 0.0
        sampling = SamplingSettings(**settings)

        async def go() -> None:
            store = TraceStore(self.traces_db)
            try:
                url = chat_url or client.target.chat_url
                summary = await evaluate(tasks, chat_url=url, model=model, verifier=checker, settings=sampling,
                                         store=store, run_id=run.eval_id, iteration=0, phase="eval",
                                         api_key=endpoint_key(url, client.target, None), greedy=greedy)
                run.summary, run.state = summary.to_dict(), "succeeded"
            except (ChatEndpointError, VerifierError) as exc:
                run.state, run.error = "failed", str(exc)
            except Exception as exc:
                log.exception("eval %s crashed", run.eval_id)
                run.state, run.error = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                store.close()
                run.done.set()

        self.app.tg.start_soon(go)
        return run


async def attach_loops(app_state: Any) -> None:
    """Called from the server's lifespan: create the manager and resume unfinished loops in the background."""
    app_state.loops = LoopManager(app_state)

    async def resume() -> None:
        resumed = await app_state.loops.resume_all()
        if resumed:
            log.info("resumed %d loop(s): %s", len(resumed), ", ".join(resumed))

    if any(app_state.loops.root.glob("*/state.json")):
        app_state.tg.start_soon(resume)


# --------------------------------------------------------------------------------------------------------
# tools
# --------------------------------------------------------------------------------------------------------
def register_loop_tools(server: MCPServer) -> None:
    from learning_mcp.server.app import CANCELS, READ_ONLY_LOCAL, STARTS_WORK, result, state_of, tool_errors

    def manager(ctx: Context) -> LoopManager:
        return state_of(ctx).loops

    @server.tool(title="Run a ReST-EM self-training loop", annotations=STARTS_WORK)
    async def run_sft_loop(
        ctx: Context,
        config: Annotated[str | None, Field(description="loop TOML (path or text): [loop]/[eval]/[filter] tables "
                                                        "plus Synth's SFT sections for the M-step")] = None,
        base_model: Annotated[str | None, Field(description="model to improve (base id, local path or ft: id)")] = None,
        tasks: Annotated[str | None, Field(description="JSONL of problems: id, messages|prompt, answer, split?")] = None,
        verifier: Annotated[str | None, Field(description="exact | numeric | boxed | answer | module:function")] = None,
        iterations: Annotated[int | None, Field(ge=1, le=50)] = None,
        n: Annotated[int | None, Field(ge=1, le=128, description="samples per train problem (paper: 32)")] = None,
        temperature: Annotated[float | None, Field(ge=0, le=2)] = None,
        max_per_problem: Annotated[int | None, Field(ge=1, description="keep at most K correct per problem")] = None,
        reset_to_base: Annotated[bool | None, Field(description="train every iteration from the base model")] = None,
        hyperparameters: Annotated[dict[str, Any] | None, Field(description="SFT hyperparameter overrides")] = None,
        wait_seconds: Annotated[float, Field(ge=0, le=50, description="wait this long before returning")] = 20,
    ) -> Annotated[CallToolResult, LoopStatusResult]:
        """Start ReST-EM self-training: eval the model on the train problems (n samples each), keep the samples
        the verifier accepts, fine-tune on them, evaluate greedily on held-out problems, repeat.

        Starts billable training jobs on Synth (local and free on the embedded backend). Returns a loop_id
        within wait_seconds, with progress; the loop runs on in the background and survives server restarts.
        Poll get_loop_status(loop_id) for the per-iteration table and the best model; stop it with cancel_loop.
        Do not start a second loop for the same task while one is running. Arguments override the TOML;
        resource learning://config/loop-example shows every setting and the task-file format.
        """
        with tool_errors("starting the loop"):
            args: dict[str, Any] = {}
            if config:
                args, _ = parse_loop_toml(config)
            explicit = {"base_model": base_model, "tasks": tasks, "verifier": verifier, "iterations": iterations,
                        "n": n, "temperature": temperature, "max_per_problem": max_per_problem,
                        "reset_to_base": reset_to_base, "hyperparameters": hyperparameters}
            args.update({k: v for k, v in explicit.items() if v is not None})
            if isinstance(args.get("tasks"), str) and not Path(args["tasks"]).expanduser().is_absolute():
                args["tasks"] = str(Path(args["tasks"]).expanduser().resolve())
            try:
                cfg = LoopConfig(**args)
            except ValidationError as exc:
                problems = "; ".join((f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"]
                                     for e in exc.errors())
                raise ToolFailure("invalid_loop_config", f"invalid loop settings: {problems}. Pass base_model and "
                                                         "tasks (or a config TOML with [loop]).") from None
            api = await state_of(ctx).client()
            await anyio.to_thread.run_sync(lambda: preflight(cfg, api.target))
            state = await manager(ctx).start(cfg)
            state = await manager(ctx).wait(state.loop_id, wait_seconds, ctx)
        status = loop_status(state, manager(ctx).loop_dir(state.loop_id))
        return result(status, f"loop {state.loop_id}: {state.state} — {state.message}")

    @server.tool(title="Get a loop's status", annotations=READ_ONLY_LOCAL)
    async def get_loop_status(
        ctx: Context,
        loop_id: Annotated[str, Field(description="loop_id returned by run_sft_loop")],
        wait_seconds: Annotated[float, Field(ge=0, le=50, description="wait up to this long for the end")] = 0,
    ) -> Annotated[CallToolResult, LoopStatusResult]:
        """The loop's state, per-iteration table (samples, problems solved, kept, job_id, final train loss,
        validation pass@1) and the best model so far. Read-only; loop state is kept on disk indefinitely."""
        with tool_errors(f"reading loop {loop_id}"):
            mgr = manager(ctx)
            state = await mgr.wait(loop_id, wait_seconds, ctx) if wait_seconds else mgr.read(loop_id)
        status = loop_status(state, mgr.loop_dir(loop_id))
        return result(status, f"loop {loop_id}: {state.state} — {state.message}\n{format_table(status)}")

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
        mgr = manager(ctx)
        loops = []
        for path in sorted(mgr.root.glob("*/state.json"), reverse=True):
            try:
                st = mgr.read(path.parent.name)
            except (ToolFailure, ValueError, ValidationError):
                continue
            loops.append({"loop_id": st.loop_id, "state": st.state, "iterations": len(st.iterations),
                          "best_model": st.best_model, "best_val_pass_at_1": st.best_val_pass_at_1,
                          "message": st.message})
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
        verifier: Annotated[str, Field(description="exact | numeric | boxed | answer | module:function")] = "exact",
        chat_url: Annotated[str | None, Field(description="OpenAI-compatible endpoint (default: the learning "
                                                          "API's inference endpoint)")] = None,
        max_problems: Annotated[int | None, Field(ge=1)] = None,
        val_fraction: Annotated[float, Field(ge=0, lt=1, description="split rule for train/validation (as the "
                                                                     "loop's val_fraction)")] = 0.2,
        split_seed: Annotated[int, Field(description="as the loop's split_seed")] = 0,
        eval_id: Annotated[str | None, Field(description="check on an eval started earlier instead")] = None,
        wait_seconds: Annotated[float, Field(ge=0, le=50)] = 40,
    ) -> Annotated[CallToolResult, EvalStatusResult]:
        """Sample a model on a task set and score every sample with a binary verifier: pass@1 and pass@n.

        Every sample is stored as a trace (filter them with filter_traces(run_id=eval_id)). Returns the
        summary if it finishes within wait_seconds, else an eval_id: call eval(eval_id=...) again for the result.
        """
        with tool_errors("evaluating"):
            mgr = manager(ctx)
            if eval_id:
                run = mgr.evals.get(eval_id)
                if run is None:
                    raise ToolFailure("unknown_eval", f"Unknown eval_id {eval_id!r} (evals are kept in memory "
                                                      "until the server restarts; their traces stay on disk)")
            else:
                if not model or not tasks:
                    raise ToolFailure("missing_arguments", "pass model and tasks (or eval_id to check an eval)")
                if split not in {"all", "train", "validation"}:
                    raise ToolFailure("invalid_split", "split must be all, train or validation")
                run = await mgr.start_eval(model=model, tasks_path=str(Path(tasks).expanduser().resolve()),
                                           split=split, verifier=verifier, chat_url=chat_url,
                                           max_problems=max_problems,
                                           settings={"n": n, "temperature": temperature, "top_k": top_k,
                                                     "top_p": top_p, "max_tokens": max_tokens,
                                                     "val_fraction": val_fraction, "split_seed": split_seed})
            with anyio.move_on_after(wait_seconds):
                await run.done.wait()
        summary = run.summary or {}
        next_step = (f"Call eval(eval_id={run.eval_id!r}) again for the result." if run.state == "running" else
                     f"Traces are in {mgr.traces_db} under run_id {run.eval_id!r}: filter_traces(run_id=...) turns "
                     "the correct ones into an SFT dataset." if run.state == "succeeded" else "Fix the error and retry.")
        out = EvalStatusResult(eval_id=run.eval_id, state=run.state, model=run.model, error=run.error,
                               traces_db=str(mgr.traces_db), next_step=next_step,
                               **{k: summary.get(k) for k in ("problems", "samples", "correct", "solved_any",
                                                              "pass_at_1", "pass_at_n", "mean_reward", "seconds")})
        text = (f"eval {run.eval_id} of {run.model}: {run.state}" +
                (f", pass@1 {out.pass_at_1:.3f}, pass@n {out.pass_at_n:.3f} on {out.problems} problems "
                 f"({out.samples} samples)"
                 if run.state == "succeeded" else ""))
        return result(out, text)

    @server.tool(title="Filter traces into an SFT dataset", annotations=READ_ONLY_LOCAL.model_copy(
        update={"read_only_hint": False, "destructive_hint": False}))
    async def filter_traces(
        ctx: Context,
        config: Annotated[str | None, Field(description="Synth filter TOML (path or text) with a [filter] table")] = None,
        run_id: Annotated[str | None, Field(description="eval_id or loop_id whose traces to filter")] = None,
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
        from learning_mcp.tools.filtering import FilterConfigError, FilterSpec, filter_traces as run_filter
        from learning_mcp.tools.filtering import load_filter_config
        from learning_mcp.tools.traces import TraceStore

        with tool_errors("filtering traces"):
            mgr = manager(ctx)
            base: dict[str, Any] = {}
            if config:
                try:
                    base = dict(vars(load_filter_config(config)))
                except (FilterConfigError, ValueError, OSError) as exc:
                    raise ToolFailure("invalid_filter_config", str(exc)) from None
            db_path = db or base.get("db")
            if not db_path and run_id:
                loop_db = mgr.root / run_id / "traces.sqlite"
                db_path = str(loop_db if loop_db.is_file() else mgr.traces_db)
            db_path = db_path or str(mgr.traces_db)
            if not Path(db_path).is_file():
                raise ToolFailure("db_not_found", f"trace database not found: {db_path}; run eval or a loop first")
            overrides = {"run_id": run_id, "reward_threshold": reward_threshold, "max_per_problem": max_per_problem,
                         "dedupe": dedupe, "limit": limit}
            base.update({k: v for k, v in overrides.items() if v is not None})
            base["db"] = db_path
            base["output"] = output or base.get("output") or str(
                Path(db_path).parent / f"filtered-{run_id or 'all'}-{int(time.time())}.jsonl")
            try:
                spec = FilterSpec(**base)
            except (FilterConfigError, TypeError, ValueError) as exc:
                raise ToolFailure("invalid_filter_config", str(exc)) from None
            out_path = Path(spec.output)
            if out_path.exists() and not overwrite:
                raise ToolFailure("output_exists", f"{out_path} already exists; pass overwrite=true to replace it, or "
                                                   "choose another output path")

            def work():
                import sqlite3

                try:
                    store = TraceStore(db_path)
                except sqlite3.DatabaseError as exc:
                    raise ToolFailure("invalid_db", f"{db_path} is not a trace database ({exc})") from None
                try:
                    return run_filter(spec, store)
                except sqlite3.DatabaseError as exc:
                    raise ToolFailure("invalid_db", f"{db_path} is not a trace database ({exc})") from None
                finally:
                    store.close()

            report = await anyio.to_thread.run_sync(work)
            if not report.counts.get("written") and out_path.exists() and out_path.stat().st_size == 0:
                out_path.unlink()  # nothing matched: leave no empty file behind
            valid = False
            if report.counts.get("written"):
                from learning_mcp.tools.jobs import validate_dataset_file

                valid = (await anyio.to_thread.run_sync(lambda: validate_dataset_file(report.output))).ok
        written = report.counts.get("written", 0)
        out = FilterResult(output=report.output, counts=report.counts, problems=report.problems, written=written,
                           valid=valid, message=getattr(report, "message", "") or f"wrote {written} examples",
                           next_step=(f"upload_file(path={report.output!r}) then create_job(...)" if written else
                                      "Nothing matched: loosen the filter or sample more (eval with n > 1)."))
        return result(out, f"wrote {written} examples -> {report.output}")
