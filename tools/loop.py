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
import difflib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, Mapping

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from learning_mcp.tools import jobs as job_ops
from learning_mcp.tools import lora_serving
from learning_mcp.tools.atomic import write_bytes_atomic, write_text_atomic
from learning_mcp.tools.charts import loop_chart_png
from learning_mcp.tools.client import LearningAPIError, LearningClient
from learning_mcp.tools.config_source import is_file as config_is_file
from learning_mcp.tools.config_source import parse_toml, path_exists, read_config_source
from learning_mcp.tools.errors import ToolFailure, api_failure, validation_problems
from learning_mcp.tools.eval_runs import traces_zero_score_warning
from learning_mcp.tools.export_ops import export_model
from learning_mcp.tools.evaluate import (ChatEndpointError, SamplingSettings, TaskAppError, evaluate,
                                         evaluate_task_app)
from learning_mcp.tools.filtering import FilterSpec, filter_traces
from learning_mcp.tools.model_checks import lora_selected, model_config_json
from learning_mcp.tools.rewards import VerifierError, make_verifier
from learning_mcp.tools.sampling import EvalSummary, normalize_chat_url, probe_model
from learning_mcp.tools.settings import endpoint_key
from learning_mcp.tools.sft_config import SFT_SECTIONS, ConfigError, build_sft_plan
from learning_mcp.tools.tasks import TaskFileError, load_tasks, split_tasks
from learning_mcp.tools.traces import TraceStore

log = logging.getLogger(__name__)

LoopStateName = Literal["running", "succeeded", "failed", "cancelled"]
Step = Literal["sample", "filter", "upload", "train", "val_eval", "done"]
LOOP_SECTIONS = ("loop", "eval", "filter")
RETRYABLE_JOB_FAILURES = frozenset({"backend_restarted", "worker_crashed"})
MAX_JOB_ATTEMPTS = 3
LOOP_CHART_FILE = "chart.png"


class LoopConfig(BaseModel):
    """Everything a loop needs. From ``run_sft_loop`` arguments or a TOML (``[loop]``, ``[eval]``, ``[filter]``
    next to Synth's SFT sections)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(description="base model id / local path / ft: id to start from")
    tasks: str | None = Field(None, description="JSONL of problems: id, messages or prompt, answer, optional split "
                                                "(not needed with a task app)")
    verifier: str | dict = Field("exact", description="exact | numeric | boxed | answer | math | module:function | "
                                                      "{...}")
    iterations: int = Field(3, ge=1, le=50)
    reset_to_base: bool = Field(True, description="each M-step trains from the base model (ReST-EM)")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    split_seed: int | None = Field(None, description="seed of the train/validation split; default: `seed`")
    max_train_problems: int | None = Field(None, ge=1)
    max_val_problems: int | None = Field(None, ge=1)
    # E-step sampling
    n: int = Field(8, ge=1, le=128, description="samples per problem")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_k: int | None = Field(40, ge=1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(64, ge=1, le=8192)
    stop: list[str] | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="passed to the chat template, e.g. "
                                                                          "{enable_thinking = false} (vLLM's field)")
    eval_concurrency: int = Field(8, ge=1, le=256)
    seed: int | None = Field(0, description="fixes the split (unless split_seed is set), every sampling request "
                                            "(a per-request seed from seed, iteration, problem id) and the M-step's "
                                            "training seed (unless hyperparameters set one); None = unseeded")
    sample_from: Literal["latest", "best"] = Field(
        "latest", description="which model samples iteration i+1: the latest M-step's (ReST-EM) or the best on "
                              "validation so far")
    n_unsolved: int | None = Field(None, ge=1, le=128, description="samples per problem for train problems no "
                                                                   "earlier iteration solved (default: n)")
    # filter
    reward_threshold: float = 1.0
    max_per_problem: int | None = Field(4, ge=1)
    dedupe: bool = True
    keep_truncated: bool = Field(False, description="also train on samples cut off at max_tokens")
    balance_per_problem: bool = Field(False, description="repeat each solved problem's kept samples up to "
                                                         "max_per_problem, so every solved problem weighs the same")
    # M-step
    sft_config: str | dict[str, Any] | None = Field(None, description="SFT sections (a table), or an SFT TOML "
                                                                     "(path or text); default: a full fine-tune")
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="overrides merged into the payload")
    mstep_epochs: float | None = Field(None, gt=0, le=100, description="when set, each M-step runs "
                                       "ceil(mstep_epochs * kept / per_device_batch) steps (total_steps scaled to "
                                       "the kept samples) instead of the config's fixed total_steps")
    job_timeout_s: float = Field(7200, gt=0)
    api_outage_s: float = Field(600, ge=0, description="while waiting on a training job, keep retrying reads "
                                                       "through an API outage this long (seconds) before failing")
    # stopping
    early_stopping: bool = True
    patience: int = Field(1, ge=1)
    min_improvement: float = Field(0.0, ge=0.0)
    # where to sample from (default: the learning API's own inference endpoint)
    chat_url: str | None = None
    chat_api_key_env: str | None = Field(None, description="env var holding the chat endpoint's key")
    load_lora_adapters: bool = Field(False, description="after each M-step, load the new LoRA model into the "
                                     "chat_url server under its ft: id (vLLM's runtime LoRA loading, load_lora_adapter; "
                                     "the embedded backend serves the same API) and unload adapters no longer "
                                     "needed; needs chat_url, a LoRA M-step and reset_to_base")
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

    @property
    def effective_split_seed(self) -> int:
        """``split_seed``, else ``seed``, else 0."""
        return self.split_seed if self.split_seed is not None else (self.seed or 0)

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
    truncated_dropped: int | None = Field(None, description="correct samples dropped as cut off at max_tokens")
    mstep_steps: int | None = Field(None, description="total_steps of the M-step when scaled to the kept samples")
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
    served_adapters: list[str] = Field(default_factory=list, description="ft: models loaded into the chat_url "
                                                                        "server (load_lora_adapters), oldest first")
    resolved_config: dict[str, Any] | None = Field(None, description="every setting with its value and source "
                                                                      "(argument | file | default)")
    warnings: list[str] = Field(default_factory=list)

    @property
    def current(self) -> IterationRecord | None:
        return self.iterations[-1] if self.iterations else None


# M-step hyperparameters when neither the loop's SFT config nor ``hyperparameters`` set them, by model width
# (``hidden_size`` of the model's config.json). lr 1e-5 for 3 epochs (a common full fine-tune default for 1B+ models)
# moves a small model by nothing measurable, so small models get a higher learning rate. The tiny row is what the
# arithmetic demo and the loop tests train with (lr 2e-3..3e-3, batch 16..32, ~2 epochs over the kept set).
DEFAULT_HYPERPARAMETERS: tuple[tuple[int, dict[str, Any]], ...] = (
    (256, {"n_epochs": 2, "learning_rate": 2e-3, "per_device_batch": 16, "warmup_ratio": 0.05}),
    (1024, {"n_epochs": 2, "learning_rate": 1e-4, "per_device_batch": 8}),
    (1 << 30, {"n_epochs": 3, "learning_rate": 1e-5, "per_device_batch": 8}),
)


def default_hyperparameters(model: str) -> tuple[dict[str, Any], str]:
    """``(hyperparameters, why)`` for an M-step of ``model`` when nothing else sets them: chosen by the model's
    ``hidden_size`` (:data:`DEFAULT_HYPERPARAMETERS`); a model whose config cannot be read here (a remote ``ft:``
    id) gets the large-model row, and ``why`` says so."""

    config = model_config_json(model) or {}
    width = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    if not isinstance(width, int):
        return dict(DEFAULT_HYPERPARAMETERS[-1][1]), ("model width unknown here (config.json not readable): the "
                                                      "large-model defaults; pass hyperparameters for a small model")
    for limit, hp in DEFAULT_HYPERPARAMETERS:
        if width <= limit:
            return dict(hp), f"model default for hidden_size {width} (≤ {limit})" if limit < (1 << 30) else \
                f"model default for hidden_size {width}"
    raise AssertionError("unreachable")


def default_sft_config(model: str) -> dict[str, Any]:
    """The SFT sections a loop trains with when it has none of its own: a full fine-tune of ``model`` with
    :func:`default_hyperparameters`."""
    return {"algorithm": {"type": "offline", "method": "sft", "variety": "fft"},
            "job": {"model": model},
            "compute": {"gpu_type": "H100", "gpu_count": 1},
            "hyperparameters": default_hyperparameters(model)[0]}


def resolve_config(cfg: LoopConfig, file_args: Mapping[str, Any], explicit: Mapping[str, Any]) -> dict[str, Any]:
    """Every loop setting with its value and source: ``{"loop": {name: {"value", "source"}}, "hyperparameters":
    {name: {"value", "source"}}}``; a source is ``argument`` (run_sft_loop's arguments), ``file`` (the config
    TOML) or ``default`` (with why, for the M-step's model-dependent defaults). Pure but for reading the
    model's config.json."""
    dumped = cfg.model_dump(mode="json")
    loop: dict[str, Any] = {}
    for name, value in dumped.items():
        if name == "sft_config":
            continue
        source = ("argument" if explicit.get(name) is not None else "file" if name in file_args else "default")
        loop[name] = {"value": value, "source": source}
    loop["split_seed"]["value"] = cfg.effective_split_seed
    if cfg.split_seed is None:
        loop["split_seed"]["source"] = "default (= seed)"
    hp: dict[str, Any] = {}
    if isinstance(cfg.sft_config, dict) or cfg.sft_config:
        file_hp = (sft_config_doc(cfg.sft_config, cfg.base_model).get("hyperparameters") or {})
        sft_source = "file" if "sft_config" in file_args and explicit.get("sft_config") is None else "argument"
        for name, value in file_hp.items():
            hp[name] = {"value": value, "source": sft_source}
    else:
        defaults, why = default_hyperparameters(cfg.base_model)
        for name, value in defaults.items():
            hp[name] = {"value": value, "source": f"default ({why})"}
    for name, value in (cfg.hyperparameters or {}).items():
        hp[name] = {"value": value, "source": "argument" if explicit.get("hyperparameters") else "file"}
    if cfg.seed is not None and "seed" not in hp:
        hp["seed"] = {"value": cfg.seed, "source": "default (= loop seed)"}
    if cfg.mstep_epochs is not None:
        hp["total_steps"] = {"value": f"ceil({cfg.mstep_epochs} * kept / per_device_batch)",
                             "source": loop["mstep_epochs"]["source"] + " (mstep_epochs)"}
    return {"loop": loop, "hyperparameters": hp}


def default_warnings(resolved: Mapping[str, Any]) -> list[str]:
    """Warnings for settings the caller did not choose that matter most (the M-step's hyperparameters)."""
    hp = resolved.get("hyperparameters") or {}
    defaulted = {k: v["value"] for k, v in hp.items() if str(v["source"]).startswith("default (") and k != "seed"}
    if not defaulted:
        return []
    why = next(iter(v["source"] for k, v in hp.items() if k in defaulted))
    return [f"M-step hyperparameters not given, using {defaulted} — {why}. Pass hyperparameters={{...}} or an SFT "
            "config to choose them (see resource learning://config/loop-example)."]


def parse_loop_toml(text_or_path: str) -> tuple[dict, str]:
    """Split a loop TOML into (loop arguments, its text). Path or text is decided by the rule every config loader
    shares (:func:`~learning_mcp.tools.config_source.config_path`). The SFT sections (everything but ``[loop]``,
    ``[eval]``, ``[filter]``) stay data: ``args["sft_config"]`` is their dict, never TOML written again.
    Raises ``ConfigSourceError`` ``config_not_found`` / ``invalid_toml``."""
    source = read_config_source(text_or_path, what="loop config")
    doc = parse_toml(source, what="loop config")
    for table in doc:
        close = difflib.get_close_matches(table, sorted(LOOP_SECTIONS), n=1, cutoff=0.75)
        if table not in LOOP_SECTIONS and close and table not in SFT_SECTIONS:
            raise ToolFailure("invalid_loop_config", f"unknown table [{table}] in the loop config (did you mean "
                                                     f"[{close[0]}]?); the loop reads [loop], [eval] and [filter], "
                                                     "every other table is the M-step's SFT config. Fix the table "
                                                     "name and call run_sft_loop again.")
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


def loop_problems(errors: list[dict]) -> str:
    """pydantic's errors for :class:`LoopConfig` as one line (pure): an unknown setting is named with a close
    known one (``difflib``), a missing ``base_model``/``tasks`` says how to pass it, the rest as
    :func:`~learning_mcp.tools.errors.validation_problems` words them."""
    known = sorted(LoopConfig.model_fields)
    parts, rest = [], []
    for error in errors:
        name = ".".join(str(p) for p in error.get("loc") or ())
        if error.get("type") == "extra_forbidden":
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
            parts.append(f"unknown setting {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        elif error.get("type") == "missing" and name in ("base_model", "tasks"):
            parts.append(f"{name} is required (an argument, or in the config's [loop] table)")
        else:
            rest.append(error)
    if rest:
        parts.append(validation_problems(rest))
    return "; ".join(parts)


def loop_config_from(config: str | None, explicit: dict[str, Any]) -> LoopConfig:
    """What ``run_sft_loop`` runs (:func:`loop_config_with_sources` without the sources)."""
    return loop_config_with_sources(config, explicit)[0]


def loop_config_with_sources(config: str | None, explicit: dict[str, Any]) -> tuple[LoopConfig, dict[str, Any]]:
    """``(config, resolved)``: the loop config (path or TOML text, :func:`parse_loop_toml`) overridden by the
    call's explicit arguments (``None`` = not given), and :func:`resolve_config`'s value-and-source table. A
    relative ``tasks`` resolves against the working directory. Raises ``ToolFailure`` ``invalid_loop_config``
    naming each bad field."""
    args: dict[str, Any] = {}
    if config:
        args, _ = parse_loop_toml(config)
    file_args = dict(args)
    args.update({k: v for k, v in explicit.items() if v is not None})
    if isinstance(args.get("tasks"), str) and "\x00" not in args["tasks"] \
            and not Path(args["tasks"]).expanduser().is_absolute():
        args["tasks"] = str(Path(args["tasks"]).expanduser().resolve())
    try:
        cfg = LoopConfig(**args)
    except ValidationError as exc:
        raise ToolFailure("invalid_loop_config", f"invalid loop settings: {loop_problems(exc.errors())}. Fix them "
                                                 "and call run_sft_loop again (resource learning://config/"
                                                 "loop-example lists every setting).") from None
    return cfg, resolve_config(cfg, file_args, explicit)


LOOP_EXAMPLE_TOML = """\
# A ReST-EM loop (run_sft_loop(config=<this file or text>)). Arguments passed to run_sft_loop override it.
[loop]
base_model = "ft:/path/to/model:ftjob-123"  # or a Hub id / local path; also read from [job].model
tasks = "tasks.jsonl"         # relative to this file
verifier = "exact"            # exact | numeric | boxed | answer | math | {type = "regex", pattern = "..."} | "module:fn" | "file.py:fn"
iterations = 3
seed = 0                      # fixes the split, every sampling request and the training seed
sample_from = "latest"        # latest (ReST-EM) | best: which model samples the next iteration
reset_to_base = true          # every M-step fine-tunes the base model (ReST-EM); false = continue from the last
val_fraction = 0.2            # used only when no task has a "split"
# split_seed = 0              # default: seed
# max_train_problems = 1000
# max_val_problems = 200
early_stopping = true         # stop when validation pass@1 has not improved for `patience` iterations
patience = 1
# chat_url = "http://localhost:8000/v1"   # sample from another OpenAI-compatible server (default: the learning API's)
# load_lora_adapters = true   # with chat_url and variety = "lora": load each M-step's adapter there (vLLM runtime LoRA)
# task_app_url = "http://localhost:8001"  # or a Synth task app as the environment (then train_seeds/val_seeds)

[eval]                        # the E-step's sampling
n = 8                         # samples per train problem (paper: 32)
temperature = 0.7
top_k = 40
max_tokens = 64
# stop = ["\\n\\n"]
# n_unsolved = 16             # more samples for problems no earlier iteration solved (default: n)
# chat_template_kwargs = {enable_thinking = false}   # Qwen3-style templates

[filter]
reward_threshold = 1.0
max_per_problem = 4           # keep at most K correct samples per problem (paper: 10)
dedupe = true
keep_truncated = false        # samples cut off at max_tokens are not trained on
# balance_per_problem = true  # repeat each solved problem's samples up to max_per_problem

# The SFT config of every M-step: Synth's schema (see learning://config/example)
[algorithm]
type = "offline"
method = "sft"
variety = "fft"

[job]
model = "ft:/path/to/model:ftjob-123"

# A working config for a SMALL model (the arithmetic demo's tiny model). For a 1B+ model use e.g.
# learning_rate = 1e-5, n_epochs = 3, per_device_batch = 8. Without this table the loop picks defaults by the model's
# hidden_size and says so in run_sft_loop's `warnings` and `config` (source "default (...)").
[hyperparameters]
n_epochs = 2
learning_rate = 2e-3
per_device_batch = 16
warmup_ratio = 0.05
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
            train, val = split_tasks(tasks, val_fraction=cfg.val_fraction, seed=cfg.effective_split_seed)
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
                warning = self._zero_score_warning(store, val, verifier)
                if warning:
                    self.state.warnings.append(warning)
                    log.warning("loop %s: %s", self.state.loop_id, warning)
                    await self._changed(f"base model: validation pass@1 0.000 — WARNING: {warning}")
                else:
                    await self._changed(f"base model: validation pass@1 {summary.pass_at_1:.3f}")
                self._write_chart()
            while True:
                record = self.state.current
                if record is None or record.step == "done":
                    if record is not None and self._should_stop():
                        break
                    if len(self.state.iterations) >= cfg.iterations:
                        self.state.stopped_reason = "completed"
                        break
                    sampler = self._next_sampler(record)
                    record = IterationRecord(iteration=len(self.state.iterations) + 1, sampler_model=sampler,
                                             started_at=time.time())
                    self.state.iterations.append(record)
                    await self._changed(f"iteration {record.iteration}: sampling")
                await self._advance(record, store, train, val, verifier)
        finally:
            store.close()
        await self._unload_adapters({self.state.best_model})  # the best model stays served
        self.state.state = "succeeded"
        best = self.state.best_model
        await self._changed(f"finished ({self.state.stopped_reason}); best model {best} "
                            f"(validation pass@1 {self.state.best_val_pass_at_1})")

    def _next_sampler(self, last: IterationRecord | None) -> str:
        """The model that samples the next iteration: the latest M-step's (ReST-EM), or with
        ``sample_from = "best"`` the best on validation so far (the base model until one beats it)."""
        if self.cfg.sample_from == "best" and self.state.best_model:
            return self.state.best_model
        return last.fine_tuned_model if last and last.fine_tuned_model else self.cfg.base_model

    def _zero_score_warning(self, store: TraceStore, val, verifier) -> str | None:
        """:func:`~learning_mcp.tools.eval_runs.traces_zero_score_warning` on the seed model's validation traces."""
        if verifier is None:  # a task app scores its own rollouts
            return None
        return traces_zero_score_warning(store, run_id=self.state.loop_id, iteration=0, phase="val_eval", tasks=val,
                                         verifier=verifier, threshold=self.cfg.reward_threshold)

    def _write_chart(self) -> None:
        """``<loop_dir>/chart.png`` (:func:`~learning_mcp.tools.charts.loop_chart_png`); skipped without matplotlib."""
        try:
            write_bytes_atomic(self.dir / LOOP_CHART_FILE, loop_chart_png(self.state))
        except ImportError:
            pass
        except Exception as exc:  # a chart must never end a loop
            log.warning("loop %s: chart not written: %s", self.state.loop_id, exc)

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

    async def _eval(self, store, tasks, model: str, *, iteration: int, phase: str, greedy: bool, verifier,
                    n: int | None = None, clean: bool = True):
        cfg = self.cfg
        if clean:
            store.delete(self.state.loop_id, iteration=iteration, phase=phase)  # a resumed eval starts clean
        settings = SamplingSettings(n=1 if greedy else (n or cfg.n), temperature=0.0 if greedy else cfg.temperature,
                                    top_p=cfg.top_p, top_k=None if greedy else cfg.top_k, max_tokens=cfg.max_tokens,
                                    stop=cfg.stop, seed=None if cfg.seed is None else cfg.seed * 1000 + iteration,
                                    chat_template_kwargs=cfg.chat_template_kwargs)
        chat_url = cfg.chat_url or self.client.target.chat_url
        api_key = self._key(chat_url, cfg.chat_api_key_env)
        await self._serve_adapter(model, api_key)
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

    # -- the external server's adapters (load_lora_adapters) -----------------------------------------------
    async def _serve_adapter(self, model: str, api_key: str | None) -> None:
        """With ``load_lora_adapters``: make the loop's fine-tuned ``model`` servable by the ``chat_url`` server
        before it samples: export the job's adapter to ``<loop dir>/adapters/<job_id>`` (``export_model``,
        ``merge_lora=False``: a PEFT folder) once, then ``load_lora_adapter`` under the ``ft:`` id (an answer
        "already loaded" counts as done, so a resumed loop loads again safely). Models the loop did not train
        (the base model) are left to the server."""
        record = next((r for r in self.state.iterations if r.fine_tuned_model == model and r.job_id), None)
        if not self.cfg.load_lora_adapters or not self.cfg.chat_url or record is None:
            return
        folder = self.dir / "adapters" / str(record.job_id)
        if not (folder / "adapter_config.json").is_file():
            await self._changed(f"iteration {record.iteration}: exporting the LoRA adapter of {model} to {folder}")
            folder.parent.mkdir(parents=True, exist_ok=True)
            await export_model(self.client, model, str(folder), merge_lora=False)
        loaded = await lora_serving.load_lora_adapter(self.cfg.chat_url, model, str(folder), api_key=api_key)
        if model not in self.state.served_adapters:
            self.state.served_adapters.append(model)
        if loaded:
            await self._changed(f"loaded {model} into {self.cfg.chat_url}")

    async def _unload_adapters(self, keep: set[str | None]) -> None:
        """Unload every adapter the loop loaded that is not in ``keep`` (the best model, the next sampler)."""
        if not self.cfg.load_lora_adapters or not self.cfg.chat_url:
            return
        api_key = self._key(self.cfg.chat_url, self.cfg.chat_api_key_env)
        for model in [m for m in self.state.served_adapters if m not in keep]:
            await lora_serving.unload_lora_adapter(self.cfg.chat_url, model, api_key=api_key)
            self.state.served_adapters.remove(model)
            await self._changed(f"unloaded {model} from {self.cfg.chat_url}")

    def _key(self, url: str, key_env: str | None, default_env: str | None = None) -> str | None:
        try:
            return endpoint_key(url, self.client.target, key_env, default_env=default_env, environ=self.environ)
        except PermissionError as exc:
            raise ToolFailure("key_not_allowed", str(exc)) from None

    async def _advance(self, record: IterationRecord, store, train, val, verifier) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        if record.step == "sample":
            summary = await self._sample(store, train, record, verifier)
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
                              dedupe=cfg.dedupe, keep_truncated=cfg.keep_truncated)
            report = await anyio.to_thread.run_sync(lambda: filter_traces(spec, store))
            record.filter_counts = dict(report.counts)
            record.truncated_dropped = report.truncated_dropped
            record.kept = report.counts.get("written", 0)
            if record.kept and cfg.balance_per_problem and cfg.max_per_problem:
                record.kept = await anyio.to_thread.run_sync(lambda: balance_kept(out, cfg.max_per_problem))
                record.filter_counts["balanced"] = record.kept
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
                sft_doc = mstep_config(cfg, record.train_from, kept=record.kept)
                record.mstep_steps = (sft_doc.get("hyperparameters") or {}).get("total_steps") \
                    if cfg.mstep_epochs is not None else None
                record.job_attempts += 1
                out = await job_ops.create_job_from_config(
                    self.client, sft_doc, training_file_id=record.file_id, model=record.train_from, start=True,
                    idempotency_key=f"{self.state.loop_id}-iter{record.iteration}-try{record.job_attempts}",
                    environ=self.environ)
                record.job_id = out.job_id
                await self._changed(f"iteration {record.iteration}: training job {out.job_id} from {record.train_from}")
            job = await job_ops.wait_for_job(self.client, record.job_id, timeout_s=cfg.job_timeout_s,
                                             should_stop=lambda: (self.dir / "cancel").exists(),
                                             outage_s=cfg.api_outage_s)
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
            # the previous iteration's adapter is no longer needed unless it is the best or samples next
            await self._unload_adapters({self.state.best_model, self._next_sampler(record)})
        record.seconds += time.monotonic() - t0
        self.save()
        if record.step in ("filter", "done"):  # after sampling and after validation: new points on the chart
            await anyio.to_thread.run_sync(self._write_chart)

    async def _sample(self, store, train, record: IterationRecord, verifier):
        """The E-step: ``n`` samples per train problem, or ``n_unsolved`` for problems no earlier iteration
        solved (one summary over both groups)."""
        cfg = self.cfg
        common = dict(iteration=record.iteration, phase="train_eval", greedy=False, verifier=verifier)
        if not cfg.n_unsolved or cfg.n_unsolved == cfg.n or cfg.task_app_url or record.iteration == 1:
            return await self._eval(store, train, record.sampler_model, n=cfg.n_unsolved if record.iteration == 1
                                    and cfg.n_unsolved and not cfg.task_app_url else None, **common)
        solved_before = {row.problem_id for row in store.query(run_id=self.state.loop_id, phases="train_eval",
                                                               iterations=list(range(1, record.iteration)))
                         if row.reward is not None and row.reward >= cfg.reward_threshold}
        groups = [([t for t in train if t.id in solved_before], cfg.n),
                  ([t for t in train if t.id not in solved_before], cfg.n_unsolved)]
        store.delete(self.state.loop_id, iteration=record.iteration, phase="train_eval")
        parts = [await self._eval(store, tasks, record.sampler_model, n=n, clean=False, **common)
                 for tasks, n in groups if tasks]
        return merge_summaries(parts)


def preflight(cfg: LoopConfig, target, environ: Mapping[str, str] | None = None) -> list[str]:
    """Everything that can be checked before any sampling is spent: tasks, verifier, SFT config, endpoint keys.
    Raises ToolFailure with what to fix, so run_sft_loop refuses a loop that could only fail later. Returns the
    warnings the loop should carry: SFT-config keys that reach no M-step (typos, with a "did you mean", as
    create_job reports them)."""
    if cfg.tasks:
        path = Path(cfg.tasks)
        if not config_is_file(path):
            what = "is a directory" if path_exists(path) and path.is_dir() else "not found"
            raise ToolFailure("tasks_not_found", f"task file {what}: {path} (a JSONL with one problem per line: "
                                                 '{"id", "prompt" or "messages", "answer", "split"?})')
        try:
            tasks = load_tasks(path)
        except TaskFileError as exc:  # every problem with its line number, as the eval tool lists them
            raise ToolFailure("invalid_tasks", f"{exc.message}\nEach task line needs id, prompt (or messages) and "
                                               "answer; see resource learning://config/loop-example.",
                              data={"problems": [{"line": line, "code": code, "message": msg}
                                                 for line, code, msg in exc.problems[:50]]}) from None
        train, _ = split_tasks(tasks, val_fraction=cfg.val_fraction, seed=cfg.effective_split_seed)
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
    sft = mstep_config(cfg, cfg.base_model)
    try:
        plan = build_sft_plan(sft, training_file_id="file-preflight", model=cfg.base_model,
                              target="synth" if target.is_synth else "local", require_dataset_path=False,
                              environ=environ)
    except ConfigError as exc:
        raise ToolFailure(f"config_{exc.code}", f"the loop's SFT config is invalid: {exc.message}") from None
    if cfg.load_lora_adapters:
        preflight_adapter_loading(cfg, target, lora=lora_selected(plan.payload))
    return [f"M-step SFT config: {w}" for w in plan.warnings
            if any(w.startswith(f"{key}:") for key in plan.ignored_keys)]


def preflight_adapter_loading(cfg: LoopConfig, target, *, lora: bool) -> None:
    """Refuse ``load_lora_adapters`` where it cannot work (``ToolFailure`` with the fix): without ``chat_url``
    (the learning API serves its own models), on Synth's hosted API (no export route gives the adapter folder),
    with a full fine-tune M-step (vLLM's runtime API loads LoRA adapters only) or with ``reset_to_base = false``
    (a later adapter would apply to the previous fine-tune, not to the model the server serves)."""
    if not cfg.chat_url:
        raise ToolFailure("load_lora_adapters_needs_chat_url", "load_lora_adapters tells an external server "
                          "(chat_url) which model to load; without chat_url the learning API samples its own models. "
                          "Set chat_url (e.g. http://127.0.0.1:8001/v1) or drop load_lora_adapters.",
                          param="load_lora_adapters")
    if target.is_synth:
        raise ToolFailure("load_lora_adapters_unsupported", "load_lora_adapters needs the embedded backend (it "
                          "exports each adapter to a folder on this machine); Synth's hosted API has no export route.",
                          param="load_lora_adapters")
    if not lora:
        raise ToolFailure("load_lora_adapters_needs_lora", "the M-step is a full fine-tune, which vLLM cannot load "
                          "at run time (its runtime API loads LoRA adapters only). Use variety = \"lora\" in the SFT "
                          "config's [algorithm] (or hyperparameters train_kind = \"peft\"), or serve each fine-tuned "
                          "model yourself (vllm serve <data dir>/models/<job_id>) and drop load_lora_adapters.",
                          param="load_lora_adapters")
    if not cfg.reset_to_base:
        raise ToolFailure("load_lora_adapters_needs_reset_to_base", "with reset_to_base = false each M-step trains "
                          "an adapter on the previous fine-tune, which a server holding the base model cannot apply. "
                          "Set reset_to_base = true or drop load_lora_adapters.", param="load_lora_adapters")


async def preflight_model(cfg: LoopConfig, target, environ: Mapping[str, str] | None = None,
                          *, timeout_s: float = 40.0) -> None:
    """Check that the chat endpoint the loop samples from can serve ``cfg.base_model``, before the loop starts.

    The embedded backend checks a model the same way for ``create_job`` (``backend/modelref.check_loadable``) and
    for inference; one greedy 1-token chat completion (:func:`~learning_mcp.tools.sampling.probe_model`) asks
    exactly the server the loop will use. Only an answer that rejects the MODEL refuses the loop with
    ``model_not_loadable`` and the server's full reason; an unreachable or slow endpoint is left to the loop,
    whose status reports it. Raises ``ToolFailure``."""

    try:
        url = normalize_chat_url(cfg.chat_url or target.chat_url)
        key = endpoint_key(cfg.chat_url or target.chat_url, target, cfg.chat_api_key_env, environ=environ)
    except (ChatEndpointError, PermissionError):
        return  # reported by preflight / the loop with their own codes
    reason = await probe_model(url, cfg.base_model, api_key=key, timeout_s=timeout_s)
    if reason is None:
        return
    raise ToolFailure("model_not_loadable",
                      f"base_model {cfg.base_model!r} cannot be served for sampling {reason} Pass a base model id, a "
                      "local model directory or an ft: id (list_jobs shows each succeeded job's fine_tuned_model), "
                      "then call run_sft_loop again.",
                      param="base_model")


def merge_summaries(parts: list[Any]) -> Any:
    """One :class:`~learning_mcp.tools.sampling.EvalSummary` for evals over disjoint problem sets (pure):
    counts add up, per-problem rates are weighted by problems."""

    if len(parts) == 1:
        return parts[0]
    problems = sum(p.problems for p in parts)
    samples = sum(p.samples for p in parts)

    def weighted(name: str, by: str = "problems") -> float:
        total = sum(getattr(p, by) for p in parts)
        return sum(getattr(p, name) * getattr(p, by) for p in parts) / total if total else 0.0

    return EvalSummary(problems=problems, samples=samples, correct=sum(p.correct for p in parts),
                       solved_any=sum(p.solved_any for p in parts), pass_at_1=weighted("pass_at_1"),
                       pass_at_n=weighted("pass_at_n"), mean_reward=weighted("mean_reward", "samples"),
                       errors=sum(p.errors for p in parts), seconds=sum(p.seconds for p in parts))


def balance_kept(path: Path, per_problem: int) -> int:
    """Rewrite the kept SFT file so every problem has exactly ``per_problem`` examples: a problem's kept samples
    are repeated in turn (a problem with one correct sample weighs as much as one with many). Returns the number
    of examples written. Problems are read from ``metadata.task_id`` (the filter's output shape)."""


    groups: dict[str, list[str]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            task = (json.loads(line).get("metadata") or {}).get("task_id")
            groups.setdefault(str(task), []).append(line)
    lines = [rows[i % len(rows)] for rows in groups.values() for i in range(per_problem)]
    write_text_atomic(Path(path), "\n".join(lines) + "\n")
    return len(lines)


def mstep_config(cfg: LoopConfig, model: str, *, kept: int | None = None) -> dict[str, Any]:
    """The M-step's SFT config: :func:`sft_config_doc` with ``hyperparameters`` merged in, the loop ``seed`` as
    the training seed (unless set), and with ``mstep_epochs`` a ``total_steps`` of
    ``ceil(mstep_epochs * kept / per_device_batch)`` (``kept`` unknown in preflight: 1 step)."""

    doc = apply_hyperparameter_overrides(sft_config_doc(cfg.sft_config, model), cfg.hyperparameters)
    hp = doc.setdefault("hyperparameters", {})
    if cfg.seed is not None:
        hp.setdefault("seed", cfg.seed)
    if cfg.mstep_epochs is not None:
        batch = int(hp.get("per_device_batch") or hp.get("batch_size") or 1)
        hp["total_steps"] = max(1, math.ceil(cfg.mstep_epochs * (kept or 1) / batch))
    return doc


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
