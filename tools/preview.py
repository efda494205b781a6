"""``preview_dataset``: the result shape and the client side (the work runs in the backend, which has the tokenizer).

The MCP tool and ``POST /api/learning/datasets/preview`` share these models, so the agent reads exactly what the
backend computed (:mod:`learning_mcp.backend.preview`: the trainer's own rendering and loss spans). Where the file
lives: the embedded backend on this machine reads the path directly; another learning API gets the file uploaded
first (content-addressed, so a later ``create_job`` reuses it). Synth's hosted API has no preview route: the tool
says so and points at the embedded backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .client import LearningClient
from .errors import LearningAPIError, ToolFailure
from .sft_config import build_sft_plan


class PreviewExample(BaseModel):
    """One record as the trainer sees it."""

    line: int = Field(description="1-based line of the record in the file")
    rendered_text: str = Field(description="the conversation rendered through the model's chat template")
    extra_sequences: list[str] = Field(
        default_factory=list,
        description="further sequences trained for this record: templates that re-render earlier assistant turns "
                    "once later turns follow (Qwen3 drops <think>) train those turns in the conversation up to them")
    trained_text: list[str] = Field(description="the assistant spans that get loss, in order, as decoded tokens")
    tokens: int = Field(description="tokens of all the record's sequences before truncation")
    trained_tokens: int = Field(description="tokens that get loss, after truncation")
    truncated: bool = Field(description="a sequence is longer than sequence_length and is cut (the start is kept)")
    dropped: bool = Field(description="no token gets loss after truncation and weights: the trainer skips it")
    span_method: str = Field(description="markers | prefix-diff | per-turn | fallback | full-sequence")
    notes: list[str] = Field(default_factory=list)


class TokenLengths(BaseModel):
    """Sequence lengths in tokens before truncation."""

    min: int = 0
    p50: int = 0
    p90: int = 0
    p95: int = 0
    p99: int = 0
    max: int = 0


class PreviewTotals(BaseModel):
    records: int = Field(description="records scanned")
    complete: bool = Field(description="false when the time budget ended the scan before the end of the file")
    sequences: int = Field(description="training sequences kept (records plus per-turn sequences, minus dropped)")
    truncated: int = Field(description="records with a sequence longer than sequence_length")
    truncated_lines: list[int] = Field(default_factory=list)
    dropped: int = Field(description="records the trainer skips: nothing left to train after truncation/weights")
    dropped_lines: list[int] = Field(default_factory=list)
    tokens: int = Field(description="tokens after truncation of the sequences kept")
    trained_tokens: int = Field(description="tokens that get loss")
    trained_token_share: float = Field(description="trained_tokens / tokens")
    token_lengths: TokenLengths
    span_methods: dict[str, int] = Field(description="records per span method")
    fallback_lines: list[int] = Field(default_factory=list,
                                      description="records trained on the whole sequence: spans not found")


class DatasetPreview(BaseModel):
    """``preview_dataset``'s result."""

    model: str
    path: str
    sequence_length: int = Field(description="the max_length the trainer truncates at")
    assistant_only_loss: bool
    chat_template_markers: bool = Field(description="the template has {% generation %} markers (used when true)")
    examples: list[PreviewExample]
    totals: PreviewTotals
    warnings: list[str] = Field(default_factory=list)




class PreviewRequest(BaseModel):
    """The body of ``POST /api/learning/datasets/preview``: the dataset by ``path`` (on the backend's machine) or by
    ``file_id`` (an uploaded file), the model, and the job's hyperparameters."""

    model: str = Field(description="a base model id, local model path or ft: id")
    path: str | None = Field(None, description="a JSONL file on the backend's machine")
    file_id: str | None = Field(None, description="an uploaded file's id (instead of path)")
    examples: int = Field(3, ge=0, le=50, description="records shown in full")
    sequence_length: int | None = Field(None, ge=8, description="tokens per sequence (default: the trainer's)")
    hyperparameters: dict[str, Any] | None = Field(None, description="the job's hyperparameters")


async def preview(api: LearningClient, path: str, model: str | None, *, examples: int = 3,
                  sequence_length: int | None = None, config: str | None = None,
                  environ: Any = None) -> DatasetPreview:
    """Ask the learning API to render ``path`` as a job would train on it. ``config``: an SFT TOML (path or text)
    whose ``[job].model`` and hyperparameters are used (``model`` wins). Raises :class:`ToolFailure`."""
    if api.target.is_synth:
        raise ToolFailure("unsupported_on_synth", "Synth's hosted API has no dataset preview; run this server without "
                                                  "SYNTH_API_KEY (the embedded backend renders with the model's own "
                                                  "tokenizer) or call validate_dataset for the structural checks")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ToolFailure("file_not_found", f"dataset file not found: {path}; pass the path of a local .jsonl file")
    hyperparameters: dict[str, Any] | None = None
    if config is not None:
        plan = build_sft_plan(config, model=model, target="local", require_dataset_path=False,
                              environ=environ)
        hyperparameters = dict(plan.payload.get("hyperparameters") or {})
        model = model or plan.payload.get("model")
    if not model:
        raise ToolFailure("missing_model", "pass model (a base model id, local path or ft: id) or a config with "
                                           "[job].model")
    body = PreviewRequest(model=model, examples=examples, sequence_length=sequence_length,
                          hyperparameters=hyperparameters)
    if api.target.kind == "local":
        body.path = str(file.resolve())
    else:
        body.file_id = (await api.upload_file(file)).get("id")
    try:
        data = await api.preview_dataset(body.model_dump(exclude_none=True))
    except LearningAPIError as exc:
        if exc.status in (404, 405) and exc.code in (None, "not_found", "http_404", "http_405"):
            raise ToolFailure("unsupported_by_api", "this learning API has no dataset preview route; use the "
                                                    "embedded backend (start the server without a backend URL)") from None
        raise
    return DatasetPreview.model_validate(data)
