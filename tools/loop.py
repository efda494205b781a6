"""ReST-EM (Singh et al. 2023) as a resumable step machine over the learning API and a chat endpoint.

One iteration (Algorithm 1, with the paper's defaults where they fit a CPU):

1. **sample** — the current model answers every train problem ``n`` times (T=0.7, top-k 40); each sample is
   scored by the binary verifier and stored as a trace (E-step).
2. **filter** — keep samples with reward ≥ threshold, drop duplicate completions, keep at most K per problem;
   write them as SFT JSONL (Synth's filter-output shape).
3. **upload** — validate the kept file and upload it.
4. **train** — create and start an SFT job from the **base** model (``reset_to_base``, the paper's default) or
   from the current model, and wait for it (M-step).
5. **val_eval** — greedy pass@1 of the new model on the held-out validation split; track the best model and stop
   early when validation stops improving.

The model of iteration *i* generates the samples of iteration *i+1*. State is a JSON file written atomically
after every step (``<loop_dir>/state.json``), so a restarted server resumes at the step it was in: a recorded
job is re-attached rather than created twice, and a half-done eval is redone from scratch (its traces are
deleted first). Everything the loop does goes through the same functions as the agent's own tools.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, Mapping

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from learning_mcp.tools import jobs as job_ops
from learning_mcp.tools.atomic import write_text_atomic
from learning_mcp.tools.client import LearningAPIError, LearningClient
from learning_mcp.tools.config_source import parse_toml, read_config_source
from learning_mcp.tools.errors import ToolFailure, api_failure, validation_problems
from learning_mcp.tools.evaluate import (ChatEndpointError, SamplingSettings, TaskAppError, evaluate,
                                         evaluate_task_app)
from learning_mcp.tools.filtering import FilterSpec, filter_traces
from learning_mcp.tools.rewards import VerifierError, make_verifier
from learning_mcp.tools.settings import endpoint_key
from learning_mcp.tools.sft_config import ConfigError, build_sft_plan
from learning_mcp.tools.tasks import TaskFileError, load_tasks, split_tasks
from learning_mcp.tools.traces import TraceStore

log = logging.getLogger(__name__)

LoopStateName = Literal["running", "succeeded", "failed", "cancelled"]
Step = Literal["sample", "filter", "upload", "train", "val_eval", "done"]
LOOP_SECTIONS = ("loop", "eval", "filter")
RETRYABLE_JOB_FAILURES = frozenset({"backend_restarted", "worker_crashed"})
MAX_JOB_ATTEMPTS = 3


class LoopConfig(BaseModel):
    """Everything a loop needs. From ``run_sft_loop`` arguments or a TOML (``[loop]``, ``[eval]``, ``[filter]``
    next to Synth's SFT sections)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(description="base model id / local path / ft: id to start from")
    tasks: str | None = Field(None, description="JSONL of problems: id, messages or prompt, answer, optional split "
                                                "(not needed with a task app)")
    verifier: str | dict = Field("exact", description="exact | numeric | boxed | answer | module:function | {...}")
    iterations: int = Field(3, ge=1, le=50)
    reset_to_base: bool = Field(True, description="each M-step trains from the base model (ReST-EM)")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    split_seed: int = 0
    max_train_problems: int | None = Field(None, ge=1)
    max_val_problems: int | None = Field(None, ge=1)
    # E-step sampling
    n: int = Field(8, ge=1, le=128, description="samples per problem")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_k: int | None = Field(40, ge=1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(64, ge=1, le=8192)
    stop: list[str] | None = None
    eval_concurrency: int = Field(8, ge=1, le=256)
    seed: int | None = 0
    # filter
    reward_threshold: float = 1.0
    max_per_problem: int | None = Field(4, ge=1)
    dedupe: bool = True
    # M-step
    sft_config: str | dict[str, Any] | None = Field(None, description="SFT sections (a table), or an SFT TOML "
                                                                     "(path or text); default: a full fine-tune")
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="overrides merged into the payload")
    job_timeout_s: float = Field(7200, gt=0)
    # stopping
    early_stopping: bool = True
    patience: int = Field(1, ge=1)
    min_improvement: float = Field(0.0, ge=0.0)
    # where to sample from (default: the learning API's own inference endpoint)
    chat_url: str | None = None
    chat_api_key_env: str | None = Field(None, description="env var holding the chat endpoint's key")
    # or: a Synth task app is the environment (POST /rollout with X-API-Key; learning-api.md §6)
    task_app_url: str | None = None
    task_app_api_key_env: str = "ENVIRONMENT_API_KEY"
    env_name: str | None = None
    policy_name: str | None = None
    train_seeds: list[int] = Field(default_factory=list)
    val_seeds: list[int] = Field(default_factory=list)
    max_llm_calls: int = Field(10, ge=1)
    env_config: dict[str, Any] = Field(default_factory=dict)
    policy_config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_tasks_or_task_app(self) -> "LoopConfig":
        if not self.tasks and not self.task_app_url:
            raise ValueError("pass tasks (a JSONL of problems) or task_app_url (a Synth task app)")
        if self.task_app_url and not self.train_seeds:
            raise ValueError("a task app loop needs train_seeds (and usually val_seeds)")
        return self


class IterationRecord(BaseModel):
    iteration: int
    step: Step = "sample"
    sampler_model: str
    train_from: str | None = None
    samples: int | None = None
    problems: int | None = None
    solved: int | None = None
    train_pass_at_1: float | None = None
    kept: int | None = None
    filter_counts: dict[str, int] | None = None
    kept_path: str | None = None
    file_id: str | None = None
    job_id: str | None = None
    job_attempts: int = 0
    job_status: str | None = None
    fine_tuned_model: str | None = None
    final_train_loss: float | None = None
    val_pass_at_1: float | None = None
    seconds: float = 0.0
    started_at: float | None = None


class LoopState(BaseModel):
    loop_id: str
    state: LoopStateName = "running"
    message: str = "starting"
    config: LoopConfig
    base_val_pass_at_1: float | None = None
    iterations: list[IterationRecord] = Field(default_factory=list)
    best_model: str | None = None
    best_val_pass_at_1: float | None = None
    best_iteration: int | None = None
    stopped_reason: str | None = None
    error: dict | None = None
    cancel_requested: bool = False
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    train_problems: int | None = None
    val_problems: int | None = None

    @property
    def current(self) -> IterationRecord | None:
        return self.iterations[-1] if self.iterations else None


def default_sft_config(model: str) -> dict[str, Any]:
    """The SFT sections a loop trains with when it has none of its own: a full fine-tune of ``model``."""
    return {"algorithm": {"type": "offline", "method": "sft", "variety": "fft"},
            "job": {"model": model},
            "compute": {"gpu_type": "H100", "gpu_count": 1},
            "hyperparameters": {"n_epochs": 3, "learning_rate": 1e-5, "per_device_batch": 8}}


def parse_loop_toml(text_or_path: str) -> tuple[dict, str]:
    """Split a loop TOML into (loop arguments, its text). Path or text is decided by the rule every config loader
    shares (:func:`~learning_mcp.tools.config_source.config_path`). The SFT sections (everything but ``[loop]``,
    ``[eval]``, ``[filter]``) stay data: ``args["sft_config"]`` is their dict, never TOML written again.
    Raises ``ConfigSourceError`` ``config_not_found`` / ``invalid_toml``."""
    source = read_config_source(text_or_path, what="loop config")
    doc = parse_toml(source, what="loop config")
    args: dict[str, Any] = dict(doc.get("loop") or {})
    args.update({k: v for k, v in (doc.get("eval") or {}).items()})
    args.update({k: v for k, v in (doc.get("filter") or {}).items()})
    sft = {k: v for k, v in doc.items() if k not in LOOP_SECTIONS}
    if "base_model" not in args and isinstance(sft.get("job"), dict) and sft["job"].get("model"):
        args["base_model"] = sft["job"]["model"]
    if sft.get("algorithm") or sft.get("hyperparameters"):
        args.setdefault("sft_config", sft)
    if source.base_dir is not None:  # relative task paths resolve against the config's folder
        tasks = args.get("tasks")
        if isinstance(tasks, str) and not Path(tasks).is_absolute():
            args["tasks"] = str((source.base_dir / tasks).resolve())
    return args, source.text


def loop_config_from(config: str | None, explicit: dict[str, Any]) -> LoopConfig:
    """What ``run_sft_loop`` runs: the loop config (path or TOML text, :func:`parse_loop_toml`) overridden by the
    call's explicit arguments (``None`` = not given); a relative ``tasks`` resolves against the working
    directory. Raises ``ToolFailure`` ``invalid_loop_config`` naming each bad field."""
    args: dict[str, Any] = {}
    if config:
        args, _ = parse_loop_toml(config)
    args.update({k: v for k, v in explicit.items() if v is not None})
    if isinstance(args.get("tasks"), str) and not Path(args["tasks"]).expanduser().is_absolute():
        args["tasks"] = str(Path(args["tasks"]).expanduser().resolve())
    try:
        return LoopConfig(**args)
    except ValidationError as exc:
        problems = validation_problems(exc.errors())
        raise ToolFailure("invalid_loop_config", f"invalid loop settings: {problems}. Pass base_model and "
                                                 "tasks (or a config TOML with [loop]).") from None


LOOP_EXAMPLE_TOML = """\
# A ReST-EM loop (run_sft_loop(config=<this file or text>)). Arguments passed to run_sft_loop override it.
[loop]
base_model = "ft:/path/to/model:ftjob-123"  # or a Hub id / local path; also read from [job].model
tasks = "tasks.jsonl"         # relative to this file
verifier = "exact"            # exact | numeric | boxed | answer | {type = "regex", pattern = "..."} | "module:fn" | "file.py:fn"
iterations = 3
reset_to_base = true          # every M-step fine-tunes the base model (ReST-EM); false = continue from the last
val_fraction = 0.2            # used only when no task has a "split"
split_seed = 0
# max_train_problems = 1000
# max_val_problems = 200
early_stopping = true         # stop when validation pass@1 has not improved for `patience` iterations
patience = 1
# chat_url = "http://localhost:8000/v1"   # sample from another OpenAI-compatible server (default: the learning API's)
# task_app_url = "http://localhost:8001"  # or a Synth task app as the environment (then train_seeds/val_seeds)

[eval]                        # the E-step's sampling
n = 8                         # samples per train problem (paper: 32)
temperature = 0.7
top_k = 40
max_tokens = 64
# stop = ["\\n\\n"]

[filter]
reward_threshold = 1.0
max_per_problem = 4           # keep at most K correct samples per problem (paper: 10)
dedupe = true

# The SFT config of every M-step: Synth's schema (see learning://config/example)
[algorithm]
type = "offline"
method = "sft"
variety = "fft"

[job]
model = "ft:/path/to/model:ftjob-123"

[hyperparameters]
n_epochs = 3
learning_rate = 1e-5
per_device_batch = 8
"""

TASKS_FORMAT_DOC = """\
Task file (JSONL, one problem per line):
  {"id": "p1", "prompt": "12+30=?", "answer": "42", "split": "train"}
  {"id": "p2", "messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
   "answer": "7", "split": "validation"}
`id` is required and unique; `prompt` (a user message, optional `system`) or `messages`; the reference under
`answer` (aliases: reference, solution, target, tests) is used only by the verifier; `split` is train |
validation | test (without any split, `val_fraction` of the problems are held out by a seeded hash of the id).
A python verifier is `fn(completion, answer, task) -> float | bool` (1 = correct).
"""


class LoopCancelRequested(Exception):
    """``cancel_loop`` was called from another server process (it leaves a ``cancel`` file in the loop dir)."""


class LoopRunner:
    """Drives one loop to its end. ``state_dir`` holds ``state.json``, ``traces.sqlite`` and the kept files."""

    def __init__(self, state: LoopState, state_dir: Path, client: LearningClient, *,
                 on_change: Callable[[LoopState], Awaitable[None] | None] | None = None,
                 environ: Mapping[str, str] | None = None):
        """``environ``: the server's ``Settings.environ`` (endpoint keys, ``SDK_EXPERIMENTAL*``); None: the
        process environment."""
        self.state = state
        self.dir = state_dir
        self.client = client
        self.environ = environ
        self.on_change = on_change
        self.cfg = state.config

    # -- persistence -----------------------------------------------------------------------------------
    def save(self) -> None:
        self.state.updated_at = time.time()
        write_text_atomic(self.dir / "state.json", self.state.model_dump_json(indent=1))

    def check_cancel(self) -> None:
        if (self.dir / "cancel").exists():
            raise LoopCancelRequested()

    async def _changed(self, message: str | None = None) -> None:
        self.check_cancel()
        if message:
            self.state.message = message
            log.info("loop %s: %s", self.state.loop_id, message)
        self.save()
        if self.on_change is not None:
            result = self.on_change(self.state)
            if result is not None:
                await result

    @staticmethod
    def load(state_dir: Path) -> LoopState:
        return LoopState.model_validate_json((state_dir / "state.json").read_text())

    # -- the loop --------------------------------------------------------------------------------------
    async def run(self) -> LoopState:
        try:
            await self._run()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                if self.state.cancel_requested:
                    await self._finish_cancelled()
                else:  # the server is shutting down: the loop stays 'running' and resumes on the next start
                    self.state.message = f"interrupted by a server shutdown ({self.state.message}); resumes on restart"
                    self.save()
            raise
        except LoopCancelRequested:
            self.state.cancel_requested = True
            await self._finish_cancelled()
        except VerifierError as exc:
            await self._fail("verifier_error", f"the verifier failed: {exc}. Fix the verifier and start a new loop.")
        except ChatEndpointError as exc:
            await self._fail("chat_endpoint_error", f"sampling failed: {exc}")
        except TaskFileError as exc:
            await self._fail("invalid_tasks", f"the task file is invalid: {exc}")
        except TaskAppError as exc:
            await self._fail("task_app_error", f"the task app failed: {exc}")
        except LearningAPIError as exc:  # before LearningMCPError, its base type
            failure = api_failure(exc, action="the loop's API call")
            await self._fail(failure.code, failure.message)
        except ToolFailure as exc:
            await self._fail(exc.code, exc.message)
        except Exception as exc:  # a bug: record it on the loop rather than leave it 'running' forever
            log.exception("loop %s crashed", self.state.loop_id)
            await self._fail("internal_error", f"{type(exc).__name__}: {exc}")
        return self.state

    async def _fail(self, code: str, message: str) -> None:
        self.state.state = "failed"
        self.state.error = {"code": code, "message": message}
        self.state.message = f"failed: {message}"
        log.info("loop %s: %s", self.state.loop_id, self.state.message)
        self.save()

    async def _finish_cancelled(self) -> None:
        record = self.state.current
        if record is not None and record.job_id and record.step == "train":
            try:
                await self.client.cancel_job(record.job_id)
            except LearningAPIError as exc:
                log.warning("could not cancel job %s: %s", record.job_id, exc)
        self.state.state = "cancelled"
        self.state.stopped_reason = "cancelled"
        self.state.message = "cancelled by cancel_loop"
        self.save()

    async def _run(self) -> None:
        cfg = self.cfg
        if cfg.task_app_url:  # the environment is a task app: problems are seeds, the app scores rollouts
            train, val, verifier = list(cfg.train_seeds), list(cfg.val_seeds), None
        else:
            tasks = await anyio.to_thread.run_sync(lambda: load_tasks(cfg.tasks))
            train, val = split_tasks(tasks, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
            verifier = make_verifier(cfg.verifier, base_dir=Path(cfg.tasks).parent)
        train = train[: cfg.max_train_problems] if cfg.max_train_problems else train
        val = val[: cfg.max_val_problems] if cfg.max_val_problems else val
        if not train:
            raise ToolFailure("no_train_problems", "the task set has no train problems after the split")
        self.state.train_problems, self.state.val_problems = len(train), len(val)
        store = TraceStore(self.dir / "traces.sqlite")
        try:
            if val and self.state.base_val_pass_at_1 is None:
                await self._changed(f"greedy eval of the base model on {len(val)} validation problems")
                summary = await self._eval(store, val, cfg.base_model, iteration=0, phase="val_eval", greedy=True,
                                           verifier=verifier)
                self.state.base_val_pass_at_1 = summary.pass_at_1
                self.state.best_model, self.state.best_val_pass_at_1 = cfg.base_model, summary.pass_at_1
                self.state.best_iteration = 0
                await self._changed(f"base model: validation pass@1 {summary.pass_at_1:.3f}")
            while True:
                record = self.state.current
                if record is None or record.step == "done":
                    if record is not None and self._should_stop():
                        break
                    if len(self.state.iterations) >= cfg.iterations:
                        self.state.stopped_reason = "completed"
                        break
                    sampler = record.fine_tuned_model if record and record.fine_tuned_model else cfg.base_model
                    record = IterationRecord(iteration=len(self.state.iterations) + 1, sampler_model=sampler,
                                             started_at=time.time())
                    self.state.iterations.append(record)
                    await self._changed(f"iteration {record.iteration}: sampling")
                await self._advance(record, store, train, val, verifier)
        finally:
            store.close()
        self.state.state = "succeeded"
        best = self.state.best_model
        await self._changed(f"finished ({self.state.stopped_reason}); best model {best} "
                            f"(validation pass@1 {self.state.best_val_pass_at_1})")

    def _should_stop(self) -> bool:
        cfg = self.cfg
        if not cfg.early_stopping or self.state.base_val_pass_at_1 is None:
            return False
        done = [r for r in self.state.iterations if r.step == "done" and r.val_pass_at_1 is not None]
        if len(done) < cfg.patience:
            return False
        best_before = self.state.base_val_pass_at_1
        streak = 0
        for record in done:
            if record.val_pass_at_1 > best_before + cfg.min_improvement:
                best_before, streak = record.val_pass_at_1, 0
            else:
                streak += 1
        if streak >= cfg.patience:
            self.state.stopped_reason = "val_not_improving"
            return True
        return False

    async def _eval(self, store, tasks, model: str, *, iteration: int, phase: str, greedy: bool, verifier):
        cfg = self.cfg
        store.delete(self.state.loop_id, iteration=iteration, phase=phase)  # a resumed eval starts clean
        settings = SamplingSettings(n=1 if greedy else cfg.n, temperature=0.0 if greedy else cfg.temperature,
                                    top_p=cfg.top_p, top_k=None if greedy else cfg.top_k, max_tokens=cfg.max_tokens,
                                    stop=cfg.stop, seed=None if cfg.seed is None else cfg.seed + iteration)
        chat_url = cfg.chat_url or self.client.target.chat_url
        api_key = self._key(chat_url, cfg.chat_api_key_env)
        if cfg.task_app_url:
            return await evaluate_task_app(
                tasks, task_app_url=cfg.task_app_url,
                env_api_key=self._key(cfg.task_app_url, cfg.task_app_api_key_env, default_env="ENVIRONMENT_API_KEY"),
                model=model, inference_url=chat_url, store=store, run_id=self.state.loop_id, iteration=iteration,
                phase=phase, env_name=cfg.env_name, policy_name=cfg.policy_name,
                split="validation" if phase == "val_eval" else "train", max_llm_calls=cfg.max_llm_calls,
                env_config=cfg.env_config,
                policy_config={"temperature": settings.temperature, "max_tokens": settings.max_tokens,
                               **({} if greedy else {"top_p": settings.top_p}), **cfg.policy_config},
                concurrency=cfg.eval_concurrency, reward_threshold=cfg.reward_threshold, environ=self.environ)
        return await evaluate(tasks, chat_url=chat_url, model=model, verifier=verifier, settings=settings,
                              store=store, run_id=self.state.loop_id, iteration=iteration, phase=phase,
                              api_key=api_key, concurrency=cfg.eval_concurrency, greedy=greedy)

    def _key(self, url: str, key_env: str | None, default_env: str | None = None) -> str | None:
        try:
            return endpoint_key(url, self.client.target, key_env, default_env=default_env, environ=self.environ)
        except PermissionError as exc:
            raise ToolFailure("key_not_allowed", str(exc)) from None

    async def _advance(self, record: IterationRecord, store, train, val, verifier) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        if record.step == "sample":
            summary = await self._eval(store, train, record.sampler_model, iteration=record.iteration,
                                       phase="train_eval", greedy=False, verifier=verifier)
            record.samples, record.problems, record.solved = summary.samples, summary.problems, summary.solved_any
            record.train_pass_at_1 = summary.pass_at_1
            record.step = "filter"
            await self._changed(f"iteration {record.iteration}: {summary.correct}/{summary.samples} samples correct, "
                                f"{summary.solved_any}/{summary.problems} problems solved")
        elif record.step == "filter":
            out = self.dir / f"iter_{record.iteration:02d}_kept.jsonl"
            spec = FilterSpec(db=str(self.dir / "traces.sqlite"), output=str(out), run_id=self.state.loop_id,
                              iterations=[record.iteration], phases=["train_eval"],
                              reward_threshold=cfg.reward_threshold, max_per_problem=cfg.max_per_problem,
                              dedupe=cfg.dedupe)
            report = await anyio.to_thread.run_sync(lambda: filter_traces(spec, store))
            record.filter_counts = dict(report.counts)
            record.kept = report.counts.get("written", 0)
            if not record.kept:
                raise ToolFailure("empty_filter_result",
                                  f"iteration {record.iteration}: no sample passed the verifier "
                                  f"({record.samples} samples on {record.problems} problems, reward threshold "
                                  f"{cfg.reward_threshold}); nothing to train on. Use a stronger seed model, more "
                                  "samples (n), a higher temperature, or check the verifier against the answers.")
            record.kept_path = str(out)
            record.step = "upload"
            await self._changed(f"iteration {record.iteration}: kept {record.kept} samples")
        elif record.step == "upload":
            up = await job_ops.upload_dataset(self.client, record.kept_path, min_messages=1)
            record.file_id = up.file_id
            record.step = "train"
            await self._changed(f"iteration {record.iteration}: uploaded {up.file_id}")
        elif record.step == "train":
            if record.job_id is None:
                record.train_from = cfg.base_model if cfg.reset_to_base else record.sampler_model
                sft_doc = apply_hyperparameter_overrides(sft_config_doc(cfg.sft_config, record.train_from),
                                                          cfg.hyperparameters)
                record.job_attempts += 1
                out = await job_ops.create_job_from_config(
                    self.client, sft_doc, training_file_id=record.file_id, model=record.train_from, start=True,
                    idempotency_key=f"{self.state.loop_id}-iter{record.iteration}-try{record.job_attempts}",
                    environ=self.environ)
                record.job_id = out.job_id
                await self._changed(f"iteration {record.iteration}: training job {out.job_id} from {record.train_from}")
            job = await job_ops.wait_for_job(self.client, record.job_id, timeout_s=cfg.job_timeout_s,
                                             should_stop=lambda: (self.dir / "cancel").exists())
            self.check_cancel()
            record.job_status = job.status
            err_code = job.error.get("code") if isinstance(job.error, dict) else None
            if (record.job_status == "failed" and err_code in RETRYABLE_JOB_FAILURES
                    and record.job_attempts < MAX_JOB_ATTEMPTS):
                # the job died with its worker or backend, not because of the data: train again
                await self._changed(f"iteration {record.iteration}: job {record.job_id} was interrupted "
                                    f"({err_code}); starting it again")
                record.job_id = None
                return
            if record.job_status != "succeeded":
                err = job.error or {}
                raise ToolFailure("training_failed", f"iteration {record.iteration}: job {record.job_id} ended "
                                                     f"{record.job_status}: {err.get('message') or err}")
            record.fine_tuned_model = job.fine_tuned_model
            loss = (job.latest_metrics or {}).get("train.loss")
            if loss is None:
                points = await self.client.get_metrics(record.job_id, name="train.loss", limit=5000)
                loss = points[-1] if points else None
            record.final_train_loss = (loss or {}).get("value") if isinstance(loss, dict) else loss
            record.step = "val_eval" if val else "done"
            await self._changed(f"iteration {record.iteration}: trained {record.fine_tuned_model}")
        elif record.step == "val_eval":
            summary = await self._eval(store, val, record.fine_tuned_model, iteration=record.iteration,
                                       phase="val_eval", greedy=True, verifier=verifier)
            record.val_pass_at_1 = summary.pass_at_1
            if self.state.best_val_pass_at_1 is None or summary.pass_at_1 > self.state.best_val_pass_at_1:
                self.state.best_model, self.state.best_val_pass_at_1 = record.fine_tuned_model, summary.pass_at_1
                self.state.best_iteration = record.iteration
            record.step = "done"
            await self._changed(f"iteration {record.iteration}: validation pass@1 {summary.pass_at_1:.3f}")
        record.seconds += time.monotonic() - t0
        self.save()


def preflight(cfg: LoopConfig, target, environ: Mapping[str, str] | None = None) -> None:
    """Everything that can be checked before any sampling is spent: tasks, verifier, SFT config, endpoint keys.
    Raises ToolFailure with what to fix, so run_sft_loop refuses a loop that could only fail later."""
    if cfg.tasks:
        path = Path(cfg.tasks)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "not found"
            raise ToolFailure("tasks_not_found", f"task file {what}: {path} (a JSONL with one problem per line: "
                                                 '{"id", "prompt" or "messages", "answer", "split"?})')
        try:
            tasks = load_tasks(path)
        except TaskFileError as exc:
            first = str(exc).splitlines()[0][:500]
            raise ToolFailure("invalid_tasks", f"{first} — each task line needs id, prompt (or messages) and answer; "
                                               "see resource learning://config/loop-example") from None
        train, _ = split_tasks(tasks, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
        if not train:
            raise ToolFailure("no_train_problems", f"{path} has no train problems after the split")
        try:
            make_verifier(cfg.verifier, base_dir=path.parent)
        except VerifierError as exc:
            raise ToolFailure("verifier_error", str(exc)) from None
    try:
        endpoint_key(cfg.chat_url or target.chat_url, target, cfg.chat_api_key_env, environ=environ)
        if cfg.task_app_url:
            endpoint_key(cfg.task_app_url, target, cfg.task_app_api_key_env, default_env="ENVIRONMENT_API_KEY",
                         environ=environ)
    except PermissionError as exc:
        raise ToolFailure("key_not_allowed", str(exc)) from None
    sft = apply_hyperparameter_overrides(sft_config_doc(cfg.sft_config, cfg.base_model), cfg.hyperparameters)
    try:
        build_sft_plan(sft, training_file_id="file-preflight", model=cfg.base_model,
                       target="synth" if target.is_synth else "local", require_dataset_path=False, environ=environ)
    except ConfigError as exc:
        raise ToolFailure(f"config_{exc.code}", f"the loop's SFT config is invalid: {exc.message}") from None


def sft_config_doc(config: str | dict | None, model: str) -> dict[str, Any]:
    """The SFT config as data: the loop's own (sections kept as a dict, or a path / TOML text read by the shared
    rule) or :func:`default_sft_config`. Raises ``ConfigSourceError``."""
    if not config:
        return default_sft_config(model)
    if isinstance(config, dict):
        return copy.deepcopy(config)
    return parse_toml(read_config_source(config, what="SFT config"), what="SFT config")


def apply_hyperparameter_overrides(sft: dict[str, Any], overrides: dict) -> dict[str, Any]:
    """``sft`` with ``overrides`` merged into its ``[hyperparameters]`` table (a new dict)."""
    doc = copy.deepcopy(sft)
    if overrides:
        doc.setdefault("hyperparameters", {}).update(overrides)
    return doc
