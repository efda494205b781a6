"""The ReST-EM loop manager: run_sft_loop / get_loop_status / cancel_loop / list_loops do this.

Loops are background runs owned by the server's task group, each with an opaque handle. Their state lives on
disk under ``<data_dir>/loops/<loop_id>/``; a restarted server resumes every loop that was still running.
Cancelling a *call* (a host timeout, the user pressing Stop) only ends that call's wait; ``cancel_loop`` is the
one way to stop a loop, and it cancels the loop's training job too. Several server processes may share a data
dir: a per-loop ``flock`` decides which one runs a loop.

The manager needs an application object with ``data_dir`` (Path), ``tg`` (an anyio task group) and
``async client()`` (a :class:`~learning_mcp.tools.client.LearningClient`) and ``settings`` (a
:class:`~learning_mcp.tools.settings.Settings`); the MCP server's ``AppState`` is one.
"""

from __future__ import annotations

import fcntl
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field, ValidationError

from learning_mcp.tools.errors import ToolFailure
from learning_mcp.tools.eval_runs import EvalRuns
from learning_mcp.tools.loop import IterationRecord, LoopConfig, LoopRunner, LoopState

log = logging.getLogger("learning_mcp.server.loops")


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
    loop_dir.mkdir(parents=True, exist_ok=True)
    fh = open(loop_dir / "lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


class LoopManager:
    def __init__(self, app_state: Any):
        self.app = app_state
        self.root = app_state.data_dir / "loops"
        self.root.mkdir(parents=True, exist_ok=True)
        self.handles: dict[str, _Handle] = {}

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

    def summaries(self) -> list[dict[str, Any]]:
        """Every readable loop under the data dir, newest first: id, state, iterations, best model, message."""
        loops = []
        for path in sorted(self.root.glob("*/state.json"), reverse=True):
            try:
                st = self.read(path.parent.name)
            except (ToolFailure, ValueError, ValidationError):
                continue
            loops.append({"loop_id": st.loop_id, "state": st.state, "iterations": len(st.iterations),
                          "best_model": st.best_model, "best_val_pass_at_1": st.best_val_pass_at_1,
                          "message": st.message})
        return loops

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
        runner = LoopRunner(state, self.loop_dir(state.loop_id), client, environ=self.app.settings.environ)
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
            runner = LoopRunner(state, loop_dir, await self.app.client(), environ=self.app.settings.environ)
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



async def attach_loops(app_state: Any) -> None:
    """Called from the server's lifespan: create the manager and resume unfinished loops in the background."""
    app_state.loops = LoopManager(app_state)
    app_state.evals = EvalRuns(app_state)

    async def resume() -> None:
        resumed = await app_state.loops.resume_all()
        if resumed:
            log.info("resumed %d loop(s): %s", len(resumed), ", ".join(resumed))

    if any(app_state.loops.root.glob("*/state.json")):
        app_state.tg.start_soon(resume)
