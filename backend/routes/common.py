"""Helpers every resource router uses: the backend's error type, 404s, the public job record."""

from __future__ import annotations

from learning_mcp.tools.errors import LearningMCPError

MAX_CURSOR = 2**63 - 1  # SQLite INTEGER range
PUBLIC_JOB_KEYS = ("id", "job_id", "object", "status", "fine_tuned_model", "model", "training_type", "training_file_id",
                   "validation_file_id", "hyperparameters", "metadata", "error", "trained_tokens",
                   "created_at", "updated_at", "started_at", "finished_at", "start_requested", "cancel_requested")


class APIError(LearningMCPError):
    """An error a route answers with: ``status``, ``code``, ``message``, ``param`` (learning-api.md §3.9)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(code, message, param=param, status=status)


def not_found(kind: str, ident: str, hint: str) -> APIError:
    return APIError(404, f"{kind}_not_found", f"{kind} {ident!r} not found; {hint}", param=f"{kind}_id")


def public_job(job: dict) -> dict:
    return {key: job[key] for key in PUBLIC_JOB_KEYS}
