# The learning-mcp MCP server: agent tools for fine-tuning over Synth's learning API.
#
# Shape (after the mcp 2.3 reference servers): a `create_server()` factory with no import-time side effects,
# shared annotation constants, pydantic result models (outputSchema + structuredContent, with a one-line
# summary in front of the JSON text), and a `ToolError` for every expected failure, carrying a stable code and
# what to call next. The tool logic itself lives in `learning_mcp.tools` (one module per concept); this file
# only registers it.
#
# Long work never holds a call open: create_job returns a job_id at once, get_job_status reads it (with an
# optional bounded wait ≤ 50 s), run_sft_loop returns a loop_id. Cancelling a call cancels only its wait.
#
# The learning API: Synth's hosted API when SYNTH_API_KEY (or a backend URL) is configured; otherwise the
# embedded backend, started detached on first use so jobs outlive this process. torch is never imported here.

from __future__ import annotations

import json
import logging
import sys
from contextlib import asynccontextmanager
from typing import Annotated, AsyncIterator, Literal

import anyio
from anyio.abc import TaskGroup
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.types import CallToolResult
from pydantic import Field

from learning_mcp import __version__
from learning_mcp.backend.launcher import BackendStartError, ensure_backend
from learning_mcp.server.common import (CANCELS, READ_ONLY_LOCAL, READ_ONLY_REMOTE, STARTS_WORK, UPLOADS, _progress,
                                        harden_tool_calls, reject_unknown_tools, result,
                                        state_of, tool_errors)
from learning_mcp.server.export_tools import register_export_tools
from learning_mcp.server.loop_tools import register_loop_tools
from learning_mcp.server.models import (CancelResult, CreateJobResult, DatasetIssueModel, DiagnoseResult, JobEvent,
                                        JobListResult, JobProgress, JobStatusResult, JobSummary, UploadResult,
                                        ValidationResult)
from learning_mcp.tools import jobs as job_ops
from learning_mcp.tools import charts, models_registry
from learning_mcp.tools import preview as preview_ops
from learning_mcp.tools.client import TERMINAL_STATUSES, LearningAPIError, LearningClient
from learning_mcp.tools.config_source import CONFIG_ARG_HELP
from learning_mcp.tools.errors import ToolFailure, api_failure
from learning_mcp.tools.loop import LOOP_EXAMPLE_TOML, TASKS_FORMAT_DOC
from learning_mcp.tools.loop_manager import attach_loops
from learning_mcp.tools.preview import DatasetPreview
from learning_mcp.tools.settings import Settings, Target
from learning_mcp.tools.sft_config import CONFIG_SCHEMA_DOC, EXAMPLE_TOML

log = logging.getLogger("learning_mcp.server")

INSTRUCTIONS = """\
Fine-tune language models with supervised fine-tuning (SFT) and ReST-EM self-training.

Flow: validate_dataset(path) -> preview_dataset(path, model) (what the model will really be trained on) ->
upload_file(path) -> create_job(config, training_file_id=...) ->
poll get_job_status(job_id, since_seq=<next_since_seq>, wait_seconds=30) until terminal -> use
fine_tuned_model as a model id. create_job can also take dataset=<path> and do the validate+upload itself.
Self-training: run_sft_loop(...) returns a loop_id; poll get_loop_status(loop_id).
Handles (job_id, loop_id) live on the learning backend / on disk and survive restarts of this server; never
re-send create_job or run_sft_loop while the previous one is still running. The config resource
learning://config/example shows a ready-to-edit SFT TOML.
"""


# --------------------------------------------------------------------------------------------------------
# server state
# --------------------------------------------------------------------------------------------------------
class AppState:
    """Per-server state: the resolved target and a lazily created client. The embedded backend is started on
    first use, not at start-up, so listing tools spawns nothing — unless a loop was left running, which the
    server resumes at start-up (see ``tools/loop_manager.py``)."""

    def __init__(self, settings: Settings, tg: TaskGroup):
        self.settings = settings
        self.data_dir = settings.resolved_data_dir()
        self.target: Target | None = settings.target()
        self.tg = tg
        self._client: LearningClient | None = None
        self._lock = anyio.Lock()
        self._reresolve_lock = anyio.Lock()
        self._last_reresolve = float("-inf")
        self.loops = None  # set at start-up by learning_mcp.tools.loop_manager.attach_loops
        self.evals = None  # idem

    async def client(self) -> LearningClient:
        async with self._lock:
            if self._client is None:
                target = self.target
                if target is None:
                    target = await self._start_embedded_backend()
                    self.target = target
                embedded = self.settings.target() is None
                self._client = LearningClient(target, extra_headers=self.settings.identity_headers,
                                              reresolve=self._reresolve_embedded if embedded else None)
            return self._client

    async def _reresolve_embedded(self) -> Target | None:
        """The embedded backend stopped answering: find it again, or restart it detached (``ensure_backend``
        does either, under its file lock, so concurrent callers start one backend). Logged on stderr. Within
        10 s of the last attempt the current target is returned as is: one restart per outage, not one per
        request."""
        async with self._reresolve_lock:
            now = anyio.current_time()
            if now - self._last_reresolve < 10.0:
                return None
            self._last_reresolve = now
            old = self.target.api_base if self.target else "?"
            try:
                target = await self._start_embedded_backend()
            except ToolFailure as exc:
                log.error("the embedded backend at %s is gone and could not be restarted: %s", old, exc.message)
                return None
            log.warning("the embedded backend at %s did not answer; now using %s", old, target.api_base)
            self.target = target
            return target

    async def _start_embedded_backend(self) -> Target:
        try:
            info = await anyio.to_thread.run_sync(lambda: ensure_backend(self.data_dir, environ=self.settings.environ))
        except BackendStartError as exc:
            if exc.missing_training_stack:  # the log shows an ImportError: the training extra is missing
                fix = ("Install the training extra in the learning-mcp checkout (pip install -e '.[train]'), or set "
                       "SYNTH_API_KEY to use Synth's hosted API.")
            elif exc.reason:
                fix = ("Fix what the backend's error says (a LEARNING_MCP_* setting in the environment or the "
                       "--env-file), restart learning-mcp, then call diagnose; or set SYNTH_API_KEY to use Synth's "
                       "hosted API.")
            else:
                fix = ("Read the log named above, fix what it says, restart learning-mcp and call diagnose; or set "
                       "SYNTH_API_KEY to use Synth's hosted API.")
            raise ToolFailure("backend_start_failed",
                              f"could not start the embedded learning backend: {exc}. {fix}") from None
        return Target(f"{info.url}/api", "local", self.settings.local_key)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


@asynccontextmanager
async def app_state(settings: Settings, *, attach=attach_loops) -> AsyncIterator[AppState]:
    """An :class:`AppState` with its task group, for the server's lifespan and the CLI (learning_mcp/commands.py);
    ``attach(state)`` adds the loop and eval managers (the server's also resumes unfinished loops)."""
    async with anyio.create_task_group() as tg:
        state = AppState(settings, tg)
        await attach(state)
        try:
            yield state
        finally:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await state.aclose()


def status_next_step(status: str, fine_tuned_model: str | None, job_id: str) -> str:
    if status == "succeeded":
        return (f"Done. Use fine_tuned_model {fine_tuned_model!r} as a model id (chat with it, evaluate it, or pass "
                "it as model to run_sft_loop).")
    if status == "failed":
        return "The job failed: read error and the last events, fix the config or dataset, then call create_job again."
    if status == "cancelled":
        return "The job was cancelled. Call create_job to start a new one."
    return (f"Still {status}. Call get_job_status(job_id={job_id!r}, since_seq=<next_since_seq>, wait_seconds=30) "
            "again; do not create another job.")


# --------------------------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------------------------
def create_server(settings: Settings | None = None) -> MCPServer:
    """The MCP server. ``settings``: built once at start-up (``learning-mcp`` builds it from its flags, env files
    and the environment); None: :meth:`Settings.load` with no env file."""
    settings = settings or Settings.load()

    @asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[AppState]:
        async with app_state(settings) as state:
            yield state

    server = MCPServer("learning-mcp", title="learning-mcp: fine-tuning tools", version=__version__,
                       instructions=INSTRUCTIONS, lifespan=lifespan, subscriptions=False)
    reject_unknown_tools(server)
    harden_tool_calls(server)

    # -- validate_dataset ------------------------------------------------------------------------------
    @server.tool(title="Validate an SFT dataset", annotations=READ_ONLY_LOCAL)
    def validate_dataset(
        path: Annotated[str, Field(description="Path to a .jsonl file on this machine (absolute is safest)")],
        min_messages: Annotated[int, Field(ge=1, le=100, description="minimum messages per record (Synth docs: 2; "
                                                                     "Synth's CLI: 1)")] = 2,
        max_errors: Annotated[int, Field(ge=1, le=500, description="errors to list (all are counted)")] = 20,
        examples: Annotated[int | None, Field(ge=1, description="check only the first N records")] = None,
    ) -> Annotated[CallToolResult, ValidationResult]:
        """Check an SFT JSONL file (OpenAI chat `messages[]` format, tools, images) before anything is uploaded.

        Read-only, local, fast (one streaming pass). Each line must be {"messages": [...], "tools"?: [...]} with
        at least one assistant message. Errors carry a line number and a stable code; Synth's own rules use
        Synth's messages. An invalid file is a normal result with ok=false, not a tool error.
        Next: fix the listed lines, or call upload_file(path) / create_job(config, dataset=path) when ok.
        """
        with tool_errors("validating the dataset"):
            report = job_ops.validate_dataset_file(path, min_messages=min_messages, max_errors=max_errors,
                                                   examples=examples)
        next_step = (f"Dataset is valid. Call upload_file(path={report.path!r}) or "
                     f"create_job(config=..., dataset={report.path!r})." if report.ok else
                     "Fix the listed lines (line numbers are 1-based) and validate again; nothing was uploaded.")
        model = ValidationResult(ok=report.ok, path=report.path, examples=report.examples,
                                 errors=[DatasetIssueModel(**e) for e in report.errors], error_total=report.error_total,
                                 error_counts=report.error_counts, warnings=report.warnings, stats=report.stats,
                                 next_step=next_step)
        return result(model, report.summary())

    # -- preview_dataset -------------------------------------------------------------------------------
    @server.tool(title="Preview what a job would train on", annotations=READ_ONLY_REMOTE)
    async def preview_dataset(
        ctx: Context,
        path: Annotated[str, Field(description="Path to the .jsonl dataset on this machine")],
        model: Annotated[str | None, Field(description="the model to train (base id, local path or ft: id); "
                                                       "default: [job].model of config")] = None,
        examples: Annotated[int, Field(ge=0, le=50, description="records shown in full (the first ones)")] = 3,
        sequence_length: Annotated[int | None, Field(ge=8, description="tokens per sequence (default: config's, "
                                                                       "else the trainer's 1024 clamped to the "
                                                                       "model's context)")] = None,
        config: Annotated[str | None, Field(description=f"the job's SFT config ({CONFIG_ARG_HELP}); its "
                                                        "hyperparameters (sequence_length, assistant_only_loss) and "
                                                        "[job].model apply")] = None,
    ) -> Annotated[CallToolResult, DatasetPreview]:
        """Render a dataset through the model's real chat template (and processor, for vision-language models)
        exactly as the trainer will, and show what gets loss — before spending money on a job.

        Per example: rendered_text (the whole sequence), trained_text (the assistant spans that get loss, in
        order — check that tool-call arguments read as objects, that the end-of-turn token is included and that
        no user/system/tool text is there), tokens, trained_tokens, truncated, dropped, span_method. Totals over
        the whole file: records truncated or dropped at sequence_length, token-length percentiles, trained-token
        share, warnings. Read-only; runs on the embedded backend (it loads the tokenizer), not on Synth's API.
        Next: fix the data or sequence_length, then upload_file(path) / create_job(config, dataset=path).
        """
        with tool_errors("previewing the dataset"):
            api = await state_of(ctx).client()
            out = await preview_ops.preview(api, path, model, examples=examples, sequence_length=sequence_length,
                                            config=config, environ=state_of(ctx).settings.environ)
        t = out.totals
        summary = (f"{t.records} record(s) on {out.model} at sequence_length {out.sequence_length}: "
                   f"{t.trained_tokens}/{t.tokens} tokens trained ({t.trained_token_share:.0%}), "
                   f"{t.truncated} truncated, {t.dropped} dropped"
                   + ("" if t.complete else " (partial scan: time budget)"))
        return result(out, summary)

    # -- upload_file -----------------------------------------------------------------------------------
    @server.tool(title="Upload a dataset", annotations=UPLOADS)
    async def upload_file(
        ctx: Context,
        path: Annotated[str, Field(description="Path to the .jsonl dataset on this machine")],
        purpose: Annotated[str, Field(description="'fine-tune' (training and validation files alike)")] = "fine-tune",
        examples: Annotated[int | None, Field(ge=1, description="upload only the first N records")] = None,
        validate: Annotated[bool, Field(description="validate first and refuse an invalid file")] = True,
    ) -> Annotated[CallToolResult, UploadResult]:
        """Stream a dataset file to the learning API and wait (≤ 10 s) until it is ready; returns its file_id.

        Validates first (like validate_dataset) and refuses an invalid file with its errors. Reports byte
        progress. The same bytes uploaded twice give the same file_id on the embedded backend.
        Next: create_job(config=..., training_file_id=<file_id>).
        """
        with tool_errors("uploading the dataset"):
            api = await state_of(ctx).client()
            up = await job_ops.upload_dataset(api, path, purpose=purpose, examples=examples, validate=validate,
                                              progress=lambda d, t, m: _progress(ctx, d, t, m))
        model = UploadResult(file_id=up.file_id, filename=up.filename, bytes=up.bytes, sha256=up.sha256,
                             status=up.status, purpose=up.purpose, examples=up.examples, warnings=up.warnings,
                             next_step=f"Call create_job(config=<TOML path or text>, training_file_id={up.file_id!r}).")
        return result(model, f"uploaded {up.filename} ({up.bytes} bytes) as {up.file_id}, status {up.status}")

    # -- create_job ------------------------------------------------------------------------------------
    @server.tool(title="Create and start a fine-tuning job", annotations=STARTS_WORK)
    async def create_job(
        ctx: Context,
        config: Annotated[str, Field(description=f"SFT config: {CONFIG_ARG_HELP} (see resource "
                                                 "learning://config/example)")],
        dataset: Annotated[str | None, Field(description="local JSONL path: validated and uploaded in this call")] = None,
        training_file_id: Annotated[str | None, Field(description="file_id from upload_file (instead of dataset)")] = None,
        validation_file_id: Annotated[str | None, Field(description="file_id of a validation set")] = None,
        model: Annotated[str | None, Field(description="override [job].model (a base model id, local path, or "
                                                       "ft: id on the embedded backend)")] = None,
        start: Annotated[bool, Field(description="start the job right after creating it")] = True,
        dry_run: Annotated[bool, Field(description="validate config and dataset, return the payload, upload and "
                                                   "create nothing")] = False,
    ) -> Annotated[CallToolResult, CreateJobResult]:
        """Build the job payload from an SFT TOML exactly as Synth's CLI does, create the job and start it.

        Creates billable training work on Synth's hosted API (free and local on the embedded backend); not
        idempotent: call it once per job. Returns at once with a job_id and the exact payload sent; settings
        Synth's CLI would silently drop are forwarded or listed in warnings. Training continues in the
        background. Next: poll get_job_status(job_id, wait_seconds=30) until terminal.
        """
        with tool_errors("creating the job"):
            api = await state_of(ctx).client()
            out = await job_ops.create_job_from_config(
                api, config, dataset=dataset, training_file_id=training_file_id,
                validation_file_id=validation_file_id, model=model, start=start, dry_run=dry_run,
                progress=lambda d, t, m: _progress(ctx, d, t, m), environ=state_of(ctx).settings.environ)
        if out.dry_run:
            next_step = "Dry run only: nothing was uploaded or created. Call create_job again without dry_run."
            summary = f"dry run: payload for {out.model} built and datasets valid"
        elif out.started:
            next_step = f"Poll get_job_status(job_id={out.job_id!r}, wait_seconds=30) until terminal is true."
            summary = f"created and started job {out.job_id} ({out.model}), status {out.status}"
        else:
            next_step = (f"The job exists but did not start ({out.start_error or 'start=False'}); "
                         f"call get_job_status(job_id={out.job_id!r}) to check it.")
            summary = f"created job {out.job_id} ({out.model}), not started"
        if out.ignored_keys:
            summary += (f"; {len(out.ignored_keys)} config key(s) ignored: {', '.join(out.ignored_keys[:5])}"
                        f"{' …' if len(out.ignored_keys) > 5 else ''} (see warnings)")
        model_out = CreateJobResult(job_id=out.job_id, status=out.status, started=out.started,
                                    start_error=out.start_error, model=out.model,
                                    training_file_id=out.training_file_id, validation_file_id=out.validation_file_id,
                                    payload=out.payload, warnings=out.warnings, dropped_keys=out.dropped_keys,
                                    ignored_keys=out.ignored_keys,
                                    dry_run=out.dry_run, next_step=next_step)
        return result(model_out, summary)

    # -- get_job_status --------------------------------------------------------------------------------
    @server.tool(title="Get a job's status", annotations=READ_ONLY_REMOTE)
    async def get_job_status(
        ctx: Context,
        job_id: Annotated[str, Field(description="job_id returned by create_job")],
        since_seq: Annotated[int, Field(ge=0, description="only events after this seq (use next_since_seq)")] = 0,
        wait_seconds: Annotated[float, Field(ge=0, le=50, description="wait up to this long for a change")] = 0,
        chart: Annotated[bool, Field(description="also return the train/validation loss curves as a PNG image "
                                                 "(kept at <data dir>/jobs/<job_id>/loss.png)")] = False,
    ) -> Annotated[CallToolResult, JobStatusResult]:
        """Status, progress (step/total/epoch/loss), latest metrics, new events and, when done, fine_tuned_model.

        Read-only. With wait_seconds > 0 it returns as soon as the status changes or new events arrive (at most
        50 s). terminal=true means the job is finished (succeeded / failed / cancelled); on failure read error
        and failure_kind. Job ids stay valid for as long as the backend keeps its data.
        """
        with tool_errors(f"reading job {job_id}"):
            api = await state_of(ctx).client()
            snap = await job_ops.job_status(api, job_id, since_seq=since_seq, wait_seconds=wait_seconds)
        rec = snap.record
        status = rec.status
        ftm = job_ops.fine_tuned_model_of(rec, snap.events)
        if status == "succeeded" and not ftm:
            with tool_errors(f"reading job {job_id}"):
                ftm = job_ops.fine_tuned_model_of(rec, await api.events(job_id, since_seq=0, limit=1000))
        progress = JobProgress(**{k: v for k, v in (snap.progress or {}).items() if k in JobProgress.model_fields}) \
            if snap.progress else None
        model = JobStatusResult(
            job_id=job_id, status=status, terminal=status in TERMINAL_STATUSES, fine_tuned_model=ftm,
            model=rec.model, progress=progress, latest_metrics=snap.latest_metrics,
            events=[JobEvent(**job_ops.compact_event(e)) for e in snap.events], next_since_seq=snap.next_since_seq,
            more_events=snap.more_events,
            error=job_ops.error_dict(rec.error) if status == "failed" or status == "cancelled" else None,
            failure_kind=job_ops.failure_kind(status, rec.error),
            next_poll_seconds=job_ops.next_poll_seconds(status), created_at=job_ops.time_text(rec.created_at),
            finished_at=job_ops.time_text(rec.finished_at), next_step=status_next_step(status, ftm, job_id))
        bits = [f"job {job_id}: {status}"]
        if progress and progress.step is not None:
            bits.append(f"step {progress.step}/{progress.total_steps}" + (f", loss {progress.loss:.4g}"
                                                                          if progress.loss is not None else ""))
        if ftm:
            bits.append(f"fine_tuned_model {ftm}")
        if status == "failed" and rec.error:
            message = rec.error.get("message") if isinstance(rec.error, dict) else rec.error
            bits.append(f"error: {' '.join(str(message).split())}")  # the summary stays one line
        if not chart:
            return result(model, "; ".join(bits))

        with tool_errors(f"charting job {job_id}"):
            path = charts.job_chart_path(state_of(ctx).data_dir, job_id)
            png = await charts.job_loss_chart(api, job_id, out_path=path)
        return result(model, "; ".join(bits + [f"loss chart {path}"]), image=png)

    # -- cancel_job / list_jobs ------------------------------------------------------------------------
    @server.tool(title="Cancel a job", annotations=CANCELS)
    async def cancel_job(
        ctx: Context,
        job_id: Annotated[str, Field(description="job_id returned by create_job")],
    ) -> Annotated[CallToolResult, CancelResult]:
        """Cancel a queued or running job (training stops within seconds). Safe to call twice; a finished job is
        left as it is. Destructive: the job's training is lost."""
        with tool_errors(f"cancelling job {job_id}"):
            api = await state_of(ctx).client()
            try:
                record = await api.cancel_job(job_id)
            except LearningAPIError as exc:
                if exc.status == 404:
                    raise ToolFailure("unknown_job", f"Unknown job_id {job_id!r}; call list_jobs to see jobs") from None
                raise
            status = record.get("status") or (await api.job(job_id)).status
        message = record.get("message") or f"cancel requested; status {status}"
        model = CancelResult(job_id=job_id, status=status, terminal=status in TERMINAL_STATUSES, message=message)
        return result(model, f"job {job_id}: {message}")

    @server.tool(title="List jobs", annotations=READ_ONLY_REMOTE)
    async def list_jobs(
        ctx: Context,
        status: Annotated[Literal["queued", "validating_files", "running", "succeeded", "failed", "cancelled"] | None,
                          Field(description="only jobs in this status")] = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 20,
    ) -> Annotated[CallToolResult, JobListResult]:
        """Recent jobs on the learning API, newest first, with their status and fine_tuned_model. Read-only."""
        with tool_errors("listing jobs"):
            api = await state_of(ctx).client()
            jobs = await api.jobs(status=status, limit=limit)
        model = JobListResult(backend=api.target.describe(), jobs=[
            JobSummary(job_id=j.id or "?", status=j.status if j.status != "unknown" else "?", model=j.model,
                       fine_tuned_model=j.fine_tuned_model, created_at=job_ops.time_text(j.created_at),
                       finished_at=job_ops.time_text(j.finished_at)) for j in jobs])
        return result(model, f"{len(model.jobs)} job(s) on {api.target.describe()}")

    # -- diagnose --------------------------------------------------------------------------------------
    @server.tool(title="Diagnose the setup", annotations=READ_ONLY_REMOTE)
    async def diagnose(ctx: Context) -> Annotated[CallToolResult, DiagnoseResult]:
        """Which learning API this server uses (Synth or the embedded backend), whether a key is set (never the
        key itself) and whether the API answers. Works even when nothing else does."""
        state = state_of(ctx)
        reachable, detail = False, ""
        try:
            api = await state.client()
            health = await api.health()
            reachable, detail = True, f"health: {health.get('status', 'ok')}"
        except LearningAPIError as exc:  # before LearningMCPError, its base type
            detail = str(api_failure(exc, action="health check"))
        except ToolFailure as exc:
            detail = exc.message
        target = state.target
        model = DiagnoseResult(backend=target.kind if target else "local", api_base=target.api_base if target else "",
                               key_set=bool(target and target.api_key), reachable=reachable, detail=detail,
                               version=__version__, data_dir=str(state.data_dir))
        return result(model, f"{model.backend} learning API at {model.api_base or '?'}: "
                             f"{'reachable' if reachable else 'NOT reachable'} ({detail})")

    register_resources(server, settings)
    register_loop_tools(server)
    register_export_tools(server)
    return server


def register_resources(server: MCPServer, settings: Settings) -> None:
    @server.resource("learning://config/example", name="example-sft-config", mime_type="text/markdown",
                     description="An SFT TOML config to copy, and the accepted sections and keys")
    def example_config() -> str:
        return f"# Example SFT config\n\n```toml\n{EXAMPLE_TOML}\n```\n\n{CONFIG_SCHEMA_DOC}"

    @server.resource("learning://config/loop-example", name="example-loop-config", mime_type="text/markdown",
                     description="A ReST-EM loop TOML for run_sft_loop, and the task-file format")
    def example_loop_config() -> str:
        return f"# Example loop config\n\n```toml\n{LOOP_EXAMPLE_TOML}```\n\n{TASKS_FORMAT_DOC}"

    @server.resource("learning://models/synth", name="synth-models", mime_type="application/json",
                     description="Base models Synth's hosted API accepts for SFT (the embedded backend accepts any "
                                 "local path or Hugging Face id it can load)")
    def synth_models() -> str:
        return json.dumps({"sft_supported": sorted(models_registry.SFT_SUPPORTED_MODELS),
                           "experimental": sorted(models_registry.experimental_models(settings.environ))}, indent=1)

    @server.resource("learning://jobs/{job_id}", name="job", mime_type="application/json",
                     description="A job's full record on the learning API")
    async def job_resource(job_id: str, ctx: Context) -> str:
        try:
            api = await state_of(ctx).client()
            return json.dumps(await api.get_job(job_id), indent=1, default=str)
        except (ToolFailure, LearningAPIError) as exc:
            raise ResourceError(f"cannot read job {job_id}: {exc}") from None


def run_server(settings: Settings, *, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8000) -> int:
    """Entry point used by ``learning-mcp`` (which builds ``settings``): fail fast on bad configuration, then
    serve."""
    if transport == "http" and host not in {"127.0.0.1", "localhost", "::1"}:
        sys.stderr.write(f"Error: refusing to serve MCP over HTTP on {host}: the tools read local files and start "
                         "training; serve on 127.0.0.1 and put an authenticating proxy in front for remote use\n")
        return 2
    server = create_server(settings)
    if transport == "http":
        server.run("streamable-http", host=host, port=port)
    else:
        server.run()
    return 0
