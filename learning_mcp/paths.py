"""Where learning-mcp keeps its state on disk.

One data directory holds the embedded backend's database, uploaded files, trained models and logs, and
the MCP server's loop state. Resolution order: an explicit argument, then ``LEARNING_MCP_DATA_DIR``, then
the user's data directory (``platformdirs.user_data_dir("learning-mcp")``).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "LEARNING_MCP_DATA_DIR"


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory, created if missing."""
    if explicit:
        path = Path(explicit)
    elif os.environ.get(DATA_DIR_ENV):
        path = Path(os.environ[DATA_DIR_ENV])
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("learning-mcp", appauthor=False))
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
