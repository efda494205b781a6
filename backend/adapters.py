"""LoRA adapters loaded at run time under a served name: vLLM's runtime LoRA API, on the embedded backend.

vLLM (``vllm serve … --enable-lora`` with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) serves
``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` and ``POST /v1/unload_lora_adapter {"lora_name"}``
(``vllm/entrypoints/openai/serving_models.py``); afterwards a chat completion whose ``model`` is ``lora_name``
samples from the adapter. :class:`AdapterRegistry` gives the embedded backend the same two calls with vLLM's
statuses and messages, so a ReST-EM loop that tells an external server which model to load (``[eval]
load_lora_adapters``) works against vLLM and against another embedded backend alike:

* load: 200 with the text ``Success: LoRA adapter '<name>' added successfully.``; 400 when a field is missing
  (``Both 'lora_name' and 'lora_path' must be provided.``) or the name is taken (``The lora adapter '<name>' has
  already been loaded.``); 404 when the folder holds no adapter (vLLM's ``No adapter found …``);
* unload: 200 with ``Success: LoRA adapter '<name>' removed successfully.``; 400 without a name; 404 for a name
  not loaded (``The lora adapter '<name>' cannot be found.``).

An adapter folder is a PEFT adapter (``adapter_config.json`` + weights), as ``export_model(merge_lora=False)``
writes it, or a fine-tuned model folder of this backend (``<data dir>/models/<job_id>`` with its manifest). Its
base is the manifest's ``base_model`` or ``adapter_config.json``'s ``base_model_name_or_path`` (vLLM applies the
adapter to the model it serves; the embedded backend serves many, so the adapter names its own). File-system
checks only: no torch. Errors are :class:`~learning_mcp.backend.inference.InferenceError`.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .inference import InferenceError
from .modelref import ModelRefError, ResolvedModel, read_manifest, resolve_model

ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ServedAdapter:
    """A loaded adapter: the name requests use, its folder, and the model it applies to."""

    name: str
    path: str
    base_model: str

    def resolved(self) -> ResolvedModel:
        """The adapter as :mod:`.modelref` describes a LoRA model (what the engines load)."""
        folder = Path(self.path)
        tokenizer = self.path if any((folder / name).is_file() for name in TOKENIZER_FILES) else self.base_model
        return ResolvedModel(id=self.name, kind="lora", path=self.path, base_model=self.base_model,
                             tokenizer_path=tokenizer)


def _field(body: object, key: str) -> str | None:
    value = body.get(key) if isinstance(body, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def adapter_base(path: Path) -> str:
    """The base model of the adapter folder ``path``: this backend's manifest ``base_model`` (a fine-tuned model
    folder), else ``adapter_config.json``'s ``base_model_name_or_path``. Raises InferenceError 404 (no adapter
    there, vLLM's ``No adapter found``) or 400 (no base named)."""
    if not (path / ADAPTER_CONFIG).is_file():
        raise InferenceError(404, "adapter_not_found", f"No adapter found for {path}: it has no {ADAPTER_CONFIG} "
                             "(pass a PEFT adapter folder, e.g. export_model(model, path, merge_lora=False))",
                             "lora_path")
    manifest = read_manifest(path)
    if manifest is not None:
        try:
            resolved = resolve_model(str(path), path.parent)
        except ModelRefError as exc:
            raise InferenceError(400, "invalid_adapter", exc.message, "lora_path") from exc
        if resolved.kind == "lora" and resolved.base_model:
            return resolved.base_model
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InferenceError(400, "invalid_adapter", f"{path / ADAPTER_CONFIG} is unreadable: {exc}",
                             "lora_path") from exc
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base.strip():
        raise InferenceError(400, "invalid_adapter", f"{path / ADAPTER_CONFIG} names no base_model_name_or_path; "
                             "the embedded backend needs it to know which model the adapter applies to",
                             "lora_path")
    return base.strip()


class AdapterRegistry:
    """Served name → :class:`ServedAdapter`, shared by the routes and the inference engine (thread-safe)."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self._adapters: dict[str, ServedAdapter] = {}
        self._lock = threading.Lock()

    def load(self, body: object) -> ServedAdapter:
        """Register ``body["lora_path"]`` under ``body["lora_name"]`` (vLLM's checks and messages; see the module
        docstring). The base must resolve here (:func:`~.modelref.resolve_model`), else 400 ``invalid_adapter``."""
        name, path = _field(body, "lora_name"), _field(body, "lora_path")
        if not name or not path:
            raise InferenceError(400, "invalid_request", "Both 'lora_name' and 'lora_path' must be provided.",
                                 "lora_name" if not name else "lora_path")
        if Path(name).expanduser().is_absolute() and Path(name).expanduser().exists():
            # a name that is a model folder would shadow that model for every later request
            raise InferenceError(400, "invalid_request", f"lora_name {name!r} is an existing path; name the adapter "
                                 "something that is not a model (e.g. the ft: id or a short name).", "lora_name")
        folder = Path(os.path.normpath(Path(path).expanduser().absolute()))
        base = adapter_base(folder)
        try:
            resolve_model(base, self.models_dir)
        except ModelRefError as exc:
            raise InferenceError(400, "invalid_adapter", f"the adapter's base model {base!r} is not available here: "
                                 f"{exc.message}", "lora_path") from exc
        adapter = ServedAdapter(name=name, path=str(folder), base_model=base)
        with self._lock:
            if name in self._adapters:
                raise InferenceError(400, "adapter_already_loaded",
                                     f"The lora adapter '{name}' has already been loaded.", "lora_name")
            self._adapters[name] = adapter
        return adapter

    def unload(self, body: object) -> ServedAdapter:
        """Forget ``body["lora_name"]``; 400 without a name, 404 for a name not loaded."""
        name = _field(body, "lora_name")
        if not name:
            raise InferenceError(400, "invalid_request", "either 'lora_name' and 'lora_int_id' needs to be provided.",
                                 "lora_name")
        with self._lock:
            adapter = self._adapters.pop(name, None)
        if adapter is None:
            raise InferenceError(404, "adapter_not_found", f"The lora adapter '{name}' cannot be found.", "lora_name")
        return adapter

    def get(self, name: str) -> ServedAdapter | None:
        with self._lock:
            return self._adapters.get(name)

    def all(self) -> list[ServedAdapter]:
        with self._lock:
            return list(self._adapters.values())
