"""Checks of a dataset and a config against the model they will train, before anything is uploaded or trained.

Two silent failures are turned into ``[code]`` errors at ``create_job`` (dry runs included):

* **images on a text-only model** (``images_unsupported``): a text model's chat template turns an image part
  into the literal text ``<image>`` (or drops it) and the job "succeeds". TRL refuses vision data for a model
  without a processor (``SFTTrainer``: "The dataset appears to be vision-related … the provided model does not
  seem to be a vision-language model"); we refuse earlier, naming the first line with an image.
* **LoRA target modules that match nothing** (``lora_target_modules_invalid``): see
  :mod:`learning_mcp.backend.lora` for the rule (PEFT's suffix match, entry by entry).

What a model is (vision-language or not, which modules it has) is read offline:

* Synth target: Synth's registry (``models_registry.is_vision_model``; Qwen3-VL) — Synth's own rule for
  "vision mode" (learning-api.md §5.3); a Hub config in the local cache is used for the LoRA check.
* embedded backend: the model's ``config.json`` (a local directory, a ``ft:`` id's base, or a Hub id in the
  local Hugging Face cache). ``vision_config`` in it, or a ``model_type`` among transformers'
  image-text-to-text models (read from the installed source, not imported), means vision-language. The module
  list for the LoRA check comes from ``python -m learning_mcp.backend.lora``, a subprocess, so this process
  never imports torch/transformers (DEVELOPERS.md). A model that cannot be read here is left to the backend, which
  runs the same checks when the job is created (``backend/vision.py``, ``backend/lora.py``).

The image scan is a byte search for ``"image`` (fast on multi-GB files); only lines that contain it are parsed.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learning_mcp.tools import models_registry
from learning_mcp.tools.errors import ToolFailure
from learning_mcp.tools.lora_rules import ModuleInventory, TargetModulesError, check_target_modules, requested_targets
from learning_mcp.tools.sft_contract import training_strategy

IMAGE_PART_TYPES = frozenset(("image", "image_url", "input_image"))
VL_EXAMPLE_MODEL = "Qwen/Qwen2-VL-2B-Instruct"
INVENTORY_TIMEOUT_S = 40.0
_CHUNK = 8 * 1024 * 1024
_NEEDLE = b'"image'


# ----------------------------------------------------------------------------------------------------------
# images in a dataset
# ----------------------------------------------------------------------------------------------------------
def count_image_parts(content: Any) -> int:
    """Image parts in one message's ``content`` (a list of parts, or a single part dict), Synth's
    ``count_images_in_content`` plus OpenAI's ``input_image``."""
    parts = content if isinstance(content, list) else [content] if isinstance(content, dict) else []
    return sum(1 for part in parts if isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES)


def record_images(record: Any) -> int:
    """Image parts in one JSONL record (all messages)."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        return 0
    return sum(count_image_parts(m.get("content")) for m in record["messages"] if isinstance(m, dict))


@dataclass
class ImageScan:
    """``examples``: records with at least one image part; ``first_line``: the first such record's line
    (1-based), None when there is none; ``complete``: False when the scan stopped at the first hit."""

    examples: int
    first_line: int | None
    complete: bool = True


def _image_lines(path: str | os.PathLike[str]):
    """Yield the 1-based numbers of lines holding a record with image parts."""
    line_no, pending = 0, b""
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            data = pending + chunk
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            block, pending = data[:cut], data[cut:]
            if _NEEDLE in block:
                for offset, raw in enumerate(block.split(b"\n")):
                    if _NEEDLE not in raw:
                        continue
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        continue
                    if record_images(record):
                        yield line_no + offset + 1
            line_no += block.count(b"\n")
            if not chunk:
                return


def scan_images(path: str | os.PathLike[str], *, stop_at_first: bool = False) -> ImageScan:
    """Records of a JSONL file that carry image parts. Reads the file in 8 MiB chunks; only lines containing
    ``"image`` are JSON-parsed. Invalid lines count as no image (validation reports them)."""
    examples, first = 0, None
    for line in _image_lines(path):
        examples, first = examples + 1, first or line
        if stop_at_first:
            return ImageScan(examples, first, complete=False)
    return ImageScan(examples, first)


def images_unsupported_message(model: str, scan: ImageScan) -> str:
    """The one text both the tools and the backend use for ``images_unsupported``."""
    count = f"{scan.examples} example{'s' if scan.examples != 1 else ''}" if scan.complete else "examples"
    return (f"the dataset has {count} with images (first at line {scan.first_line}) but {model} is a text-only "
            f"model, which would see each image as plain text; use a vision-language model such as "
            f"{VL_EXAMPLE_MODEL} (any AutoModelForImageTextToText model) in [job] model, or remove the images "
            "from the dataset, then call create_job again")


# ----------------------------------------------------------------------------------------------------------
# what a model is, offline
# ----------------------------------------------------------------------------------------------------------
def _manifest_base(directory: Path) -> str | None:
    try:
        manifest = json.loads((directory / "learning_mcp_model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get("base_model") if manifest.get("kind") == "lora" else None


def model_config_json(model: str, _depth: int = 0) -> dict | None:
    """``config.json`` of ``model`` (or of the base it was fine-tuned from), or None when not readable here."""
    if _depth > 8 or not model:
        return None
    if models_registry.is_finetuned_id(model):
        base = models_registry.base_of_finetuned(model)
        return model_config_json(base, _depth + 1) if base else None
    local = Path(model).expanduser()
    if local.is_dir():
        base = _manifest_base(local)
        if base:
            return model_config_json(base, _depth + 1)
        config_path = local / "config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        try:
            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # not a valid repo id
            return None
        if not isinstance(cached, str):
            return None
        config_path = Path(cached)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


_INVENTORIES: dict[tuple[str, str], dict] = {}


def module_inventory(model: str, *, timeout_s: float = INVENTORY_TIMEOUT_S) -> dict | None:
    """``{"names", "linear", "model_type", "vision"}`` from ``python -m learning_mcp.backend.lora`` (meta-device
    build, no weights), or None when the training stack is missing or the model cannot be read here.
    Cached per model and config content (the subprocess costs seconds: it imports torch)."""
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
        return None
    key = (model, json.dumps(model_config_json(model), sort_keys=True))
    if key in _INVENTORIES:
        return _INVENTORIES[key]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run([sys.executable, "-m", "learning_mcp.backend.lora", model], capture_output=True,
                              text=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        answer = json.loads((done.stdout or "").strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    if not (isinstance(answer, dict) and "names" in answer):
        return None
    _INVENTORIES[key] = answer
    return answer


@functools.lru_cache(maxsize=1)
def image_text_to_text_model_types() -> frozenset[str] | None:
    """The ``model_type`` keys of transformers' ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES``, read from the
    installed ``modeling_auto.py`` source (a literal) so this process does not import transformers (which imports
    torch, ~5-20 s); None when transformers is not installed or the literal is not found."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "models" / "auto" / "modeling_auto.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"
                                                 for t in node.targets)
                and isinstance(node.value, ast.Call) and node.value.args):
            try:
                return frozenset(key for key, _ in ast.literal_eval(node.value.args[0]))
            except (ValueError, TypeError):
                return None
    return None


def is_vision_language(model: str, target: str) -> bool | None:
    """True / False, or None when it cannot be told here (the backend decides at job creation)."""
    if target == "synth":
        base = models_registry.base_of_finetuned(model) if models_registry.is_finetuned_id(model) else model
        return models_registry.is_vision_model(base)
    config = model_config_json(model)
    if config is None:
        return None
    if config.get("vision_config") is not None:
        return True
    model_types = image_text_to_text_model_types()
    if model_types is not None:
        return config.get("model_type") in model_types
    inventory = module_inventory(model)
    return None if inventory is None else bool(inventory.get("vision"))


# ----------------------------------------------------------------------------------------------------------
# the create_job preflight
# ----------------------------------------------------------------------------------------------------------
def lora_selected(payload: dict) -> bool:
    """True when an SFT job payload trains a LoRA (or QLoRA) adapter rather than all weights
    (:func:`~learning_mcp.tools.sft_contract.training_strategy` on its hyperparameters and effective config)."""
    metadata = payload.get("metadata") or {}
    return training_strategy(payload.get("hyperparameters") or {}, metadata.get("effective_config") or {})[0] == "lora"


def check_lora_targets(payload: dict, model: str, target: str) -> None:
    """Raise ``ToolFailure("lora_target_modules_invalid")`` when a ``lora_target_modules`` entry matches no
    module of ``model``. Skipped for full fine-tunes, ``all-linear``, and models not readable here."""
    hyperparameters = payload.get("hyperparameters") or {}
    if not requested_targets(hyperparameters.get("lora_target_modules")) or not lora_selected(payload):
        return
    if target == "synth" and model_config_json(model) is None:
        return  # Synth's model, not in the local cache: Synth checks it
    inventory = module_inventory(model)
    if inventory is None:
        return
    try:
        check_target_modules(hyperparameters["lora_target_modules"],
                             ModuleInventory(names=inventory["names"], linear=inventory["linear"]), model=model)
    except TargetModulesError as exc:
        raise ToolFailure(exc.code, exc.message, param=exc.param,
                          data={"unmatched": exc.unmatched, "linear_modules": exc.linear}) from None


def check_images(dataset: str | os.PathLike[str] | None, model: str, target: str) -> None:
    """Raise ``ToolFailure("images_unsupported")`` when ``dataset`` has image parts and ``model`` is known to be
    text-only."""
    if dataset is None or not Path(dataset).is_file():
        return
    first = scan_images(dataset, stop_at_first=True)
    if first.first_line is None:
        return
    if is_vision_language(model, target) is not False:
        return
    raise ToolFailure("images_unsupported", images_unsupported_message(model, scan_images(dataset)),
                      param="job.model")


def preflight(plan: Any, *, dataset: str | os.PathLike[str] | None, validation_dataset: Any = None) -> None:
    """Both checks for an ``SFTJobPlan`` (create_job, dry run or not). Blocking: run it in a thread."""
    for path in (dataset, validation_dataset):
        check_images(path, plan.model, plan.target)
    check_lora_targets(plan.payload, plan.model, plan.target)
