"""Typed records of the learning API: :class:`Job`, :class:`File`, :class:`Event`, :class:`Model`.

The API's records come in several spellings (Synth's hosted API, OpenAI-style records, the embedded backend):
``id``/``job_id``/``file_id``, ``model``/``model_id``, ``status``/``state``/``storage_state``, ``type``/
``event_type``, ``data``/``models``/``items`` envelopes. Each alias is resolved here, once, when a record is read
(``Job.of(raw)``); callers read one field name. Unknown fields are kept (``extra="allow"``) so a record can be
shown whole (``raw()``). Statuses are normalised (``canceled`` → ``cancelled``, ``completed`` → ``succeeded``,
``error`` → ``failed`` for jobs; lower case for files).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

STATUS_ALIASES = {"canceled": "cancelled", "completed": "succeeded", "error": "failed"}


def normalize_status(status: str | None) -> str:
    """A job status in the contract's spelling (``canceled`` → ``cancelled`` …), lower case."""
    status = (status or "").lower()
    return STATUS_ALIASES.get(status, status)


def _first(raw: Mapping[str, Any], *keys: str) -> Any:
    return next((raw[k] for k in keys if raw.get(k) not in (None, "")), None)


class _Record(BaseModel):
    """A record of the API: ``ALIASES`` maps each field to the wire names it may come as (first non-empty wins);
    ``_normalise`` fixes up values after that."""

    model_config = ConfigDict(extra="allow", frozen=False)
    ALIASES: ClassVar[dict[str, tuple[str, ...]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping):
            return raw
        raw = dict(raw)
        for name, wire_names in cls.ALIASES.items():
            value = _first(raw, *wire_names)
            for wire in wire_names:
                raw.pop(wire, None)
            raw[name] = value
        return cls._normalise(raw)

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return raw

    @classmethod
    def of(cls, raw: Mapping[str, Any]):
        """The record of a wire dict (aliases resolved)."""
        return cls.model_validate(dict(raw))

    def raw(self) -> dict[str, Any]:
        """Every field, the unknown ones included (for showing the whole record)."""
        return self.model_dump(mode="json")


class Job(_Record):
    """A fine-tuning job (learning-api.md §3.3): ``id`` from ``id``/``job_id``, ``model`` from ``model``/
    ``model_id``, ``status`` normalised from ``status``/``state``."""

    ALIASES = {"id": ("job_id", "id"), "model": ("model", "model_id"), "status": ("status", "state")}
    id: str | None = None
    status: str = "unknown"
    model: str | None = None
    fine_tuned_model: str | None = None
    error: dict[str, Any] | str | None = None
    created_at: Any = None
    finished_at: Any = None
    latest_metrics: dict[str, Any] | None = None

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        raw["status"] = normalize_status(raw["status"]) or "unknown"
        return raw


class File(_Record):
    """An uploaded file: ``id`` from ``id``/``file_id``, ``status`` (lower case) from ``status``/``state``/
    ``storage_state``."""

    ALIASES = {"id": ("id", "file_id"), "status": ("status", "state", "storage_state")}
    id: str | None = None
    status: str = "unknown"
    filename: str | None = None
    bytes: int | None = None
    purpose: str | None = None

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        raw["status"] = str(raw["status"] or "unknown").lower()
        return raw


class Event(_Record):
    """A job event: ``type`` from ``type``/``event_type``; ``seq`` an int (0 when missing)."""

    ALIASES = {"type": ("type", "event_type")}
    seq: int = 0
    type: str | None = None
    level: str = "info"
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: Any = None

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        raw["seq"] = int(raw.get("seq") or 0)
        raw["level"] = raw.get("level") or "info"
        raw["message"] = str(raw.get("message") or "")
        raw["data"] = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        return raw


class Model(_Record):
    """A model the learning API serves or can train: ``id`` from ``id``/``model``/``name``."""

    ALIASES = {"id": ("id", "model", "name")}
    id: str | None = None
