"""Real supervised fine-tuning for the embedded backend: TRL ``SFTTrainer`` + PEFT on CPU or one GPU.

The worker process calls :func:`run_training` with a :class:`TrainRequest` built from a job's payload
(learning-api.md §3.3) and a :class:`Reporter` that writes events and metric points to the job store.
The layout follows TRL's example trainer scripts: config mapping in small pure functions
(:mod:`.trainer_config`: :func:`select_strategy`, :func:`build_sft_config`, :func:`build_lora_config`), data
preparation (here, over :mod:`.chat_template`: :func:`load_jsonl_records`, :func:`tokenize_example`), the Trainer
callback (:mod:`.callbacks`), then one function that wires them together (:func:`run_training`). Every name of the
split-out modules is re-exported here.

Data and loss masking
    Rows are conversational (``messages``, optional ``tools``; ``metadata`` is dropped). We tokenise
    them ourselves (:mod:`.chat_template`) through the model's own chat template and build ``labels``:
    the assistant turns' tokens, end-of-turn token included, found from the template's
    ``{% generation %}`` markers when it has them and by rendering prefixes of the conversation and
    diffing otherwise, for any template family; tool-call ``arguments`` strings are decoded to objects
    before rendering (Synth's loader does the same). ``weight: 0`` assistant turns get label -100 (TRL
    has no per-message weight, training-notes §7.2); ``hyperparameters.assistant_only_loss = false``
    trains the whole sequence (warned). Doing it here keeps the records out of Arrow, whose schema
    unification would inject ``None`` keys into heterogeneous messages/tool calls. Examples left with no
    trainable token (every assistant turn weight 0, or truncation at ``max_length`` cut them all) are
    skipped and counted. TRL then receives ``{input_ids, labels}`` rows; it leaves a provided ``labels``
    column as is, so ``SFTConfig.assistant_only_loss`` stays False (it would require a raw ``messages``
    column) while the loss is still on assistant tokens only.

Runtime
    GPU (bf16 when supported, fp16 when ``parallelism.fp16``) when CUDA is available, otherwise CPU in
    fp32 without gradient checkpointing. ``report_to`` as the TOML chooses (default ``"none"``, see
    tracking.py), ``save_strategy="no"``: nothing but the final model reaches the model folder. The
    model is trained in a hidden sibling of ``output_dir`` and moved into place at the end, manifest
    last, so a model directory is visible only once complete.
    Cancellation is polled at every (micro-)step and evaluation batch.

torch / transformers / trl / peft / datasets are imported inside functions only.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from learning_mcp.tools.sft_contract import SFTHyperparameters

from .chat_template import (
    METHOD_FALLBACK,
    METHOD_MARKERS,
    METHOD_PREFIX_DIFF,
    TemplateDropsContentError,
    TokenizedExample,
    ToolArgumentsError,
    assistant_spans,  # noqa: F401  (re-exported: tests and inference import it from here)
    decode_tool_arguments,
    flatten_multimodal,  # noqa: F401  (re-exported: inference imports it from here)
    has_generation_markers,
    tokenize_conversation,
)
from .errors import TRAINING_FILE_PARAM, VALIDATION_FILE_PARAM, TrainingCancelled, TrainingError  # noqa: F401
from .distributed import examples_per_rank, model_for_saving, scale_for_world, world_size
from .memory import cast_for_saving, save_dtype
from .modelref import (
    ModelRefError,
    ResolvedModel,
    check_loadable,
    cpu_threads_for,
    load_model_weights,
    load_tokenizer,
    pick_device_and_dtype,
    base_provenance,
    progress_bars_disabled,
    resolve_model,
    write_manifest,
)
from .lora import TargetModulesError, check_target_modules, inventory_of
from .callbacks import _CancelRequested, _make_callback
from .trainer_config import (  # noqa: F401  (the config mapping; re-exported: tests and preview import it from here)
    DEFAULT_LR_FULL,
    DEFAULT_CHECKPOINTS_KEPT,
    DEFAULT_LR_LORA,
    DEFAULT_MAX_PER_DEVICE_BATCH,
    DEFAULT_LORA,
    MAX_LOGGED_POINTS,
    _hyperparameters,
    _truthy,
    report_to_setting,
    select_strategy,
    estimate_total_steps,
    build_sft_config,
    build_lora_config,
)
from .vision import VisionJob

logger = logging.getLogger(__name__)



# --------------------------------------------------------------------------------------------------
# public types
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainRequest:
    job_id: str
    model: str  # as in the payload: base id, local path, or ft: id
    train_path: Path  # validated JSONL ({"messages": [...], "tools"?: [...], "metadata"?: {...}})
    validation_path: Path | None
    hyperparameters: dict  # payload["hyperparameters"]
    effective_config: dict  # payload["metadata"]["effective_config"] (may be {})
    output_dir: Path  # the final model directory (models_dir/<job_id>)
    models_dir: Path  # for resolving ft: base models
    fine_tuned_model_id: str  # the id written into the manifest
    seed: int = 0
    # where checkpoints go when hyperparameters.save_steps > 0 (stable across worker restarts, so a re-run of the
    # same job resumes from the last one); None: no checkpoints
    checkpoint_dir: Path | None = None


class Reporter(Protocol):
    def event(self, type: str, message: str, data: dict | None = None, level: str = "info") -> None: ...

    def metric(self, name: str, value: float, step: int, epoch: float | None = None, phase: str = "train",
               data: dict | None = None) -> None: ...

    def should_stop(self) -> bool: ...


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    train_loss: float | None  # the last logged training loss
    val_loss: float | None  # the last (or, with save_best_model_at_end, the best) validation loss
    train_tokens: int  # non-padding input tokens fed to the model during training
    skipped_examples: int
    seconds: float
    kind: str  # "full" | "lora"
    train_loss_mean: float | None = None  # mean over the whole run (HF's `training_loss`)
    examples: int = 0
    trainable_tokens: int = 0  # supervised (label) tokens in one pass over the training set
    tokens_per_second: float | None = None


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def load_jsonl_records(path: Path, *, param: str = TRAINING_FILE_PARAM) -> list[dict[str, Any]]:
    """``[{"messages": [...], "tools": [...] | None, "line": N}]`` from a JSONL file; ``metadata`` is dropped.

    Tool-call ``arguments`` given as JSON strings must decode (they are decoded before rendering,
    :mod:`.chat_template`); a string that is not JSON is an ``invalid_dataset`` error naming the line.
    """
    records: list[dict[str, Any]] = []
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise TrainingError("invalid_dataset", f"cannot read dataset file {path}: {exc}", param) from exc
    with handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise TrainingError("invalid_dataset", f"line {line_number}: invalid JSON ({exc})", param) from None
            if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
                raise TrainingError("invalid_dataset", f"line {line_number}: expected an object with a non-empty "
                                    "messages[] list", param)
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in row["messages"]):
                raise TrainingError("invalid_dataset", f"line {line_number}: every message needs a string role",
                                    param)
            try:
                decode_tool_arguments(row["messages"])
            except ToolArgumentsError as exc:
                raise TrainingError("invalid_dataset", f"line {line_number}: {exc}", param) from None
            tools = row.get("tools")
            if isinstance(tools, str):
                try:
                    tools = json.loads(tools)
                except ValueError:
                    raise TrainingError("invalid_dataset", f"line {line_number}: tools is a string but not JSON",
                                        param) from None
            if tools is not None and not isinstance(tools, list):
                raise TrainingError("invalid_dataset", f"line {line_number}: tools must be a list", param)
            records.append({"messages": row["messages"], "tools": tools or None, "line": line_number})
    if not records:
        raise TrainingError("invalid_dataset", f"dataset file {Path(path).name} contains no examples", param)
    return records


def assistant_only_loss_enabled(hparams: dict | SFTHyperparameters) -> bool:
    """``hyperparameters.assistant_only_loss`` (default true; TRL's ``SFTConfig`` field name). False
    trains the whole sequence, system/user/tool text included."""
    value = _hyperparameters(hparams).assistant_only_loss  # the contract's rule (tools/sft_contract.py)
    return True if value is None else value


def tokenize_example(tokenizer, messages: list[dict[str, Any]], tools: list | None = None, *,
                     chat_template: str | None = None, max_length: int | None = None,
                     assistant_only_loss: bool = True) -> TokenizedExample:
    """Token ids and labels for one conversation (:func:`.chat_template.tokenize_conversation`):
    assistant turns only (``weight: 0`` turns masked), end-of-turn token included, for any template.

    ``chat_template`` overrides the tokenizer's. Truncation keeps the start (TRL's ``keep_start``).
    ``.extra`` holds further sequences for templates that re-render earlier turns (Qwen3).
    """
    return tokenize_conversation(tokenizer, messages, tools, chat_template=chat_template, max_length=max_length,
                                 assistant_only_loss=assistant_only_loss)


@dataclass
class PreparedData:
    """Training sequences (``examples``) from a file's records; counts for events and previews.

    ``skipped``/``skipped_lines``: records with no trainable token left; ``methods``: records per span
    method (:mod:`.chat_template`); ``fallback_lines``: records trained on the whole sequence because
    their assistant spans could not be found; ``extra_sequences``: per-turn sequences added.
    """

    examples: list[TokenizedExample]
    skipped: int
    skipped_lines: list[int] = field(default_factory=list)
    methods: dict[str, int] = field(default_factory=dict)
    fallback_lines: list[int] = field(default_factory=list)
    extra_sequences: int = 0
    truncated: int = 0

    @property
    def trainable_tokens(self) -> int:
        return sum(example.trainable_tokens for example in self.examples)

    @property
    def total_tokens(self) -> int:
        return sum(len(example.input_ids) for example in self.examples)

    def to_dataset(self):
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": [e.input_ids for e in self.examples],
                                  "labels": [e.labels for e in self.examples]})


def tokenize_record(record: dict[str, Any], tokenizer, *, chat_template: str | None, max_length: int | None,
                    assistant_only_loss: bool = True, param: str = TRAINING_FILE_PARAM) -> TokenizedExample:
    """:func:`tokenize_example` for one loaded record; rendering problems become ``invalid_dataset``
    errors naming the record's line."""
    try:
        return tokenize_example(tokenizer, record["messages"], record.get("tools"), chat_template=chat_template,
                                max_length=max_length, assistant_only_loss=assistant_only_loss)
    except (ToolArgumentsError, TemplateDropsContentError) as exc:
        raise TrainingError("invalid_dataset", f"line {record.get('line')}: {exc}", param) from exc
    except Exception as exc:
        raise TrainingError("invalid_dataset", f"line {record.get('line')}: the chat template could not render "
                            f"this example ({type(exc).__name__}: {str(exc)[:300]})", param) from exc


def prepare_examples(records: list[dict[str, Any]], tokenizer, *, chat_template: str | None, max_length: int,
                     param: str = TRAINING_FILE_PARAM, assistant_only_loss: bool = True) -> PreparedData:
    data = PreparedData(examples=[], skipped=0)
    for record in records:
        example = tokenize_record(record, tokenizer, chat_template=chat_template, max_length=max_length,
                                  assistant_only_loss=assistant_only_loss, param=param)
        data.methods[example.method] = data.methods.get(example.method, 0) + 1
        if example.method == METHOD_FALLBACK:
            data.fallback_lines.append(record.get("line", -1))
        sequences = [s for s in example.sequences() if s.trainable_tokens]
        data.truncated += sum(1 for s in example.sequences() if s.truncated)
        if not sequences:
            data.skipped_lines.append(record.get("line", -1))
            continue
        data.examples += sequences
        data.extra_sequences += len(sequences) - 1
    data.skipped = len(data.skipped_lines)
    return data


def data_loss_notes(data: PreparedData, assistant_only_loss: bool) -> list[str]:
    """Warnings about what the loss covers: full-sequence loss chosen, fallback examples, per-turn sequences."""
    notes = []
    if not assistant_only_loss:
        notes.append("assistant_only_loss is false: the loss covers every token (system, user and tool text "
                     "included), not only the assistant replies")
    if data.fallback_lines:
        lines = ", ".join(map(str, data.fallback_lines[:10])) + (", …" if len(data.fallback_lines) > 10 else "")
        notes.append(f"the assistant replies of {len(data.fallback_lines)} example(s) could not be located in the chat "
                     f"template's rendering, so those examples are trained on the whole sequence (lines {lines}); "
                     "call preview_dataset to see the rendering")
    if data.extra_sequences:
        notes.append(f"the chat template renders earlier assistant turns differently once later turns follow, so "
                     f"{data.extra_sequences} such turn(s) are trained in their own sequence (the conversation up to "
                     "that turn)")
    return notes


def check_chat_template(tokenizer) -> str:
    """How assistant spans are found for this tokenizer: ``"markers"`` when its chat template has
    ``{% generation %}`` blocks, else ``"prefix-diff"`` (:mod:`.chat_template`); works for any
    template. Raises ``model_not_supported`` only when the tokenizer has no chat template at all."""
    template = tokenizer.chat_template
    if not template:
        raise TrainingError("model_not_supported", "the model's tokenizer has no chat template, so conversational "
                            "data cannot be rendered; use an instruct/chat model (one whose tokenizer_config.json "
                            "has a chat_template)", "model")
    return METHOD_MARKERS if has_generation_markers(template) else METHOD_PREFIX_DIFF


# --------------------------------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------------------------------


def _qlora_unavailable_reason(device: str, resolved: ResolvedModel) -> str | None:
    if not device.startswith("cuda"):
        return "no CUDA GPU is available"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:
        return f"bitsandbytes is not importable ({type(exc).__name__})"
    if resolved.kind == "lora":
        return "the base model is itself a LoRA adapter, whose merged weights cannot be loaded in 4 bit"
    return None


def _move_into_place(staging: Path, output_dir: Path) -> None:
    """Rename ``staging`` to ``output_dir``; into an existing non-empty directory, move entries one by one
    with the manifest last so its presence marks a complete model."""
    from .modelref import MANIFEST_NAME

    if output_dir.exists() and output_dir.is_dir() and not any(output_dir.iterdir()):
        output_dir.rmdir()
    if not output_dir.exists():
        os.replace(staging, output_dir)
        return
    entries = sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST_NAME)
    for entry in entries:
        target = output_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


def apply_checkpointing(sft_kwargs: dict[str, Any], hparams: dict, checkpoint_dir: Path | None) -> None:
    """With ``hyperparameters.save_steps`` > 0 and a ``checkpoint_dir``: HF Trainer saves a checkpoint every
    ``save_steps`` optimizer steps into ``checkpoint_dir`` (``checkpoint-<step>/``, model + optimizer + scheduler +
    RNG state) and keeps the newest ``save_total_limit`` (default 2). Otherwise nothing is saved until the end."""
    save_steps = hparams.get("save_steps")
    if not checkpoint_dir or not isinstance(save_steps, int) or isinstance(save_steps, bool) or save_steps <= 0:
        return
    keep = hparams.get("save_total_limit")
    sft_kwargs.update(output_dir=str(checkpoint_dir), save_strategy="steps", save_steps=save_steps,
                      save_total_limit=keep if isinstance(keep, int) and keep >= 1 else DEFAULT_CHECKPOINTS_KEPT)


def last_checkpoint(checkpoint_dir: Path | None) -> tuple[Path, int] | None:
    """The newest complete ``checkpoint-<step>`` folder under ``checkpoint_dir`` and its step, or None."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(checkpoint_dir))
    if not found or not (Path(found) / "trainer_state.json").is_file():
        return None
    return Path(found), int(Path(found).name.rsplit("-", 1)[1])


def _max_position_embeddings(resolved: ResolvedModel, models_dir: Path) -> int | None:
    """The context size from the model's config.json (following LoRA adapters to their base)."""
    try:
        from transformers import AutoConfig

        for _ in range(8):
            if resolved.kind != "lora":
                break
            resolved = resolve_model(resolved.base_model or "", models_dir)
        config = AutoConfig.from_pretrained(resolved.path, local_files_only=os.path.isdir(resolved.path))
        return getattr(config.get_text_config(), "max_position_embeddings", None)
    except Exception as exc:  # unknown: no clamp
        logger.debug("could not read max_position_embeddings of %s: %s", resolved.id, exc)
        return None


def adapt_to_installed_sft_config(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Rename/drop ``build_sft_config`` keys the installed transformers/TRL does not know
    (``activation_checkpointing`` and ratio-valued ``warmup_steps`` are transformers-5 spellings)."""
    import dataclasses

    from trl import SFTConfig

    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    adapted = dict(kwargs)
    if "activation_checkpointing" not in fields and "activation_checkpointing" in adapted:
        adapted["gradient_checkpointing"] = adapted.pop("activation_checkpointing")
    warmup = adapted.get("warmup_steps")
    if "warmup_ratio" in fields and isinstance(warmup, float) and 0 < warmup < 1:
        adapted["warmup_ratio"], adapted["warmup_steps"] = warmup, 0
    for key in [k for k in adapted if k not in fields]:
        logger.debug("SFTConfig has no %r; dropped", key)
        adapted.pop(key)
    return adapted


def _json_safe(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v) for k, v in config.items()}


def run_training(req: TrainRequest, reporter: Reporter) -> TrainResult:
    """Fine-tune ``req.model`` on ``req.train_path``; write the model to ``req.output_dir``.

    Raises :class:`TrainingError` (job failure with code/message/param) or :class:`TrainingCancelled`.
    """
    started = time.perf_counter()
    hparams = dict(req.hyperparameters or {})
    effective_config = dict(req.effective_config or {})
    if reporter.should_stop():
        raise TrainingCancelled()

    # -- model id → files ---------------------------------------------------------------------------
    try:
        check_loadable(req.model, req.models_dir)
        resolved = resolve_model(req.model, req.models_dir)
    except ModelRefError as exc:
        raise TrainingError("model_not_loadable", exc.message, "model") from exc

    kind, qlora_requested = select_strategy(hparams, effective_config)
    parallelism = hparams.get("parallelism") if isinstance(hparams.get("parallelism"), dict) else {}
    prefer_bf16 = None if parallelism.get("bf16") is None else _truthy(parallelism.get("bf16"))
    device, weights_dtype = pick_device_and_dtype(False if _truthy(parallelism.get("fp16")) else prefer_bf16)
    bf16_supported = str(weights_dtype) == "torch.bfloat16"

    strategy = kind
    strategy_reason = "train_kind/mode selects LoRA" if kind == "lora" else "full fine-tuning (train_kind fft)"
    strategy_level = "info"
    if qlora_requested:
        unavailable = _qlora_unavailable_reason(device, resolved)
        if unavailable:
            strategy_reason = f"QLoRA was requested (use_qlora=true) but runs as LoRA because {unavailable}"
            strategy_level = "warning"
        else:
            strategy, strategy_reason = "qlora", "QLoRA: 4-bit NF4 base (bitsandbytes) + LoRA adapters"

    # -- tokenizer and data -------------------------------------------------------------------------
    # images → the vision-language path (backend/vision.py): the processor instead of the tokenizer, TRL's
    # vision collator; refused with images_unsupported on a text-only model
    vl = VisionJob.detect(req.model, resolved, req.models_dir, req.train_path, req.validation_path)
    try:
        tokenizer = vl.processor if vl else load_tokenizer(resolved)
    except Exception as exc:
        raise TrainingError("model_not_loadable", f"cannot load the tokenizer of {req.model!r}: {exc}", "model") from exc
    span_method = "vision-processor" if vl else check_chat_template(tokenizer)
    assistant_only = assistant_only_loss_enabled(hparams)
    chat_template = None
    if vl:
        prepare = vl.prepare_examples
    else:
        def prepare(records, tok, **kwargs):
            return prepare_examples(records, tok, assistant_only_loss=assistant_only, **kwargs)

    train_records = load_jsonl_records(req.train_path, param=TRAINING_FILE_PARAM)
    validation_enabled = ((effective_config.get("training") or {}).get("validation") or {}).get("enabled", True)
    val_records = None
    if req.validation_path is not None and validation_enabled is not False:
        val_records = load_jsonl_records(req.validation_path, param=VALIDATION_FILE_PARAM)

    model_max_length = _max_position_embeddings(resolved, req.models_dir)
    provisional = build_sft_config(hparams, len(train_records), device, kind=kind, has_eval=val_records is not None,
                                   seed=req.seed, model_max_length=model_max_length, bf16_supported=bf16_supported)
    max_length = provisional["max_length"]
    train_data = prepare(train_records, tokenizer, chat_template=chat_template, max_length=max_length)
    val_data = None
    notes: list[str] = []
    if val_records is not None:
        val_data = prepare(val_records, tokenizer, chat_template=chat_template, max_length=max_length,
                           param=VALIDATION_FILE_PARAM)
        if not val_data.examples:
            notes.append("the validation file has no trainable assistant tokens, so validation is skipped")
            val_data = None
    if not train_data.examples:
        raise TrainingError(
            "no_trainable_examples",
            f"none of the {len(train_records)} training examples has an assistant token to train on (every assistant "
            f"message has weight 0, or sequence_length {max_length} truncates them away); add assistant turns with "
            "weight 1 or raise sequence_length", TRAINING_FILE_PARAM)
    if train_data.skipped:
        notes.insert(0, f"skipped {train_data.skipped} training example(s) with no trainable assistant tokens "
                        f"(lines {', '.join(map(str, train_data.skipped_lines[:10]))}"
                        f"{', …' if train_data.skipped > 10 else ''})")
    notes += [] if vl else data_loss_notes(train_data, assistant_only)  # VL data: the processor path has its own notes

    staging = req.output_dir.parent / f".{req.output_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    sft_kwargs = build_sft_config(hparams, len(train_data.examples), device, kind=kind,
                                  has_eval=val_data is not None, output_dir=staging / "trainer", seed=req.seed,
                                  model_max_length=model_max_length, bf16_supported=bf16_supported)
    sft_kwargs = scale_for_world(sft_kwargs, hparams, world_size())  # several processes: same global batch
    apply_checkpointing(sft_kwargs, hparams, req.checkpoint_dir)
    if vl:  # batch clamped to 1 as Synth does, TRL's assistant-only loss; the notes go into the event below
        notes += vl.adjust_sft_kwargs(sft_kwargs)
    keep_best = val_data is not None and _truthy(hparams.get("save_best_model_at_end"))
    reporter.event("sft.config.prepared", "; ".join([f"prepared {len(train_data.examples)} training examples"] + notes), {
        "model": req.model, "model_kind": resolved.kind, "examples": len(train_data.examples),
        "skipped": train_data.skipped, "skipped_lines": train_data.skipped_lines[:50],
        "validation_examples": len(val_data.examples) if val_data else 0,
        "max_length": max_length, "trainable_tokens": train_data.trainable_tokens,
        "total_tokens": train_data.total_tokens, "assistant_only_loss": assistant_only,
        "chat_template": "model", "span_method": span_method,
        "span_methods": getattr(train_data, "methods", None),
        "fallback_lines": (getattr(train_data, "fallback_lines", None) or [])[:50],
        "extra_sequences": getattr(train_data, "extra_sequences", None),
        "truncated_sequences": getattr(train_data, "truncated", None),
        "vision_language": vl is not None,
    }, level="warning" if notes else "info")
    dtype_name = str(weights_dtype).replace("torch.", "")
    if strategy == "qlora":
        dtype_name = "nf4"
    reporter.event("sft.strategy.selected", strategy_reason,
                   {"strategy": strategy, "device": device, "dtype": dtype_name,
                    "requested": "qlora" if qlora_requested else kind}, level=strategy_level)
    reporter.event("sft.training.args", "SFTConfig prepared", _json_safe(sft_kwargs))
    if reporter.should_stop():
        raise TrainingCancelled()

    # -- model, trainer, training -------------------------------------------------------------------
    from transformers import set_seed

    set_seed(req.seed)
    with warnings.catch_warnings(), progress_bars_disabled():
        # peft 0.21 reads `model.is_gradient_checkpointing`, deprecated in transformers 5: noise, not news
        warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6", category=FutureWarning)
        return _train_and_save(req, reporter, started=started, resolved=resolved, strategy=strategy, kind=kind,
                               tokenizer=tokenizer, train_data=train_data, val_data=val_data, sft_kwargs=sft_kwargs,
                               staging=staging, keep_best=keep_best, weights_dtype=weights_dtype,
                               bf16_supported=bf16_supported, device=device, vl=vl)


def _train_and_save(req: TrainRequest, reporter: Reporter, *, started: float, resolved: ResolvedModel, strategy: str,
                    kind: str, tokenizer, train_data: PreparedData, val_data: PreparedData | None,
                    sft_kwargs: dict[str, Any], staging: Path, keep_best: bool, weights_dtype: Any,
                    bf16_supported: bool, device: str, vl: VisionJob | None = None) -> TrainResult:
    import torch
    from transformers import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    hparams = dict(req.hyperparameters or {})
    trainer = model = None
    try:
        saved_dtype = save_dtype(resolved, req.models_dir, hparams)
    except ValueError as exc:
        raise TrainingError("invalid_hyperparameters", str(exc), "hyperparameters.save_dtype") from None
    try:
        try:
            if strategy == "qlora":
                from peft import prepare_model_for_kbit_training
                from transformers import AutoModelForCausalLM, BitsAndBytesConfig

                quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                  bnb_4bit_use_double_quant=True,
                                                  bnb_4bit_compute_dtype=torch.bfloat16 if bf16_supported else torch.float16)
                model = AutoModelForCausalLM.from_pretrained(resolved.path, quantization_config=quantization,
                                                             dtype=weights_dtype, device_map={"": 0})
                model = prepare_model_for_kbit_training(
                    model, use_gradient_checkpointing=bool(sft_kwargs["activation_checkpointing"]))
            else:
                load_dtype = torch.float32 if sft_kwargs["fp16"] else weights_dtype
                model = load_model_weights(resolved, req.models_dir, load_dtype)
        except (TrainingError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as exc:
            raise TrainingError("model_not_loadable", f"cannot load the weights of {req.model!r}: "
                                f"{type(exc).__name__}: {exc}", "model") from exc

        callback = _make_callback(reporter, keep_best=keep_best)
        peft_config = build_lora_config(hparams) if kind == "lora" else None
        if peft_config is not None:  # every target_modules entry must match a module (backend/lora.py)
            try:
                check_target_modules(hparams.get("lora_target_modules"), inventory_of(model), model=req.model)
            except TargetModulesError as exc:
                raise TrainingError(exc.code, exc.message, exc.param) from None
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**adapt_to_installed_sft_config(sft_kwargs)),
            train_dataset=train_data.to_dataset(),
            eval_dataset=val_data.to_dataset() if val_data else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[callback],
        )
        for noisy in (PrinterCallback, ProgressCallback):  # they print() to stdout
            trainer.remove_callback(noisy)
        if vl:  # weight-0 assistant turns masked on top of TRL's vision collator
            vl.wrap_collator(trainer)
        total_steps = estimate_total_steps(examples_per_rank(len(train_data.examples)),
                                           sft_kwargs["per_device_train_batch_size"],
                                           sft_kwargs["gradient_accumulation_steps"], sft_kwargs["num_train_epochs"],
                                           sft_kwargs["max_steps"] if sft_kwargs["max_steps"] > 0 else None)
        reporter.event("sft.training.started", f"training {strategy} for {total_steps} steps on {device}", {
            "total_steps": total_steps, "examples": len(train_data.examples), "skipped": train_data.skipped,
            "strategy": strategy, "device": device})

        resume = last_checkpoint(req.checkpoint_dir) if sft_kwargs.get("save_strategy") == "steps" else None
        if resume is not None:
            reporter.event("sft.resumed", f"resuming from the checkpoint at step {resume[1]}",
                           {"step": resume[1], "checkpoint": str(resume[0])})
        train_started, train_cpu_started = time.perf_counter(), time.process_time()
        try:
            with cpu_threads_for(model, device):
                output = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
                if val_data is not None and callback.last_eval_step != trainer.state.global_step:
                    trainer.evaluate()
        except _CancelRequested:
            raise TrainingCancelled(int(trainer.state.global_step)) from None
        train_seconds = time.perf_counter() - train_started
        train_cpu_seconds = time.process_time() - train_cpu_started  # this process's CPU time: robust to a busy machine
        restored = keep_best and callback.restore_best(trainer.model)

        steps = int(trainer.state.global_step)
        train_tokens = int(trainer.state.num_input_tokens_seen or 0)
        val_loss = callback.best_val_loss if restored else callback.last_val_loss
        if reporter.should_stop():
            raise TrainingCancelled(steps)

        # -- save ----------------------------------------------------------------------------------
        save_model = model_for_saving(trainer)  # None on ranks other than 0 of a multi-process job
        if save_model is None:
            return TrainResult(output_dir=req.output_dir, steps=steps, train_loss=callback.last_loss, val_loss=val_loss,
                               train_tokens=train_tokens, skipped_examples=train_data.skipped,
                               seconds=time.perf_counter() - started, kind=kind)
        if kind == "full":  # in the base model's dtype unless hyperparameters.save_dtype says otherwise
            cast_for_saving(save_model, saved_dtype)
        staging.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging / "trainer", ignore_errors=True)
        save_model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        base_model = resolved.path if resolved.kind == "base" and Path(resolved.path).is_dir() else req.model
        provenance = base_provenance(req.model, resolved)  # where the base came from: path and Hub id
        result = TrainResult(
            output_dir=req.output_dir, steps=steps, train_loss=callback.last_loss, val_loss=val_loss,
            train_tokens=train_tokens, skipped_examples=train_data.skipped,
            seconds=time.perf_counter() - started, kind=kind,
            train_loss_mean=float(output.training_loss) if output.training_loss is not None else None,
            examples=len(train_data.examples), trainable_tokens=train_data.trainable_tokens,
            tokens_per_second=train_tokens / train_seconds if train_seconds > 0 else None,
        )
        write_manifest(staging, {
            "id": req.fine_tuned_model_id, "object": "model", "kind": kind, "base_model": base_model, **provenance,
            "job_id": req.job_id, "created_at": int(time.time()), "strategy": strategy,
            "training": {"steps": steps, "train_loss": result.train_loss, "val_loss": val_loss,
                         "best_step": callback.best_step if restored else None,
                         "train_tokens": train_tokens, "examples": result.examples,
                         "skipped_examples": train_data.skipped, "seconds": round(result.seconds, 3),
                         "hyperparameters": hparams},
        })
        _move_into_place(staging, req.output_dir)
        finish_data = {"steps": steps, "train_loss": result.train_loss, "train_loss_mean": result.train_loss_mean,
                       "first_loss": callback.first_loss, "val_loss": val_loss, "train_tokens": train_tokens,
                       "tokens_per_second": result.tokens_per_second, "seconds": round(result.seconds, 3),
                       "train_seconds": round(train_seconds, 3), "train_cpu_seconds": round(train_cpu_seconds, 3),
                       "output_dir": str(req.output_dir), "kind": kind}
        if restored:
            finish_data["best_step"] = callback.best_step
        reporter.event("sft.training.finish", f"training finished after {steps} steps"
                       + (f"; restored the best checkpoint (step {callback.best_step})" if restored else ""),
                       finish_data)
        return result
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingError(
            "out_of_memory",
            f"the GPU ran out of memory ({str(exc).splitlines()[0][:200]}); lower hyperparameters.per_device_batch "
            f"(now {sft_kwargs['per_device_train_batch_size']}) or sequence_length (now {sft_kwargs['max_length']}), "
            "raise gradient_accumulation_steps to keep the global batch, or train with LoRA/QLoRA",
            "hyperparameters.per_device_batch") from exc
    except (TrainingError, TrainingCancelled):
        raise
    except Exception as exc:
        logger.exception("training failed")
        raise TrainingError("training_failed", f"training failed: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        del trainer, model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
