"""``preview_dataset``: what a fine-tuning job would train on, before anyone pays for it.

Read-only and pure (no job, no store, no writes): the dataset is loaded with the trainer's
:func:`~.trainer.load_jsonl_records`, each record is tokenised with the trainer's
:func:`~.trainer.tokenize_record` (the model's real chat template, the same span derivation and
``weight: 0`` / ``assistant_only_loss`` handling) and truncated at the ``max_length`` the trainer
would use (:func:`~.trainer.build_sft_config` from the same hyperparameters, clamped to the model's
context). So the trained text shown here is the text a job puts loss on.

The result is a pydantic model (:class:`DatasetPreview`) that serialises to JSON for the MCP tool and
the backend route. Totals cover the whole file unless ``time_budget_s`` runs out first; then they cover
the records scanned and say so (``totals.complete = False``), so a tool call stays within its time limit.
Errors are :class:`~learning_mcp.tools.errors.LearningMCPError` with the trainer's codes
(``invalid_dataset``, ``model_not_loadable``, ``model_not_supported``, ``invalid_hyperparameters``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from learning_mcp.tools.dataset import count_empty_targets, empty_target_warning
from learning_mcp.tools.errors import LearningMCPError
from learning_mcp.tools.preview import DatasetPreview, PreviewExample, PreviewTotals, TokenLengths

from .chat_template import METHOD_FALLBACK, trained_texts
from .vision import VisionJob

DEFAULT_TIME_BUDGET_S = 40.0
MAX_PREVIEW_EXAMPLES = 50
MAX_LISTED_LINES = 50


class _EmptyTargets:
    """Trained assistant turns with nothing to learn, counted as the validator counts them, so the preview repeats
    the validator's warning where the rendering is shown."""

    def __init__(self) -> None:
        self.count, self.lines = 0, []

    def add(self, record: Mapping[str, Any], line: int) -> None:
        found = count_empty_targets(record.get("messages"))
        if found:
            self.count += found
            if len(self.lines) < MAX_LISTED_LINES:
                self.lines.append(line)

    def warnings(self) -> list[str]:
        return [empty_target_warning(self.count, self.lines)] if self.count else []


def _percentile(sorted_values: list[int], fraction: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))]


def _hyperparameters(config: Mapping[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise LearningMCPError("invalid_hyperparameters", "config must be an object: the job's hyperparameters "
                               "(or a create_job payload with a hyperparameters object)", param="config")
    inner = config.get("hyperparameters")
    return dict(inner) if isinstance(inner, Mapping) else dict(config)


def preview_dataset(path: str | Path, model: str, examples: int = 3, sequence_length: int | None = None,
                    config: Mapping[str, Any] | None = None, *, models_dir: str | Path | None = None,
                    time_budget_s: float | None = DEFAULT_TIME_BUDGET_S) -> DatasetPreview:
    """Render a JSONL SFT file through ``model``'s chat template exactly as a training job would.

    ``path``: the JSONL file. ``model``: a base model id, local model directory or ``ft:`` id (resolved
    in ``models_dir``, the backend's models directory). ``examples``: records shown in full (0–50,
    the first ones). ``sequence_length``: tokens per sequence (overrides ``config``'s; default: the
    trainer's, 1024 clamped to the model's context). ``config``: the job's ``hyperparameters`` (or a
    payload holding them): ``sequence_length``/``max_length`` and ``assistant_only_loss`` are read.
    Returns a :class:`DatasetPreview`. Raises :class:`LearningMCPError`. Writes nothing.
    """
    from . import trainer as t
    from .modelref import ModelRefError, check_loadable, load_tokenizer, resolve_model

    if not isinstance(examples, int) or not 0 <= examples <= MAX_PREVIEW_EXAMPLES:
        raise LearningMCPError("invalid_request", f"examples must be an integer from 0 to {MAX_PREVIEW_EXAMPLES}",
                               param="examples")
    hparams = _hyperparameters(config)
    if sequence_length is not None:
        hparams["sequence_length"] = sequence_length
    started = time.monotonic()
    try:
        models = Path(models_dir) if models_dir is not None else Path.cwd()
        check_loadable(model, models)
        resolved = resolve_model(model, models)
        vl = VisionJob.detect(model, resolved, models, Path(path))  # images: the processor renders, as in training
        tokenizer = vl.processor.tokenizer if vl else load_tokenizer(resolved)
        markers = t.check_chat_template(tokenizer) == t.METHOD_MARKERS if not vl else True
        records = t.load_jsonl_records(Path(path), param="path")
        max_length = t.build_sft_config(hparams, len(records), "cpu",
                                        model_max_length=t._max_position_embeddings(resolved, models))["max_length"]
        assistant_only = t.assistant_only_loss_enabled(hparams)
        if vl:
            return _preview_vision(vl, tokenizer, records, model=model, path=path, examples=examples,
                                   max_length=max_length, started=started, time_budget_s=time_budget_s)
    except ModelRefError as exc:
        raise LearningMCPError("model_not_loadable", exc.message, param="model") from exc
    except t.TrainingError as exc:
        raise LearningMCPError(exc.code, exc.message, param=exc.param) from exc
    except OSError as exc:
        raise LearningMCPError("model_not_loadable", f"cannot load the tokenizer of {model!r}: {exc}",
                               param="model") from exc

    shown: list[PreviewExample] = []
    data = t.PreparedData(examples=[], skipped=0)
    lengths: list[int] = []
    truncated_lines: list[int] = []
    scanned = 0
    empty = _EmptyTargets()
    for record in records:
        if time_budget_s is not None and scanned >= max(examples, 1) and time.monotonic() - started > time_budget_s:
            break
        try:
            example = t.tokenize_record(record, tokenizer, chat_template=None, max_length=max_length,
                                        assistant_only_loss=assistant_only, param="path")
        except t.TrainingError as exc:
            raise LearningMCPError(exc.code, exc.message, param=exc.param) from exc
        scanned += 1
        line = record.get("line", -1)
        empty.add(record, line)
        sequences = example.sequences()
        lengths += [s.length for s in sequences]
        data.methods[example.method] = data.methods.get(example.method, 0) + 1
        if example.method == METHOD_FALLBACK:
            data.fallback_lines.append(line)
        truncated = any(s.truncated for s in sequences)
        if truncated:
            truncated_lines.append(line)
        trained = [s for s in sequences if s.trainable_tokens]
        if not trained:
            data.skipped_lines.append(line)
        data.examples += trained  # what the trainer keeps
        data.extra_sequences += max(0, len(trained) - 1)
        if len(shown) < examples:
            shown.append(PreviewExample(
                line=line, rendered_text=example.text, extra_sequences=[s.text for s in example.extra],
                trained_text=trained_texts(tokenizer, example), tokens=sum(s.length for s in sequences),
                trained_tokens=sum(s.trainable_tokens for s in sequences), truncated=truncated, dropped=not trained,
                span_method=example.method, notes=list(example.notes)))

    lengths.sort()
    totals = PreviewTotals(
        records=scanned, complete=scanned == len(records), sequences=len(data.examples),
        truncated=len(truncated_lines), truncated_lines=truncated_lines[:MAX_LISTED_LINES],
        dropped=len(data.skipped_lines), dropped_lines=data.skipped_lines[:MAX_LISTED_LINES],
        tokens=data.total_tokens, trained_tokens=data.trainable_tokens,
        trained_token_share=round(data.trainable_tokens / data.total_tokens, 4) if data.total_tokens else 0.0,
        token_lengths=TokenLengths(min=lengths[0] if lengths else 0, p50=_percentile(lengths, 0.5),
                                   p90=_percentile(lengths, 0.9), p95=_percentile(lengths, 0.95),
                                   p99=_percentile(lengths, 0.99), max=lengths[-1] if lengths else 0),
        span_methods=data.methods, fallback_lines=data.fallback_lines[:MAX_LISTED_LINES])
    warnings = t.data_loss_notes(data, assistant_only)
    warnings += empty.warnings()
    if totals.truncated:
        warnings.append(f"{totals.truncated} record(s) are longer than sequence_length {max_length} and would be "
                        "truncated (the start is kept)")
    if totals.dropped:
        warnings.append(f"{totals.dropped} record(s) have nothing to train after truncation and weights and would be "
                        "skipped")
    if not totals.complete:
        warnings.append(f"the time budget ended the scan after {scanned} of {len(records)} records; totals cover "
                        "those records")
    return DatasetPreview(model=model, path=str(path), sequence_length=max_length, assistant_only_loss=assistant_only,
                          chat_template_markers=markers, examples=shown, totals=totals, warnings=warnings)


def _lengths(lengths: list[int]) -> TokenLengths:
    lengths = sorted(lengths)
    return TokenLengths(min=lengths[0] if lengths else 0, p50=_percentile(lengths, 0.5), p90=_percentile(lengths, 0.9),
                        p95=_percentile(lengths, 0.95), p99=_percentile(lengths, 0.99),
                        max=lengths[-1] if lengths else 0)


def _preview_vision(vl: VisionJob, tokenizer, records: list[dict[str, Any]], *, model: str, path: str | Path,
                    examples: int, max_length: int, started: float, time_budget_s: float | None) -> DatasetPreview:
    """The vision-language rendering (:meth:`VisionJob.render_record`, the processor's chat template with the
    image tokens expanded; TRL's assistant mask): what a VL job trains on. Image tokens show as the processor's
    image token in ``rendered_text``."""
    from . import trainer as t

    shown: list[PreviewExample] = []
    lengths: list[int] = []
    truncated_lines: list[int] = []
    dropped_lines: list[int] = []
    tokens = trained = scanned = 0
    empty = _EmptyTargets()
    for record in records:
        if time_budget_s is not None and scanned >= max(examples, 1) and time.monotonic() - started > time_budget_s:
            break
        try:
            _, _, _, ids, mask, _ = vl.render_record(record, param="path")
        except t.TrainingError as exc:
            raise LearningMCPError(exc.code, exc.message, param=exc.param) from exc
        scanned += 1
        line = record.get("line", -1)
        empty.add(record, line)
        kept_ids, kept_mask = ids[:max_length], mask[:max_length]
        lengths.append(len(ids))
        if len(ids) > max_length:
            truncated_lines.append(line)
        n_trained = sum(kept_mask)
        if not n_trained:
            dropped_lines.append(line)
        else:
            tokens += len(kept_ids)
            trained += n_trained
        if len(shown) < examples:
            spans = t.assistant_spans([int(bit) for bit in kept_mask])
            shown.append(PreviewExample(
                line=line, rendered_text=tokenizer.decode(ids), extra_sequences=[],
                trained_text=[tokenizer.decode(kept_ids[a:b]) for a, b in spans], tokens=len(ids),
                trained_tokens=n_trained, truncated=len(ids) > max_length, dropped=not n_trained,
                span_method="vision-processor", notes=[]))
    totals = PreviewTotals(
        records=scanned, complete=scanned == len(records), sequences=scanned - len(dropped_lines),
        truncated=len(truncated_lines), truncated_lines=truncated_lines[:MAX_LISTED_LINES],
        dropped=len(dropped_lines), dropped_lines=dropped_lines[:MAX_LISTED_LINES], tokens=tokens,
        trained_tokens=trained, trained_token_share=round(trained / tokens, 4) if tokens else 0.0,
        token_lengths=_lengths(lengths), span_methods={"vision-processor": scanned}, fallback_lines=[])
    warnings = list(vl.notes)
    warnings += empty.warnings()
    if totals.truncated:
        warnings.append(f"{totals.truncated} record(s) are longer than sequence_length {max_length} (image tokens "
                        "included) and would be truncated or refused")
    if totals.dropped:
        warnings.append(f"{totals.dropped} record(s) have nothing to train and would be skipped")
    return DatasetPreview(model=model, path=str(path), sequence_length=max_length, assistant_only_loss=True,
                          chat_template_markers=True, examples=shown, totals=totals, warnings=warnings)
