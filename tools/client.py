"""Async client for Synth's learning API (``learning-api.md`` §2–3), used against Synth and the embedded backend.

Design:

* **One request path** (:meth:`LearningClient._request`): every call goes through it, so auth headers,
  timeouts, retries and error shaping are the same everywhere.
* **Retries** by the one HTTP layer (:mod:`learning_mcp.tools.http`: tenacity, exponential backoff with full
  jitter, ``Retry-After`` honoured) on connection errors, 408, 429 and 5xx — only for calls that are safe to repeat: reads, ``start``/``cancel`` (idempotent by contract),
  uploads (content-addressed on our backend; a duplicate file elsewhere is harmless) and job creation, which
  always carries an ``Idempotency-Key`` so a retried create cannot make a second job.
* **Errors** are :class:`LearningAPIError` carrying the status, method, path and the server's ``detail``
  (Synth clients read ``detail``, then ``message``, then ``error``). The API key never appears in them.
* **Uploads stream from disk** (httpx reads the file in chunks), so memory does not grow with file size; the
  documented path ``/learning/files`` is tried first and ``/files`` on 404/405 (decision §9.1).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import quote

import anyio
import httpx

from learning_mcp.tools.errors import LearningAPIError, LearningMCPError
from learning_mcp.tools.http import RetryPolicy, retry_after_s, retryable_status
from learning_mcp.tools.records import STATUS_ALIASES as STATUS_ALIASES  # re-exported (Synth spellings)
from learning_mcp.tools.records import Event, File, Job, Model, normalize_status
from learning_mcp.tools.settings import Target, identity_headers, process_environ, redact

log = logging.getLogger(__name__)

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
FILE_READY = frozenset({"ready", "uploaded", "stored", "complete", "processed"})
FILE_PENDING = frozenset({"processing", "pending", "validating"})
ProgressCallback = Callable[[int, int], Awaitable[None] | None]


def path_segment(value: str) -> str:
    """One URL path segment: ids are opaque, so ``/``, ``..`` and friends must not change the route."""
    return quote(str(value), safe="")


def job_id_of(record: dict) -> str | None:
    return record.get("job_id") or record.get("id")


def content_type_for(path: Path) -> str:
    return {".jsonl": "application/jsonl", ".json": "application/json", ".txt": "text/plain"}.get(
        path.suffix.lower(), "application/octet-stream")


def _retryable(exc: BaseException) -> bool:
    """The HTTP layer's rule (:func:`~learning_mcp.tools.http.retryable_status`); unreachable counts too."""
    return isinstance(exc, LearningAPIError) and (exc.status is None or retryable_status(exc.status))


def _detail_of(response: httpx.Response, secrets: tuple | list = ()) -> tuple[str, str | None, str | None]:
    """(detail, code, param) from an error body, the way Synth clients read it. ``secrets`` are redacted before
    the detail is cut to length, so a cut can never leave the first part of a secret behind."""
    try:
        body = response.json()
    except ValueError:
        text = redact(response.text.strip(), list(secrets))
        return (text[:300] or response.reason_phrase or "no body"), None, None
    if not isinstance(body, dict):
        return redact(str(body), list(secrets))[:300], None, None
    err = body.get("error") if isinstance(body.get("error"), dict) else {}
    detail = body.get("detail") or body.get("message") or err.get("message") or body.get("error")
    if isinstance(detail, list):  # FastAPI validation list
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail if isinstance(d, dict))
    return redact(str(detail), list(secrets))[:1000], err.get("code"), err.get("param")


class FileChangedError(LearningMCPError):
    """The file being uploaded shrank while it was read (``file_changed``)."""


class _CountingReader:
    """A file wrapper that reports bytes read (httpx streams multipart bodies by calling ``read``).

    It sends exactly the ``total`` bytes the file had when the upload began: a file that grows while it is read
    (a log still being written) is cut at that size, so the multipart body always matches its Content-Length;
    one that shrinks raises :class:`FileChangedError`."""

    def __init__(self, fh, total: int, on_read: Callable[[int], None]):
        self._fh, self.total, self._on_read, self.done = fh, total, on_read, 0

    def read(self, size: int = -1) -> bytes:
        left = self.total - self.done
        if left <= 0:
            return b""
        want = size if size and size > 0 else 1024 * 1024
        chunk = self._fh.read(min(want, left))
        if not chunk:
            raise FileChangedError("file_changed", f"{self._fh.name} shrank while it was uploaded (read {self.done} "
                                                   f"of {self.total} bytes); upload it again once nothing writes it")
        self.done += len(chunk)
        self._on_read(self.done)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:  # httpx measures the body this way: the size at the start, not now
            return self._fh.seek(self.total + offset)
        return self._fh.seek(offset, whence)

    def tell(self):
        return self._fh.tell()

    @property
    def name(self):
        return self._fh.name


class LearningClient:
    def __init__(self, target: Target, *, timeout_s: float = 30.0, upload_timeout_s: float = 300.0,
                 retry: RetryPolicy | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 extra_headers: Mapping[str, str] | None = None,
                 reresolve: Callable[[], Awaitable[Target | None]] | None = None):
        """``extra_headers``: Synth's identity headers (the server passes ``Settings.identity_headers``; None:
        read from the process environment, as Synth's SDK does). ``reresolve``: called when a request finds the
        API unreachable (after its retries); it returns the target to use now (the embedded backend found again
        or restarted, possibly on another port) or None, and the request is sent once more to it."""
        self.target = target
        self._reresolve = reresolve
        self.retry = retry or RetryPolicy()
        self.upload_timeout_s = upload_timeout_s
        headers = {"accept": "application/json", "user-agent": "learning-mcp"}
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        headers.update(identity_headers(process_environ()) if extra_headers is None else extra_headers)
        self._http = httpx.AsyncClient(base_url=target.api_base + "/", headers=headers,
                                       timeout=httpx.Timeout(timeout_s, connect=10.0), transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "LearningClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the one request path --------------------------------------------------------------------------
    async def _request(self, method: str, path: str, *, retry: bool, json: Any = None, params: dict | None = None,
                       headers: dict | None = None, build_files: Callable[[], dict] | None = None,
                       data: dict | None = None, timeout: float | None = None) -> httpx.Response:
        path = path.lstrip("/")
        if path.startswith("api/"):  # never /api/api (Synth's AsyncHttpClient._abs)
            path = path[4:]
        policy = self.retry if retry else self.retry.model_copy(update={"attempts": 1})

        async def once(attempt: int) -> httpx.Response:
            kwargs: dict[str, Any] = {"params": params, "headers": headers}
            if json is not None:
                kwargs["json"] = json
            if build_files is not None:
                kwargs["files"] = build_files()
                kwargs["data"] = data
            if timeout is not None:
                kwargs["timeout"] = httpx.Timeout(timeout, connect=10.0)
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                reason = redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                                [self.target.api_key])
                raise LearningAPIError(None, method, "/" + path,
                                       f"cannot reach the learning API at {self.target.api_base} ({reason})") from None
            if response.status_code < 400:
                return response
            detail, code, param = _detail_of(response, [self.target.api_key])
            raise LearningAPIError(response.status_code, method, "/" + path, redact(detail, [self.target.api_key]),
                                   code=code, param=param, retry_after=retry_after_s(response.headers))

        try:
            return await policy.call(once, retryable=_retryable, label=f"{method} /{path}")
        except LearningAPIError as exc:
            if not exc.unreachable or self._reresolve is None:
                raise
            target = await self._reresolve()
            if target is None:
                raise
            self.retarget(target)
            return await policy.call(once, retryable=_retryable, label=f"{method} /{path}")

    def retarget(self, target: Target) -> None:
        """Send the next requests to ``target`` (same key and headers handling)."""
        if target.api_base != self.target.api_base:
            self._http.base_url = httpx.URL(target.api_base + "/")
        if target.api_key and target.api_key != self.target.api_key:
            self._http.headers["Authorization"] = f"Bearer {target.api_key}"
        self.target = target

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise LearningAPIError(response.status_code, method, "/" + path.lstrip("/"),
                                   f"expected JSON, got {response.headers.get('content-type', 'no content type')}")

    # -- files -------------------------------------------------------------------------------------------
    async def upload_file(self, path: str | os.PathLike[str], *, purpose: str = "fine-tune",
                          on_progress: ProgressCallback | None = None) -> dict:
        """Stream ``path`` to the API; returns the file record (``id`` at least)."""
        path = Path(path)
        total = path.stat().st_size
        progress_state = {"last": 0}

        def report(done: int) -> None:
            progress_state["last"] = done

        opened: list = []

        def build_files() -> dict:
            fh = open(path, "rb")
            opened.append(fh)  # closed below: one handle per attempt, none left to the garbage collector
            return {"file": (path.name, _CountingReader(fh, total, report), content_type_for(path))}

        async def _post(route: str) -> httpx.Response:
            if on_progress is None:
                return await self._request("POST", route, retry=True, build_files=build_files,
                                           data={"purpose": purpose}, timeout=self.upload_timeout_s)
            outcome: dict[str, Any] = {}
            async with anyio.create_task_group() as tg:
                async def pump() -> None:
                    sent = -1
                    while True:
                        if progress_state["last"] != sent:
                            sent = progress_state["last"]
                            result = on_progress(sent, total)
                            if result is not None:
                                await result
                        await anyio.sleep(0.25)

                tg.start_soon(pump)
                try:
                    outcome["response"] = await self._request("POST", route, retry=True, build_files=build_files,
                                                              data={"purpose": purpose},
                                                              timeout=self.upload_timeout_s)
                except LearningAPIError as exc:
                    # raised outside the task group: inside it, anyio would wrap it in an ExceptionGroup that
                    # neither the /files fallback below nor the tools' error handling would recognise
                    outcome["error"] = exc
                finally:
                    tg.cancel_scope.cancel()
            if "error" in outcome:
                raise outcome["error"]
            return outcome["response"]

        try:
            try:
                response = await _post("learning/files")
            except LearningAPIError as exc:
                if exc.status not in (404, 405):
                    raise
                response = await _post("files")
        finally:
            for fh in opened:
                fh.close()
        if on_progress is not None:
            result = on_progress(total, total)
            if result is not None:
                await result
        try:
            record = response.json()
        except ValueError:
            record = {}
        if not isinstance(record, dict) or not (record.get("id") or record.get("file_id")):
            raise LearningAPIError(500, "POST", "/learning/files", "invalid_upload_response: no file id in the reply")
        record.setdefault("id", record.get("file_id"))
        return record

    async def get_file(self, file_id: str) -> dict:
        try:
            return await self._json("GET", f"learning/files/{path_segment(file_id)}", retry=True)
        except LearningAPIError as exc:
            if exc.status not in (404, 405):
                raise
            return await self._json("GET", f"files/{path_segment(file_id)}", retry=True)

    async def wait_for_file(self, file_id: str, *, timeout_s: float = 10.0, interval_s: float = 2.0) -> dict:
        """Poll the file until it is ready (or in error), at most ``timeout_s`` (Synth: 2 s / 10 s)."""
        deadline = time.monotonic() + timeout_s
        record: dict = {"id": file_id, "status": "unknown"}
        while True:
            try:
                record = await self.get_file(file_id)
                status = str(record.get("status") or record.get("state") or record.get("storage_state") or "ready").lower()
                record["status"] = status
                if status in FILE_READY or status == "error":
                    return record
            except LearningAPIError as exc:
                if exc.status in (401, 403):
                    raise
                if exc.status != 404:
                    log.info("file %s status check failed: %s", file_id, exc)
            if time.monotonic() >= deadline:
                return record
            await anyio.sleep(min(interval_s, max(0.05, deadline - time.monotonic())))

    async def list_files(self, *, purpose: str | None = None, limit: int = 50) -> list[dict]:
        params = {"limit": limit, **({"purpose": purpose} if purpose else {})}
        body = await self._json("GET", "files", retry=True, params=params)
        return body.get("files") or body.get("data") or body.get("items") or []

    # -- jobs --------------------------------------------------------------------------------------------
    async def create_job(self, payload: dict, *, idempotency_key: str | None = None) -> dict:
        key = idempotency_key or f"learning-mcp-{uuid.uuid4().hex}"
        return await self._json("POST", "learning/jobs", retry=True, json=payload, headers={"Idempotency-Key": key})

    async def start_job(self, job_id: str) -> dict:
        return await self._json("POST", f"learning/jobs/{path_segment(job_id)}/start", retry=True, json={})

    async def get_job(self, job_id: str) -> dict:
        record = await self._json("GET", f"learning/jobs/{path_segment(job_id)}", retry=True)
        record["status"] = normalize_status(record.get("status") or record.get("state"))
        return record

    async def get_compact_status(self, job_id: str) -> dict:
        """``GET …/status``: ``{job_id, status, progress, updated_at}`` (one try; it is an optional extra)."""
        return await self._json("GET", f"learning/jobs/{path_segment(job_id)}/status", retry=False)

    async def get_events(self, job_id: str, *, since_seq: int = 0, limit: int = 200) -> list[dict]:
        body = await self._json("GET", f"learning/jobs/{path_segment(job_id)}/events", retry=True,
                                params={"since_seq": since_seq, "limit": limit})
        events = body.get("events") if isinstance(body, dict) else body
        if events is None and isinstance(body, dict):
            events = body.get("data")
        out = []
        for event in events or []:
            event = dict(event)
            event.setdefault("type", event.get("event_type"))
            if int(event.get("seq") or 0) > since_seq:
                out.append(event)
        return sorted(out, key=lambda e: int(e.get("seq") or 0))

    async def get_metrics(self, job_id: str, *, after_step: int = -1, limit: int = 500, name: str | None = None) -> list[dict]:
        params: dict[str, Any] = {"after_step": after_step, "limit": limit}
        if name:
            params["name"] = name
        body = await self._json("GET", f"learning/jobs/{path_segment(job_id)}/metrics", retry=True, params=params)
        return body.get("points") or body.get("data") or [] if isinstance(body, dict) else []

    async def get_timeline(self, job_id: str, *, limit: int = 200) -> list[dict]:
        body = await self._json("GET", f"learning/jobs/{path_segment(job_id)}/timeline", retry=True, params={"limit": limit})
        return body.get("events") or body.get("timeline") or [] if isinstance(body, dict) else []

    async def cancel_job(self, job_id: str) -> dict:
        record = await self._json("POST", f"learning/jobs/{path_segment(job_id)}/cancel", retry=True, json={})
        if "status" in record:
            record["status"] = normalize_status(record["status"])
        return record

    async def list_jobs(self, *, status: str | None = None, limit: int = 20) -> list[dict]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        body = await self._json("GET", "learning/jobs", retry=True, params=params)
        jobs = body.get("jobs") or body.get("data") or [] if isinstance(body, dict) else body
        for job in jobs:
            job["status"] = normalize_status(job.get("status") or job.get("state"))
        return jobs

    async def list_models(self) -> list[dict]:
        body = await self._json("GET", "learning/models", retry=True)
        return body.get("data") or body.get("models") or [] if isinstance(body, dict) else body

    # -- typed records (aliases resolved once: tools/records.py) ---------------------------------------
    async def job(self, job_id: str) -> Job:
        return Job.of(await self.get_job(job_id))

    async def jobs(self, *, status: str | None = None, limit: int = 20) -> list[Job]:
        return [Job.of(j) for j in await self.list_jobs(status=status, limit=limit)]

    async def events(self, job_id: str, *, since_seq: int = 0, limit: int = 200) -> list[Event]:
        return [Event.of(e) for e in await self.get_events(job_id, since_seq=since_seq, limit=limit)]

    async def file(self, file_id: str) -> File:
        return File.of(await self.get_file(file_id))

    async def models(self) -> list[Model]:
        return [Model.of(m) for m in await self.list_models()]

    # -- datasets ----------------------------------------------------------------------------------------
    async def preview_dataset(self, body: dict, *, timeout_s: float = 55.0) -> dict:
        """``POST /learning/datasets/preview`` (the embedded backend's route; body: ``tools.preview.PreviewRequest``).
        Not retried: a preview that timed out would only time out again."""
        return await self._json("POST", "learning/datasets/preview", json=body, retry=False, timeout=timeout_s)

    async def health(self) -> dict:
        return await self._json("GET", "health", retry=False)

    async def chat_completion(self, body: dict, *, timeout_s: float = 120.0) -> dict:
        return await self._json("POST", "inference/v1/chat/completions", retry=True, json=body, timeout=timeout_s)
