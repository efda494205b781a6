"""learning-mcp: agent tools for fine-tuning models over Synth's learning API.

The code lives in three subpackages that map to the repository's top-level folders:
``learning_mcp.server`` (``server/``: the MCP server), ``learning_mcp.tools`` (``tools/``: what each tool
does, the API client, validation, config) and ``learning_mcp.backend`` (``backend/``: the embedded learning
API and its trainer).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("learning-mcp")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
