"""Vision-language fine-tuning: which models can see images, how image datasets reach them, and what is refused.

Detection (offline, from the model's config)
    A model is vision-language when its config has a ``vision_config`` or its ``model_type`` is in transformers'
    ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA, Idefics3, SmolVLM,
    Gemma 3, …). Such models load with ``AutoModelForImageTextToText`` and ``AutoProcessor``; everything else is a
    causal LM. LoRA adapters and ``ft:`` ids are followed to their base. A dataset with image parts on a text-only
    model fails with ``images_unsupported`` at job creation (:func:`learning_mcp.backend.preflight.check_new_job`)
    and again when the worker starts (:meth:`VisionJob.detect`), never becoming the literal text ``<image>``.

Training (TRL's own VLM support)
    Rows are ``{"messages": [...], "images": []}`` with every image already decoded and embedded as
    ``{"type": "image", "image": <PIL.Image>}`` in its message, and ``processing_class`` is the model's processor,
    so ``SFTTrainer`` picks ``DataCollatorForVisionLanguageModeling``: on-the-fly
    ``processor.apply_chat_template(..., return_assistant_tokens_mask=True)`` with TRL's training template
    (``{% generation %}`` markers) and ``assistant_only_loss=True`` — assistant-only loss, end-of-turn token
    included. The one thing TRL lacks, Synth's per-message ``weight: 0``, is applied by a thin wrapper around
    TRL's collator that blanks the label span of each weight-0 assistant turn (spans matched to turns in order).
    Rows are stored as JSON text in a ``datasets.Dataset`` (TRL requires one) and decoded, images included, by a
    ``set_transform`` when the trainer reads them (:func:`_decode_rows`), so a large dataset is not held in
    memory as pixels.

Synth's rules (learning-api.md §5.3)
    * images are ``{"type": "image_url", "image_url": {"url": …}}`` or ``{"type": "image", "image": …}`` parts
      (OpenAI's ``input_image`` too); URLs are ``data:image/…;base64,…``, local files (absolute paths or
      ``file://``) and http(s), which is fetched unless the machine is offline (``HF_HUB_OFFLINE``), then refused
      with ``image_unavailable`` naming the line;
    * ``max_images_per_message``: Synth's registry value (1 for Qwen3-VL) or none; extra images in a message are
      trimmed, and the trim is reported in the ``sft.config.prepared`` event;
    * ``per_device_batch`` (train and eval) is clamped to 1 and ``gradient_accumulation_steps`` raised by the same
      factor, so the global batch is kept; reported in the same event.

torch / transformers / trl / PIL are imported inside functions only.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learning_mcp.tools.model_checks import (IMAGE_PART_TYPES, image_text_to_text_model_types, model_config_json,
                                             scan_images)

logger = logging.getLogger(__name__)

TRAINING_FILE_PARAM = "training_file_id"
HTTP_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------------


def is_vision_language_config(config: Any) -> bool:
    """True for a ``PretrainedConfig`` (or config.json dict) of a vision-language model (module docstring)."""
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    if get("vision_config", None) is not None:
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if get("model_type", None) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return True
    architectures = get("architectures", None) or []
    return any(name in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values() for name in architectures)


def auto_model_class(vision: bool):
    """``AutoModelForImageTextToText`` for vision-language models, else ``AutoModelForCausalLM``."""
    if vision:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def path_is_vision_language(path: str) -> bool:
    """Whether the checkpoint at ``path`` (a local directory or Hub id) is vision-language, from its config."""
    config = model_config_json(path)
    if config is not None:
        if config.get("vision_config") is not None:
            return True
        model_types = image_text_to_text_model_types()  # read from transformers' source, not imported
        return config.get("model_type") in model_types if model_types is not None else is_vision_language_config(config)
    from transformers import AutoConfig

    from .modelref import hub_offline

    try:
        loaded = AutoConfig.from_pretrained(path, local_files_only=os.path.isdir(path) or hub_offline())
    except Exception as exc:  # unreadable config: the loader reports it
        logger.debug("cannot read the config of %s: %s", path, exc)
        return False
    return is_vision_language_config(loaded)


def model_is_vision_language(model_id: str, models_dir: Path) -> bool:
    """``path_is_vision_language`` of ``model_id``'s base weights (LoRA adapters and ft: ids followed)."""
    from .lora import config_source

    return path_is_vision_language(config_source(model_id, models_dir))


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------


class ImageError(Exception):
    """An image reference that cannot be turned into pixels; ``message`` says why and what to do."""


def image_reference(part: dict[str, Any]) -> Any:
    """What an image part points at: a URL/path string, or an already-decoded image (None when absent)."""
    value = part.get("image_url") if part.get("type") == "image_url" else part.get(
        "image", part.get("image_url", part.get("url")))
    return value.get("url") if isinstance(value, dict) else value


def _offline() -> bool:
    from .modelref import hub_offline

    return hub_offline()


def load_image(reference: Any):
    """A ``PIL.Image`` in RGB from a ``data:image/…;base64,`` URL, a local path / ``file://`` URL, an http(s) URL
    (only when online) or a PIL image. Raises :class:`ImageError`."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(reference, Image.Image):
        return reference.convert("RGB")
    if not isinstance(reference, str) or not reference.strip():
        raise ImageError("an image part has no URL or path")
    ref = reference.strip()
    try:
        if ref[:5].lower() == "data:":
            header, _, payload = ref.partition(",")
            if ";base64" not in header.lower():
                raise ImageError("a data: image URL is not base64 encoded; use data:image/<format>;base64,...")
            raw = base64.b64decode(payload, validate=False)
            return Image.open(io.BytesIO(raw)).convert("RGB")
        if ref.startswith(("http://", "https://")):
            if _offline():
                raise ImageError(f"image {ref[:80]!r} is an http(s) URL and this machine is offline (HF_HUB_OFFLINE); "
                                 "embed it as a data:image/<format>;base64,... URL or a local file path")
            import httpx

            response = httpx.get(ref, timeout=HTTP_TIMEOUT_S, follow_redirects=True)
            response.raise_for_status()
            return Image.open(io.BytesIO(response.content)).convert("RGB")
        path = Path(ref[7:] if ref.startswith("file://") else ref).expanduser()
        if not path.is_absolute():
            raise ImageError(f"image path {ref[:80]!r} is relative; the backend stores datasets by content, so use "
                             "an absolute path, a file:// URL or a data: URL")
        with Image.open(path) as image:
            return image.convert("RGB")
    except ImageError:
        raise
    except (OSError, ValueError, binascii.Error, UnidentifiedImageError) as exc:
        raise ImageError(f"image {ref[:80]!r} cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
    except Exception as exc:  # httpx errors
        raise ImageError(f"image {ref[:80]!r} cannot be fetched ({type(exc).__name__}: {str(exc)[:200]})") from None


# --------------------------------------------------------------------------------------------------
# rows and labels
# --------------------------------------------------------------------------------------------------


def _structured(messages: list[dict[str, Any]], max_images: int | None) -> tuple[list[dict[str, Any]], list[Any], int]:
    """Messages with every content as a list of parts; image parts become ``{"type": "image"}`` placeholders.

    Returns ``(messages, image references in order, images trimmed by max_images)``.
    """
    out, refs, trimmed = [], [], 0
    for message in messages:
        content = message.get("content")
        message = {k: v for k, v in message.items() if k != "weight"}
        if isinstance(content, str):
            message["content"] = [{"type": "text", "text": content}]
        elif isinstance(content, (list, dict)):
            parts, images_here = [], 0
            for part in content if isinstance(content, list) else [content]:
                if isinstance(part, str):
                    parts.append({"type": "text", "text": part})
                elif isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES:
                    images_here += 1
                    if max_images is not None and images_here > max_images:
                        trimmed += 1
                        continue
                    parts.append({"type": "image"})
                    refs.append(image_reference(part))
                elif isinstance(part, dict) and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "text": part["text"]})
            message["content"] = parts
        out.append(message)
    return out, refs, trimmed


def _filled(messages: list[dict[str, Any]], images: list[Any]) -> list[dict[str, Any]]:
    """A copy of ``messages`` whose image placeholders hold ``images`` in order."""
    pending = iter(images)
    return [{**m, "content": [{"type": "image", "image": next(pending)} if p.get("type") == "image" else p
                              for p in m["content"]]} if isinstance(m.get("content"), list) else dict(m)
            for m in messages]


def untrained_spans(trained: list[bool], weights: list[float]) -> list[tuple[int, int]] | None:
    """The token spans of the weight-0 assistant turns, given which tokens are trained (one contiguous span
    per assistant turn, in order) and the assistant turns' weights; None when the spans do not line up."""
    from .trainer import assistant_spans

    spans = assistant_spans([int(bit) for bit in trained])
    if len(spans) != len(weights):
        return None
    return [span for span, weight in zip(spans, weights) if weight == 0]


def _assistant_weights(messages: list[dict[str, Any]]) -> list[float]:
    weights = []
    for message in messages:
        if message.get("role") == "assistant":
            weight = message.get("weight")
            weights.append(0.0 if weight is not None and not isinstance(weight, str) and float(weight) == 0 else 1.0)
    return weights


@dataclass
class _Row:
    messages: list[dict[str, Any]]  # structured, image placeholders
    refs: list[Any]
    weights: list[float]
    line: int


def _decode_rows(batch: dict[str, list]) -> dict[str, list]:
    """``Dataset.set_transform`` function: JSON rows → ``{"messages" (images embedded), "images": [],
    "weights"}``, images decoded on access. Python objects, never Arrow structs (whose schema unification
    would add ``None`` keys to heterogeneous messages)."""
    out: dict[str, list] = {"messages": [], "images": [], "weights": []}
    for text in batch["row"]:
        row = json.loads(text)
        out["messages"].append(_filled(row["messages"], [load_image(ref) for ref in row["refs"]]))
        out["images"].append([])
        out["weights"].append(row["weights"])
    return out


@dataclass
class VisionData:
    """Prepared vision-language examples, with the interface of the trainer's text ``PreparedData``."""

    rows: list[_Row]
    skipped: int
    skipped_lines: list[int] = field(default_factory=list)
    trainable_tokens: int = 0
    total_tokens: int = 0
    trimmed_images: int = 0

    @property
    def examples(self) -> list[_Row]:
        return self.rows

    def to_dataset(self):
        from datasets import Dataset

        dataset = Dataset.from_dict({"row": [json.dumps({"messages": row.messages, "refs": row.refs,
                                                         "weights": row.weights}) for row in self.rows]})
        dataset.set_transform(_decode_rows)
        return dataset


class _WeightAwareCollator:
    """TRL's vision collator, then label -100 over each weight-0 assistant turn's span."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        weights = [example.pop("weights", None) for example in examples]
        batch = self.inner(examples)
        labels = batch["labels"]
        for index, row_weights in enumerate(weights):
            if not row_weights or all(weight != 0 for weight in row_weights):
                continue
            spans = untrained_spans((labels[index] != -100).tolist(), row_weights)
            if spans is None:  # prepare_examples verified the same rendering, so this is a bug
                raise RuntimeError("assistant spans do not match the assistant turns; cannot honour weight 0")
            for start, end in spans:
                labels[index, start:end] = -100
        return batch


# --------------------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------------------


class VisionJob:
    """The vision-language side of one training job; :meth:`detect` returns None for text-only data."""

    def __init__(self, processor, *, max_images: int | None, model: str) -> None:
        self.processor = processor
        self.max_images = max_images
        self.model = model
        self.chat_template: str | None = None
        self.notes: list[str] = []

    @classmethod
    def detect(cls, model: str, resolved, models_dir: Path, train_path: Path,
               validation_path: Path | None = None) -> "VisionJob | None":
        """None when neither dataset has image parts; else the job, with the model's processor loaded.

        Raises the trainer's ``TrainingError``: ``images_unsupported`` (text-only model), ``model_not_loadable``
        (no processor), ``model_not_supported`` (no chat template TRL can train with).
        """
        from learning_mcp.tools import models_registry
        from learning_mcp.tools.model_checks import images_unsupported_message

        from .trainer import TrainingError

        scan = scan_images(train_path)
        if scan.first_line is None and (validation_path is None or scan_images(validation_path).first_line is None):
            return None
        if not model_is_vision_language(model, models_dir):
            raise TrainingError("images_unsupported", images_unsupported_message(model, scan), "model")
        from transformers import AutoProcessor

        from .modelref import _local_only

        path = resolved.tokenizer_path
        try:
            processor = AutoProcessor.from_pretrained(path, local_files_only=_local_only(path))
        except Exception as exc:
            raise TrainingError("model_not_loadable", f"cannot load the processor of {model!r} "
                                f"({type(exc).__name__}: {str(exc)[:300]}); vision-language training needs the "
                                "model's image processor (some, e.g. Qwen2-VL's, also need torchvision)",
                                "model") from exc
        if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
            raise TrainingError("model_not_loadable", f"{model!r} has no image processor next to its tokenizer, so "
                                "its images cannot be prepared", "model")
        if processor.tokenizer.pad_token is None and processor.tokenizer.eos_token is not None:
            processor.tokenizer.pad_token = processor.tokenizer.eos_token
        job = cls(processor, max_images=models_registry.max_images_per_message(model), model=model)
        job.chat_template = job._training_template()
        return job

    def _training_template(self) -> str | None:
        from trl.chat_template_utils import get_training_chat_template, has_generation_markers

        from .trainer import TrainingError

        template = getattr(self.processor, "chat_template", None)
        if not template:
            raise TrainingError("model_not_supported", f"{self.model!r} has no chat template on its processor, so "
                                "conversations cannot be rendered; use an instruct/chat vision-language model",
                                "model")
        if has_generation_markers(template):
            return None
        try:
            patched = get_training_chat_template(self.processor)
        except Exception as exc:
            patched = None
            logger.debug("no TRL training template: %s", exc)
        if not patched or not has_generation_markers(patched):
            raise TrainingError("model_not_supported", f"the chat template of {self.model!r} has no "
                                "{% generation %} markers and TRL ships no training template for it, so the "
                                "assistant tokens of an image conversation cannot be found", "model")
        return patched

    # -- data ------------------------------------------------------------------------------------------

    def _render(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        rendered = self.processor.apply_chat_template(
            [messages], chat_template=self.chat_template, tokenize=True, return_dict=True,
            return_assistant_tokens_mask=True, processor_kwargs={"add_special_tokens": False})
        return {"input_ids": list(rendered["input_ids"][0]), "mask": [bool(b) for b in rendered["assistant_masks"][0]]}

    def prepare_examples(self, records: list[dict[str, Any]], _tokenizer=None, *, chat_template: Any = None,
                         max_length: int, param: str = TRAINING_FILE_PARAM) -> VisionData:
        """Rows for the training dataset, every image decoded once (a bad image fails here, with its line), token
        counts from the processor's rendering, examples with no trainable token skipped (as for text)."""
        from .trainer import TrainingError

        image_token = getattr(self.processor, "image_token_id", None)
        rows, skipped_lines, trainable, total, trimmed, with_tools = [], [], 0, 0, 0, 0
        for record in records:
            line = record.get("line", -1)
            messages, refs, cut = _structured(record["messages"], self.max_images)
            trimmed += cut
            with_tools += bool(record.get("tools"))
            try:
                images = [load_image(ref) for ref in refs]
            except ImageError as exc:
                code = "image_unavailable"
                raise TrainingError(code, f"line {line}: {exc}", param) from None
            try:
                rendered = self._render(_filled(messages, images))
            except Exception as exc:
                raise TrainingError("invalid_dataset", f"line {line}: the processor could not render this example "
                                    f"({type(exc).__name__}: {str(exc)[:300]})", param) from exc
            ids, mask = rendered["input_ids"], rendered["mask"]
            weights = _assistant_weights(record["messages"])
            if any(weight == 0 for weight in weights):
                spans = untrained_spans(mask, weights)
                if spans is None:
                    raise TrainingError("invalid_dataset", f"line {line}: the chat template does not mark one span "
                                        "per assistant turn, so weight 0 cannot be honoured on this image example",
                                        param)
                for start, end in spans:
                    mask[start:end] = [False] * (end - start)
            if image_token is not None and len(ids) > max_length and image_token in ids[max_length:]:
                raise TrainingError("sequence_too_short", f"line {line}: sequence_length {max_length} cuts through "
                                    f"an image (the example is {len(ids)} tokens with its image tokens); raise "
                                    "hyperparameters.sequence_length or use smaller images", "hyperparameters."
                                    "sequence_length")
            kept = sum(mask[:max_length])
            if not kept:
                skipped_lines.append(line)
                continue
            rows.append(_Row(messages=messages, refs=refs, weights=weights, line=line))
            trainable += kept
            total += min(len(ids), max_length)
        if trimmed:
            self.notes.append(f"trimmed {trimmed} image(s) beyond max_images_per_message={self.max_images} "
                              "(as Synth does)")
        if with_tools:
            self.notes.append(f"{with_tools} image example(s) define tools; TRL's vision collator renders them "
                              "without the tool definitions")
        return VisionData(rows=rows, skipped=len(skipped_lines), skipped_lines=skipped_lines,
                          trainable_tokens=trainable, total_tokens=total, trimmed_images=trimmed)

    # -- trainer settings ------------------------------------------------------------------------------

    def adjust_sft_kwargs(self, sft_kwargs: dict[str, Any]) -> list[str]:
        """Clamp the per-device batch to 1 (raising gradient accumulation to keep the global batch), switch on
        TRL's assistant-only loss and keep the raw columns; returns the notes for the prepared-config event."""
        notes = list(self.notes)
        per_device = int(sft_kwargs.get("per_device_train_batch_size") or 1)
        sft_kwargs["assistant_only_loss"] = True
        sft_kwargs["remove_unused_columns"] = False
        sft_kwargs["per_device_eval_batch_size"] = 1
        if per_device > 1:
            accumulation = int(sft_kwargs.get("gradient_accumulation_steps") or 1)
            sft_kwargs["per_device_train_batch_size"] = 1
            sft_kwargs["gradient_accumulation_steps"] = accumulation * per_device
            notes.append(f"vision-language job: per_device_batch clamped from {per_device} to 1 and "
                         f"gradient_accumulation_steps raised from {accumulation} to {accumulation * per_device} "
                         "(as Synth does for vision models; the global batch is unchanged)")
        return notes

    def wrap_collator(self, trainer) -> None:
        """Put the weight-0 wrapper around the collator TRL chose (its vision collator)."""
        trainer.data_collator = _WeightAwareCollator(trainer.data_collator)
