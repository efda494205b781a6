"""Where learning-mcp keeps its state on disk.

One data directory holds the embedded backend's database, uploaded files, trained models and logs, and
the MCP server's loop state. Resolution order: an explicit argument (``Settings.data_dir``, which the
``learning-mcp`` command fills from ``--data-dir`` or ``LEARNING_MCP_DATA_DIR``), then the user's data directory
(``platformdirs.user_data_dir("learning-mcp")``). This module reads no environment variable itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DATA_DIR_ENV = "LEARNING_MCP_DATA_DIR"


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory, created if missing."""
    if explicit:
        path = Path(explicit)
    else:
        path = Path(platformdirs.user_data_dir("learning-mcp", appauthor=False))
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
