"""The ``eval`` tool's runs: sample a model on a task set in the background and keep the summary in memory.

An eval is owned by the server's task group and has an ``eval_id``; its samples go to the server's trace
database (``<data_dir>/traces.sqlite``) under ``run_id = eval_id``, so ``filter_traces(run_id=eval_id)`` can
turn them into an SFT set. Evals are kept in memory only (their traces stay on disk).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, Field

from learning_mcp.tools.errors import ToolFailure
from learning_mcp.tools.evaluate import ChatEndpointError, SamplingSettings, evaluate
from learning_mcp.tools.sampling import normalize_chat_url, probe_model
from learning_mcp.tools.rewards import VerifierError, make_verifier, zero_score_warning
from learning_mcp.tools.settings import endpoint_key
from learning_mcp.tools.tasks import load_tasks, split_tasks
from learning_mcp.tools.traces import TraceStore

log = logging.getLogger("learning_mcp.server.loops")

#: A tool call that probes a model and then waits (``eval``, ``run_sft_loop``) returns within this many seconds in
#: all: the probe's time counts against it and the wait gets what is left (each call must return within ~50 s).
CALL_BUDGET_S = 45.0
#: The model probe (one greedy 1-token request): a slow or silent endpoint is left to the run after this long.
PROBE_TIMEOUT_S = 10.0


def remaining_wait(started: float, wait_seconds: float) -> float:
    """What is left of ``wait_seconds`` once the call (started at ``anyio.current_time()`` = ``started``) must still
    return within :data:`CALL_BUDGET_S` in all."""
    return max(0.0, min(wait_seconds, CALL_BUDGET_S - (anyio.current_time() - started)))


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
    warnings: list[str] = Field(default_factory=list, description="e.g. a verifier that scored every problem 0 "
                                                                  "(usually a reference format it cannot read)")
    completions: list[dict[str, Any]] | None = Field(None, description="with include_samples=k: up to k "
                                                                       "completions per problem, correct and "
                                                                       "incorrect mixed")


MAX_SAMPLE_PROBLEMS = 20


def sample_completions(store: TraceStore, *, run_id: str, iteration: int | None, phase: str | None, k: int,
                       max_problems: int = MAX_SAMPLE_PROBLEMS, threshold: float = 1.0) -> list[dict[str, Any]]:
    """Up to ``k`` stored completions for each of the first ``max_problems`` problems of one eval (pure read):
    ``[{problem_id, samples: [{completion, reward, correct, finish_reason}]}]`` where correct and incorrect
    samples alternate (the first correct one, the first incorrect one, ...), so an agent sees what the model
    said both when the verifier accepted it and when it did not."""
    rows = store.query(run_id=run_id, iterations=iteration, phases=phase)
    by_problem: dict[str, list] = {}
    for row in rows:
        by_problem.setdefault(row.problem_id, []).append(row)
    out = []
    for problem_id, group in list(by_problem.items())[:max_problems]:
        good = [r for r in group if r.reward is not None and r.reward >= threshold]
        bad = [r for r in group if not (r.reward is not None and r.reward >= threshold)]
        picked = []
        while len(picked) < k and (good or bad):
            for pool in (good, bad):
                if pool and len(picked) < k:
                    picked.append(pool.pop(0))
        out.append({"problem_id": problem_id, "samples": [
            {"completion": r.completion, "reward": r.reward,
             "correct": r.reward is not None and r.reward >= threshold, "finish_reason": r.finish_reason}
            for r in picked]})
    return out


def traces_zero_score_warning(store: TraceStore, *, run_id: str, iteration: int, phase: str, tasks: list,
                              verifier: Any, threshold: float = 1.0, what: str | None = None) -> str | None:
    """:func:`~learning_mcp.tools.rewards.zero_score_warning` on the traces of one run/iteration/phase: None unless
    every problem scored below ``threshold``; a few completions are shown with what the verifier read."""
    rows = store.query(run_id=run_id, iterations=iteration, phases=phase)
    rewards: dict[str, list[float | None]] = {}
    completions: dict[str, str] = {}
    for row in rows:
        rewards.setdefault(row.problem_id, []).append(row.reward)
        completions.setdefault(row.problem_id, row.completion)
    by_id = {task.id: task for task in tasks}
    examples = [(by_id[pid], text) for pid, text in list(completions.items())[:3] if pid in by_id]
    all_empty = bool(rows) and all(not (row.completion or "").strip() for row in rows)
    kwargs = {"what": what} if what else {}
    return zero_score_warning(rewards, verifier, examples=examples, threshold=threshold, all_empty=all_empty,
                              **kwargs)


@dataclass
class _EvalRun:
    eval_id: str
    model: str
    state: str = "running"
    summary: dict | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)


class EvalRuns:
    """The evals started by this server process (``app`` as for :class:`~learning_mcp.tools.loop_manager.LoopManager`)."""

    def __init__(self, app_state: Any):
        self.app = app_state
        self.evals: dict[str, _EvalRun] = {}

    @property
    def traces_db(self) -> Path:
        return self.app.data_dir / "traces.sqlite"

    async def start_eval(self, *, model: str, tasks_path: str, split: str, settings: dict, verifier: Any,
                         chat_url: str | None, max_problems: int | None) -> _EvalRun:
        # TaskFileError / VerifierError are LearningMCPErrors: the MCP edge shows them as they are
        tasks = await anyio.to_thread.run_sync(lambda: load_tasks(tasks_path))
        checker = make_verifier(verifier, base_dir=Path(tasks_path).parent)
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
        url = chat_url or client.target.chat_url
        try:
            key = endpoint_key(url, client.target, None, environ=self.app.settings.environ)
        except PermissionError as exc:
            raise ToolFailure("key_not_allowed", str(exc)) from None
        try:
            reason = await probe_model(normalize_chat_url(url), model, api_key=key, timeout_s=PROBE_TIMEOUT_S)
        except ChatEndpointError:
            reason = None  # a bad URL fails the eval with its own error
        if reason is not None:  # refused up front, as run_sft_loop does, not after the eval has started
            raise ToolFailure("model_not_loadable",
                              f"model {model!r} cannot be served by {url} {reason} Pass a base model id, a local "
                              "model directory or an ft: id (list_jobs shows each succeeded job's "
                              "fine_tuned_model), then call eval again.", param="model")
        run = _EvalRun(eval_id=f"eval-{uuid.uuid4().hex[:10]}", model=model)
        self.evals[run.eval_id] = run
        greedy = settings.get("n", 1) == 1 and settings.get("temperature", 0.0) == 0.0
        sampling = SamplingSettings(**settings)

        async def go() -> None:
            store = TraceStore(self.traces_db)
            try:
                summary = await evaluate(tasks, chat_url=url, model=model, verifier=checker, settings=sampling,
                                         store=store, run_id=run.eval_id, iteration=0, phase="eval",
                                         api_key=key, greedy=greedy)
                warning = traces_zero_score_warning(store, run_id=run.eval_id, iteration=0, phase="eval",
                                                    tasks=tasks, verifier=checker,
                                                    what="problem(s) 0 in this eval")
                run.warnings = [warning] if warning else []
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


async def eval_call(runs: EvalRuns, *, model: str | None, tasks: str | None, split: str, n: int, temperature: float,
                    top_k: int | None, top_p: float, max_tokens: int, verifier: str, chat_url: str | None,
                    max_problems: int | None, val_fraction: float, split_seed: int, eval_id: str | None,
                    wait_seconds: float, include_samples: int = 0,
                    chat_template_kwargs: dict | None = None) -> tuple[EvalStatusResult, str]:
    """What the ``eval`` tool does: start an eval (or look one up by ``eval_id``), wait up to ``wait_seconds``
    (less the time the model probe took: the call returns within :data:`CALL_BUDGET_S`) and return
    ``(result, one-line summary)``. Raises ``ToolFailure`` (unknown_eval, missing_arguments,
    invalid_split, no_problems, and the task-file / verifier codes)."""
    started = anyio.current_time()
    if eval_id:
        run = runs.evals.get(eval_id)
        if run is None:
            raise ToolFailure("unknown_eval", f"Unknown eval_id {eval_id!r} (evals are kept in memory "
                                              "until the server restarts; their traces stay on disk)")
    else:
        if not model or not tasks:
            raise ToolFailure("missing_arguments", "pass model and tasks (or eval_id to check an eval)")
        if split not in {"all", "train", "validation"}:
            raise ToolFailure("invalid_split", "split must be all, train or validation")
        run = await runs.start_eval(model=model, tasks_path=str(Path(tasks).expanduser().resolve()),
                                    split=split, verifier=verifier, chat_url=chat_url,
                                    max_problems=max_problems,
                                    settings={"n": n, "temperature": temperature, "top_k": top_k,
                                              "top_p": top_p, "max_tokens": max_tokens,
                                              "chat_template_kwargs": chat_template_kwargs,
                                              "val_fraction": val_fraction, "split_seed": split_seed})
    with anyio.move_on_after(remaining_wait(started, wait_seconds)):
        await run.done.wait()
    summary = run.summary or {}
    next_step = (f"Call eval(eval_id={run.eval_id!r}) again for the result." if run.state == "running" else
                 f"Traces are in {runs.traces_db} under run_id {run.eval_id!r}: filter_traces(run_id=...) turns "
                 "the correct ones into an SFT dataset." if run.state == "succeeded" else "Fix the error and retry.")
    out = EvalStatusResult(eval_id=run.eval_id, state=run.state, model=run.model, error=run.error,
                           warnings=list(run.warnings),
                           traces_db=str(runs.traces_db), next_step=next_step,
                           **{k: summary.get(k) for k in ("problems", "samples", "correct", "solved_any",
                                                          "pass_at_1", "pass_at_n", "mean_reward", "seconds")})
    if include_samples and run.state == "succeeded":
        def read() -> list[dict[str, Any]]:
            with TraceStore(runs.traces_db) as store:
                return sample_completions(store, run_id=run.eval_id, iteration=0, phase="eval", k=include_samples)

        out.completions = await anyio.to_thread.run_sync(read)
    text = (f"eval {run.eval_id} of {run.model}: {run.state}" +
            (f", pass@1 {out.pass_at_1:.3f}, pass@n {out.pass_at_n:.3f} on {out.problems} problems "
             f"({out.samples} samples)"
             if run.state == "succeeded" else ""))
    return out, text
