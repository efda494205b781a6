"""The backend's import boundaries (issue 7): ``backend/`` never imports ``server/``, and from ``tools/`` only the
shared rules it serves — errors, settings, the SFT contract, the dataset validator (and the atomic-write helper).
Imports are read from the source (``ast``), function-level ones included."""

from __future__ import annotations

import ast
from pathlib import Path

BACKEND = Path(__file__).resolve().parents[1] / "backend"
ALLOWED_TOOLS = {"errors", "settings", "sft_contract", "dataset", "atomic"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_backend_imports_only_the_shared_tools_and_never_the_server():
    offenders = []
    for path in sorted(BACKEND.rglob("*.py")):
        for name in imported_modules(path):
            parts = name.split(".")
            if parts[:2] == ["learning_mcp", "server"]:
                offenders.append(f"{path.relative_to(BACKEND.parent)} imports {name}")
            if parts[:2] == ["learning_mcp", "tools"] and len(parts) > 2 and parts[2] not in ALLOWED_TOOLS:
                offenders.append(f"{path.relative_to(BACKEND.parent)} imports {name}")
    assert offenders == []


def test_backend_errors_are_learning_mcp_errors():
    from learning_mcp.backend.inference import InferenceError
    from learning_mcp.backend.modelref import ModelNotFoundError, ModelRefError
    from learning_mcp.backend.routes.common import APIError
    from learning_mcp.backend.trainer import TrainingError
    from learning_mcp.tools.errors import LearningMCPError
    from learning_mcp.tools.sft_config import ConfigError
    from learning_mcp.tools.sft_contract import ContractError

    for cls in (APIError, InferenceError, ModelRefError, TrainingError, ContractError, ConfigError):
        assert issubclass(cls, LearningMCPError), cls
    error = InferenceError(404, "model_not_found", "no such model", "model")
    assert (error.status, error.error_body()) == (404, {"detail": "no such model", "error": {
        "code": "model_not_found", "message": "no such model", "param": "model"}})
    assert ModelNotFoundError("model_not_found", "x").status == 404
