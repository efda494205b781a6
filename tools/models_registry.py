"""Synth's base-model registry, reproduced from ``synth_ai/api/models/supported.py`` (synth-ai 0.2.24).

See ``/work/shared/reference/learning-api.md`` §8 (the registry) and §9 item 17 (registry vs local models).

What is reproduced exactly:

* the model families and the derived sets (``SFT_SUPPORTED_MODELS``, ``RL_SUPPORTED_MODELS``,
  ``EXPERIMENTAL_MODELS``, ``THINKING_MODELS``) and ``FINETUNED_PREFIXES``;
* case-insensitive lookup that returns the canonical casing (``qwen/qwen3-0.6b`` -> ``Qwen/Qwen3-0.6B``);
* how a fine-tuned id resolves to its base: every ``:``-separated segment after the prefix is looked up;
* experimental gating: ``SDK_EXPERIMENTAL=1`` (exactly ``"1"``, as Synth checks) or ``allow_experimental=True``;
  ``SDK_EXPERIMENTAL_MODELS`` (comma separated) extends the experimental set;
* the error texts: ``Model identifier is empty``, ``Model 'x' is not supported.``,
  ``Model 'x' is experimental and disabled. Set SDK_EXPERIMENTAL=1 or pass allow_experimental=True.``

Deliberate differences:

* Synth appends ``Call supported_model_ids() for available base models.`` to the "not supported" text. That
  points at a Python function our users cannot call, so we append a hint instead: a close match when there is
  one and a few supported ids. ``ModelNotSupportedError.synth_message`` keeps the Synth part on its own.
* Synth reads ``SDK_EXPERIMENTAL_MODELS`` once, at import. ``EXPERIMENTAL_MODELS`` is computed the same way,
  but the checks call :func:`experimental_models`, which reads the variable on every call, because the MCP
  server is a long-running process. Ids in the variable are matched case-insensitively.
* ``ensure_allowed_model`` defaults to ``allow_finetuned_prefixes=False`` (Synth: ``True``), because every
  caller in learning-mcp builds SFT jobs, which refuse fine-tuned ids (§4.2 step 5). It also folds in Synth's
  training-mode check (``ensure_model_supported_for_algorithm``) through ``training_mode``.
* :func:`base_of_finetuned` also recognises ``ft:<base>:<job>`` when ``<base>`` is not in the registry (a model
  trained on the local backend from a local base), which Synth never needs.

The registry is Synth's: it knows nothing about local models. Per §9.17 the local backend publishes its own
list, and callers apply this registry only when the target is Synth.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Final

from learning_mcp.tools.errors import MessageError
from learning_mcp.tools.settings import process_environ

__all__ = [
    "ALL_MODELS",
    "EXPERIMENTAL_DEFAULT_MODELS",
    "EXPERIMENTAL_MODELS",
    "FINETUNED_PREFIXES",
    "ModelNotSupportedError",
    "QWEN3_CODER_MODELS",
    "QWEN3_MODELS",
    "QWEN3_VL_MODELS",
    "RL_SUPPORTED_MODELS",
    "SFT_SUPPORTED_MODELS",
    "THINKING_MODELS",
    "base_of_finetuned",
    "ensure_allowed_model",
    "experimental_enabled",
    "experimental_models",
    "is_experimental_model",
    "is_finetuned_id",
    "is_thinking_model",
    "is_vision_model",
    "max_images_per_message",
    "normalize_model_id",
    "supported_model_ids",
    "training_modes_for_model",
]

EXPERIMENTAL_ENV: Final = "SDK_EXPERIMENTAL"
EXPERIMENTAL_MODELS_ENV: Final = "SDK_EXPERIMENTAL_MODELS"

QWEN3_MODELS: Final[tuple[str, ...]] = (
    "Qwen/Qwen3-0.6B",
    "Qwen/Qwen3-1.7B",
    "Qwen/Qwen3-4B",
    "Qwen/Qwen3-8B",
    "Qwen/Qwen3-14B",
    "Qwen/Qwen3-30B-A3B",
    "Qwen/Qwen3-32B",
    "Qwen/Qwen3-4B-2507",
    "Qwen/Qwen3-4B-Instruct-2507",
    "Qwen/Qwen3-4B-Instruct-2507-FP8",
    "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8",
    "Qwen/Qwen3-235B-A22B-Instruct-2507",
    "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8",
    "Qwen/Qwen3-4B-Thinking-2507",
    "Qwen/Qwen3-4B-Thinking-2507-FP8",
    "Qwen/Qwen3-30B-A3B-Thinking-2507",
    "Qwen/Qwen3-30B-A3B-Thinking-2507-FP8",
    "Qwen/Qwen3-235B-A22B-Thinking-2507",
    "Qwen/Qwen3-235B-A22B-Thinking-2507-FP8",
)

QWEN3_CODER_MODELS: Final[tuple[str, ...]] = (
    "Qwen/Qwen3-Coder-30B-A3B-Instruct",
    "Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8",
    "Qwen/Qwen3-Coder-480B-A35B-Instruct",
    "Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8",
)

QWEN3_VL_MODELS: Final[tuple[str, ...]] = tuple(
    f"Qwen/Qwen3-VL-{size}-{variant}"
    for size in ("2B", "4B", "8B", "30B-A3B", "32B", "235B-A22B")
    for variant in ("Instruct", "Thinking")
)

ALL_MODELS: Final[tuple[str, ...]] = (*QWEN3_MODELS, *QWEN3_CODER_MODELS, *QWEN3_VL_MODELS)

SFT_SUPPORTED_MODELS: Final[frozenset[str]] = frozenset(ALL_MODELS)

RL_SUPPORTED_MODELS: Final[frozenset[str]] = frozenset(
    {
        "Qwen/Qwen3-0.6B",
        "Qwen/Qwen3-1.7B",
        "Qwen/Qwen3-4B",
        "Qwen/Qwen3-8B",
        "Qwen/Qwen3-14B",
        "Qwen/Qwen3-30B-A3B",
        "Qwen/Qwen3-4B-2507",
        "Qwen/Qwen3-4B-Instruct-2507",
        "Qwen/Qwen3-4B-Instruct-2507-FP8",
        "Qwen/Qwen3-30B-A3B-Instruct-2507",
        "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8",
        "Qwen/Qwen3-4B-Thinking-2507",
        "Qwen/Qwen3-4B-Thinking-2507-FP8",
        "Qwen/Qwen3-30B-A3B-Thinking-2507",
        "Qwen/Qwen3-30B-A3B-Thinking-2507-FP8",
        "Qwen/Qwen3-Coder-30B-A3B-Instruct",
        "Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8",
        "Qwen/Qwen3-VL-2B-Instruct",
        "Qwen/Qwen3-VL-2B-Thinking",
        "Qwen/Qwen3-VL-4B-Instruct",
        "Qwen/Qwen3-VL-4B-Thinking",
        "Qwen/Qwen3-VL-8B-Instruct",
        "Qwen/Qwen3-VL-8B-Thinking",
    }
)

THINKING_MODELS: Final[frozenset[str]] = frozenset(
    {
        "Qwen/Qwen3-4B-Thinking-2507",
        "Qwen/Qwen3-4B-Thinking-2507-FP8",
        "Qwen/Qwen3-30B-A3B-Thinking-2507",
        "Qwen/Qwen3-30B-A3B-Thinking-2507-FP8",
        "Qwen/Qwen3-235B-A22B-Thinking-2507",
        "Qwen/Qwen3-235B-A22B-Thinking-2507-FP8",
        *(model for model in QWEN3_VL_MODELS if model.endswith("-Thinking")),
    }
)

# Synth's ``_EXPERIMENTAL_DEFAULTS``: the 235B-2507 models, Coder-480B, and the 4B/30B Thinking-2507 models.
EXPERIMENTAL_DEFAULT_MODELS: Final[frozenset[str]] = frozenset(
    {
        "Qwen/Qwen3-235B-A22B-Instruct-2507",
        "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8",
        "Qwen/Qwen3-235B-A22B-Thinking-2507",
        "Qwen/Qwen3-235B-A22B-Thinking-2507-FP8",
        "Qwen/Qwen3-Coder-480B-A35B-Instruct",
        "Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8",
        "Qwen/Qwen3-30B-A3B-Thinking-2507",
        "Qwen/Qwen3-30B-A3B-Thinking-2507-FP8",
        "Qwen/Qwen3-4B-Thinking-2507",
        "Qwen/Qwen3-4B-Thinking-2507-FP8",
    }
)

FINETUNED_PREFIXES: Final[tuple[str, ...]] = ("ft:", "fft:", "qft:", "rl:")

# Qwen3-VL: Synth's trainer keeps one image per turn by default (§5.3).
VL_MAX_IMAGES_PER_MESSAGE: Final = 1

_CANONICAL_BY_LOWER: Final[dict[str, str]] = {model.lower(): model for model in ALL_MODELS}
_HINT_MODEL_COUNT: Final = 5


class ModelNotSupportedError(MessageError, ValueError):
    """A model id that Synth's registry refuses.

    ``code`` is stable snake_case: ``empty_model``, ``model_not_supported``, ``finetuned_model_not_allowed``,
    ``model_experimental`` or ``model_training_mode``. ``synth_message`` is Synth's own text; ``hint`` is what
    we add after it (may be empty). ``str(error)`` is both together.
    """

    def __init__(self, code: str, synth_message: str, hint: str = "") -> None:
        self.synth_message = synth_message
        self.hint = hint
        super().__init__(code, f"{synth_message} {hint}".strip())


def _parse_experimental_env(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    raw = (process_environ() if environ is None else environ).get(EXPERIMENTAL_MODELS_ENV, "").strip()
    if not raw:
        return frozenset()
    entries = (entry.strip() for entry in raw.split(","))
    return frozenset(normalize_model_id(entry) or entry for entry in entries if entry)


def experimental_models(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Synth's experimental set, extended by ``SDK_EXPERIMENTAL_MODELS`` in ``environ`` (the server passes its
    ``Settings.environ``; None: the process environment as it is set right now, as Synth's SDK reads it)."""
    return EXPERIMENTAL_DEFAULT_MODELS | _parse_experimental_env(environ)


# Synth's module constant, computed at import as Synth does; the checks call experimental_models() instead.
EXPERIMENTAL_MODELS: Final[frozenset[str]] = experimental_models()


def experimental_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``SDK_EXPERIMENTAL`` in ``environ`` (None: the process environment) unlocks experimental models
    (Synth accepts exactly ``"1"``)."""
    return (process_environ() if environ is None else environ).get(EXPERIMENTAL_ENV, "0") == "1"


def normalize_model_id(name: object) -> str | None:
    """The canonical registry id for ``name`` (case-insensitive, surrounding spaces ignored), else None."""
    if not isinstance(name, str):
        return None
    return _CANONICAL_BY_LOWER.get(name.strip().lower())


def is_finetuned_id(name: object) -> bool:
    """Whether ``name`` starts with one of Synth's fine-tuned prefixes (``ft:``, ``fft:``, ``qft:``, ``rl:``)."""
    return isinstance(name, str) and name.strip().lower().startswith(FINETUNED_PREFIXES)


def base_of_finetuned(name: object) -> str | None:
    """The base model of a fine-tuned id such as ``ft:Qwen/Qwen3-4B:ftjob-22``, else None.

    Like Synth, every ``:``-separated segment after the prefix is looked up in the registry and the first hit
    wins (canonical casing). Failing that, the general shape ``<prefix><base>:<job id>`` gives ``<base>`` as
    written, so ids minted by the local backend for non-registry bases resolve too. Not a fine-tuned id, or no
    job segment: None.
    """
    if not is_finetuned_id(name):
        return None
    cleaned = str(name).strip()
    segments = cleaned.split(":")
    for segment in segments[1:]:
        canonical = normalize_model_id(segment)
        if canonical:
            return canonical
    without_prefix = cleaned.split(":", 1)[1]
    if ":" not in without_prefix:
        return None
    base, _, job_id = without_prefix.rpartition(":")
    base = base.strip()
    return base if base and job_id.strip() else None


def _registry_base(name: object) -> str | None:
    """Canonical registry id of ``name`` itself, or of the base of a fine-tuned ``name``."""
    canonical = normalize_model_id(name)
    if canonical:
        return canonical
    return normalize_model_id(base_of_finetuned(name))


def is_experimental_model(name: object, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``name`` (or the base of a fine-tuned ``name``) is experimental right now."""
    base = _registry_base(name)
    return base is not None and base in experimental_models(environ)


def is_vision_model(name: object) -> bool:
    """Whether ``name`` (or its fine-tuned base) is one of Synth's Qwen3-VL models."""
    return _registry_base(name) in QWEN3_VL_MODELS


def is_thinking_model(name: object) -> bool:
    """Whether ``name`` (or its fine-tuned base) emits ``<think>`` tags (the ``*-Thinking`` models)."""
    return _registry_base(name) in THINKING_MODELS


def max_images_per_message(name: object) -> int | None:
    """Images Synth keeps per message for ``name``: 1 for Qwen3-VL models, None (not a vision model) otherwise."""
    return VL_MAX_IMAGES_PER_MESSAGE if is_vision_model(name) else None


def training_modes_for_model(name: object) -> tuple[str, ...]:
    """Synth's training modes (sorted, e.g. ``("rl", "sft")``) for a registry model or its fine-tuned id."""
    base = _registry_base(name)
    if base is None:
        return ()
    modes = {"sft"} if base in SFT_SUPPORTED_MODELS else set()
    if base in RL_SUPPORTED_MODELS:
        modes.add("rl")
    return tuple(sorted(modes))


def supported_model_ids(*, training_mode: str | None = None, include_experimental: bool = True) -> list[str]:
    """Registry ids in Synth's order, optionally only those with ``training_mode`` and/or without experimental."""
    experimental = experimental_models()
    return [
        model
        for model in ALL_MODELS
        if (training_mode is None or training_mode in training_modes_for_model(model))
        and (include_experimental or model not in experimental)
    ]


def _unsupported_hint(candidate: str, training_mode: str | None) -> str:
    choices = supported_model_ids(training_mode=training_mode)
    close = difflib.get_close_matches(candidate.lower(), [model.lower() for model in choices], n=1, cutoff=0.75)
    parts: list[str] = []
    if close:
        parts.append(f"Did you mean '{_CANONICAL_BY_LOWER[close[0]]}'?")
    core = supported_model_ids(training_mode=training_mode, include_experimental=False)
    examples = ", ".join(core[:_HINT_MODEL_COUNT])
    parts.append(f"Supported base models include {examples} ({len(choices)} in all, matched case-insensitively).")
    return " ".join(parts)


def _finetuned_hint(candidate: str) -> str:
    base = base_of_finetuned(candidate)
    hint = f"Fine-tuned model ids ({', '.join(FINETUNED_PREFIXES)}) are not accepted here"
    if base:
        hint += f"; use its base model '{base}'"
    return hint + "."


def ensure_allowed_model(
    name: str,
    *,
    allow_finetuned_prefixes: bool = False,
    allow_experimental: bool | None = None,
    training_mode: str | None = "sft",
    environ: Mapping[str, str] | None = None,
) -> str:
    """Synth's ``ensure_allowed_model`` plus its training-mode check; returns the canonical base model id.

    Order, as Synth runs it: empty -> registry lookup (fine-tuned ids resolve to their base only with
    ``allow_finetuned_prefixes``) -> experimental gate (``allow_experimental``, else ``SDK_EXPERIMENTAL=1``) ->
    the model must list ``training_mode`` (skip with None). ``environ``: where ``SDK_EXPERIMENTAL*`` are read
    (the server's ``Settings.environ``; None: the process environment). Raises :class:`ModelNotSupportedError`.
    """
    candidate = (name or "").strip() if isinstance(name, str) else ""
    if not candidate:
        raise ModelNotSupportedError("empty_model", "Model identifier is empty")

    base = normalize_model_id(candidate)
    if base is None and allow_finetuned_prefixes and ":" in candidate:
        base = next(filter(None, (normalize_model_id(part) for part in candidate.split(":")[1:])), None)
    if base is None:
        message = f"Model '{candidate}' is not supported."
        if is_finetuned_id(candidate) and not allow_finetuned_prefixes:
            raise ModelNotSupportedError("finetuned_model_not_allowed", message, _finetuned_hint(candidate))
        raise ModelNotSupportedError("model_not_supported", message, _unsupported_hint(candidate, training_mode))

    allow_exp = experimental_enabled(environ) if allow_experimental is None else allow_experimental
    if base in experimental_models(environ) and not allow_exp:
        raise ModelNotSupportedError(
            "model_experimental",
            f"Model '{base}' is experimental and disabled. Set SDK_EXPERIMENTAL=1 or pass allow_experimental=True.",
        )

    if training_mode and training_mode.lower() not in training_modes_for_model(base):
        allowed = ", ".join(sorted(supported_model_ids(training_mode=training_mode.lower())))
        mode = training_mode.lower()
        raise ModelNotSupportedError(
            "model_training_mode",
            f"Model '{base}' does not support {mode.upper()} workloads (missing training mode '{mode}'). "
            f"Supported model IDs: {allowed}",
        )
    return base
