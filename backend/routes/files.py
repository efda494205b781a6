"""Files: ``POST /files`` (multipart ``file`` + ``purpose``), list, get, delete, the jobs that use a file.

Mounted under ``/api/learning``, ``/api`` and ``/api/v1/learning``. Content-addressed: the same bytes give the same
id. A file is ``processing`` while the dataset validator runs in a background thread, then ``ready`` or ``error``.
The routes are plain ``def``: FastAPI runs them in its thread pool, so disk and SQLite work never blocks the event
loop (which also runs the inference batcher).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from fastapi import APIRouter, File, Form, Query, UploadFile

from learning_mcp.backend.routes.common import APIError, not_found, public_job
from learning_mcp.backend.state import BackendDep

router = APIRouter(prefix="/files", tags=["files"])
PURPOSES = frozenset({"fine-tune", "validation", "fine_tune", "training"})
CHUNK = 1024 * 1024


def _too_large(limit: int, size: int) -> APIError:
    return APIError(413, "file_too_large",
                    f"file too large: {size} bytes exceeds this backend's limit of {limit} bytes "
                    f"({limit / 1024**2:.0f} MiB); split the dataset or raise LEARNING_MCP_MAX_UPLOAD_BYTES",
                    param="file")


@router.post("")
def upload_file(backend: BackendDep, file: UploadFile = File(...),
                purpose: str = Form("fine-tune")) -> dict:
    store, limit = backend.store, backend.max_upload_bytes  # the body was bounded while it streamed (limits.py)
    if purpose not in PURPOSES:
        raise APIError(400, "invalid_purpose", f"purpose {purpose!r} is not supported; use 'fine-tune'",
                       param="purpose")
    tmp = store.paths.incoming / f"{uuid.uuid4().hex}.part"
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            while chunk := file.file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit, size)
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise APIError(400, "empty_file", "the uploaded file is empty", param="file")
        sha = digest.hexdigest()
        final = store.paths.file_path(sha)
        if final.exists():
            tmp.unlink()
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    record, created = store.add_file(sha256=sha, filename=Path(file.filename or "dataset.jsonl").name,
                                     purpose=purpose, size=size)
    if created:
        backend.validate_file_async(record)
    return record


@router.get("")
def list_files(backend: BackendDep, purpose: str | None = None, limit: int = Query(100, ge=1, le=1000)) -> dict:
    files = backend.store.list_files(purpose=purpose, limit=limit)
    return {"object": "list", "data": files, "files": files}


@router.get("/{file_id}")
def get_file(file_id: str, backend: BackendDep) -> dict:
    record = backend.store.get_file(file_id)
    if record is None:
        raise not_found("file", file_id, "upload the dataset with upload_file(path=...) (POST /api/learning/files)")
    return record


@router.delete("/{file_id}")
def delete_file(file_id: str, backend: BackendDep) -> dict:
    if backend.store.delete_file(file_id) is None:
        raise not_found("file", file_id, "upload_file returns the file ids (GET /api/files lists them)")
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/{file_id}/jobs")
def file_jobs(file_id: str, backend: BackendDep, limit: int = Query(100, ge=1, le=1000)) -> dict:
    if backend.store.get_file(file_id) is None:
        raise not_found("file", file_id, "upload_file returns the file ids (GET /api/files lists them)")
    jobs = [public_job(j) for j in backend.store.jobs_using_file(file_id, limit)]
    return {"object": "list", "data": jobs, "jobs": jobs}
