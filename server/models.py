"""Pydantic result models of the MCP tools: each is a tool's ``outputSchema`` and ``structuredContent``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

JobState = Literal["queued", "validating_files", "running", "succeeded", "failed", "cancelled"]


class DatasetIssueModel(BaseModel):
    line: int = Field(description="1-based line number in the file (0 for file-level problems)")
    code: str = Field(description="stable error code, e.g. invalid_json, no_assistant_message")
    message: str


class ValidationResult(BaseModel):
    ok: bool = Field(description="True when the file has no errors (warnings are allowed)")
    path: str
    examples: int = Field(description="records checked")
    errors: list[DatasetIssueModel] = Field(description="the first max_errors errors, in file order")
    error_total: int = Field(description="all errors found (errors may be capped)")
    error_counts: dict[str, int]
    warnings: list[str]
    stats: dict[str, Any] = Field(description="messages/tokens per example (min/mean/p95/max), images, tool calls, …")
    next_step: str


class UploadResult(BaseModel):
    file_id: str = Field(description="pass this as training_file_id to create_job")
    filename: str
    bytes: int
    sha256: str | None
    status: str = Field(description="ready | processing (job creation re-validates a processing file)")
    purpose: str
    examples: int | None = None
    warnings: list[str] = []
    next_step: str


class CreateJobResult(BaseModel):
    job_id: str | None = Field(description="the handle to poll with get_job_status (None for dry_run)")
    status: str
    started: bool = Field(description="True once POST …/start succeeded")
    start_error: str | None = None
    model: str
    training_file_id: str | None
    validation_file_id: str | None
    payload: dict[str, Any] = Field(description="exactly the JSON body create_job sent to the learning API (POST /learning/jobs)")
    warnings: list[str]
    dropped_keys: list[str] = Field(description="TOML keys Synth's own CLI would drop (we forward or report them)")
    ignored_keys: list[str] = Field(default_factory=list, description="the dropped keys that reach no payload at "
                                    "all (often a typo: warnings suggest the key meant)")
    dry_run: bool = False
    next_step: str


class JobEvent(BaseModel):
    seq: int
    type: str | None
    level: str
    message: str
    data: dict[str, Any] = {}
    created_at: str | None = None


class JobProgress(BaseModel):
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None


class JobStatusResult(BaseModel):
    job_id: str
    status: JobState | str
    terminal: bool = Field(description="True when the job will not change any more")
    fine_tuned_model: str | None = Field(None, description="set when status is succeeded: use it as a model id")
    model: str | None = None
    progress: JobProgress | None = None
    latest_metrics: dict[str, Any] = Field(default_factory=dict, description="last value of train.loss, val.loss, …")
    events: list[JobEvent] = Field(description="new events after since_seq (at most 30 per call)")
    next_since_seq: int = Field(description="pass as since_seq next time to get only newer events")
    more_events: bool = False
    error: dict[str, Any] | None = None
    failure_kind: str | None = Field(None, description="validation | training | cancelled | infrastructure")
    next_poll_seconds: float | None = Field(None, description="when to call again; None once terminal")
    created_at: str | None = None
    finished_at: str | None = None
    next_step: str


class JobSummary(BaseModel):
    job_id: str
    status: str
    model: str | None = None
    fine_tuned_model: str | None = None
    created_at: str | None = None
    finished_at: str | None = None


class JobListResult(BaseModel):
    jobs: list[JobSummary]
    backend: str


class CancelResult(BaseModel):
    job_id: str
    status: str
    terminal: bool
    message: str


class DiagnoseResult(BaseModel):
    backend: str = Field(description="synth | local | custom")
    api_base: str
    key_set: bool
    reachable: bool
    detail: str
    version: str
    data_dir: str
