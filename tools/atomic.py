"""Atomic file writes: a temp file in the same folder, fsync, then rename — readers see the old file or the whole
new one, never a torn write, and a crash leaves no partial file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable


def write_jsonl_atomic(path: str | os.PathLike[str], records: Iterable[dict]) -> int:
    """Write one JSON object per line; returns how many were written."""
    return _write_atomic(Path(path), (json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    _write_atomic(Path(path), [text])


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    _write_atomic(Path(path), [data], binary=True)


def _write_atomic(path: Path, chunks: Iterable[str] | Iterable[bytes], *, binary: bool = False) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as handle:
            for chunk in chunks:
                handle.write(chunk)
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return count
