"""Agent-facing text: every hint that names a route of the learning API also names the TOOL to call (the agent
cannot send HTTP requests; backend error details reach it through the client), and no message carries pydantic's
"Value error," prefix. A static scan of the message strings in tools/, server/ and backend/, plus the errors
triggered for real on a running backend and through the MCP server."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import httpx
import pytest
from mcp import Client

from learning_mcp.server.app import create_server
from learning_mcp.tools.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
ROUTE = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE) /|/api/(learning|files|inference)\b")
# strings that name a route but are not a hint to call this project's API (reason on the right)
NOT_HINTS = {
    ("tools/rollouts.py", "no POST /rollout at"): "the task app's own route, which the user runs",
}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def message_strings(folders=("tools", "server", "backend")) -> list[tuple[str, int, str]]:
    """(file, line, text) for every string literal (f-strings joined) that is not a docstring — except that the
    server's docstrings are tool descriptions the agent reads, so they count — and not a bare path literal."""
    out = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            tree = ast.parse(path.read_text())
            skip = _docstring_nodes(tree) if folder != "server" else set()
            for node in ast.walk(tree):
                if isinstance(node, ast.JoinedStr):
                    text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                    text = node.value
                else:
                    continue
                if text.startswith("/") or text.startswith("api/"):  # a path literal (routes, prefixes)
                    continue
                out.append((rel, node.lineno, text))
    return out


@pytest.fixture(scope="module")
def tool_names() -> set[str]:
    import anyio

    async def names() -> set[str]:
        async with Client(create_server(Settings.load(data_dir="/nonexistent-never-created"))) as client:
            return {t.name for t in (await client.list_tools()).tools}

    return anyio.run(names)


def names_a_tool(text: str, tools: set[str]) -> bool:
    return any(re.search(rf"\b{re.escape(name)}\b", text) for name in tools)


def test_every_route_hint_names_a_tool(tool_names):
    assert {"upload_file", "create_job", "list_jobs", "get_job_status"} <= tool_names
    offenders = []
    for rel, line, text in message_strings():
        if not ROUTE.search(text) or any(rel == f and s in text for f, s in NOT_HINTS):
            continue
        if not names_a_tool(text, tool_names):
            offenders.append(f"{rel}:{line}: {text!r}")
    assert not offenders, "hints that name a route but no tool:\n" + "\n".join(offenders)


def test_no_pydantic_prefix_in_messages():
    offenders = [f"{rel}:{line}" for rel, line, text in message_strings()
                 if "Value error," in text and text != "Value error, "]  # the prefix tools/errors.py strips
    assert not offenders


def test_backend_errors_name_the_tool(backend, tool_names):
    cases = {
        "job": httpx.get(f"{backend.api}/learning/jobs/ftjob-missing", timeout=30),
        "file": httpx.get(f"{backend.api}/learning/files/file-missing", timeout=30),
        "model": httpx.get(f"{backend.api}/learning/models/ft:nope:ftjob-missing", timeout=30),
        "chat": httpx.post(f"{backend.url}/v1/chat/completions", timeout=60,
                           json={"model": "ft:nope:ftjob-missing", "messages": [{"role": "user", "content": "hi"}]}),
        "create": httpx.post(f"{backend.api}/learning/jobs", timeout=30,
                             json={"model": "x", "training_type": "sft_offline", "training_file_id": "file-missing"}),
        "no file": httpx.post(f"{backend.api}/learning/jobs", timeout=30,
                              json={"model": "x", "training_type": "sft_offline"}),
        "bad value": httpx.post(f"{backend.api}/learning/jobs", timeout=30,
                                json={"model": "x", "training_type": "sft_offline", "training_file_id": "f",
                                      "hyperparameters": {"learning_rate": -1}}),
    }
    for what, response in cases.items():
        assert 400 <= response.status_code < 500, (what, response.text)
        detail = response.json()["error"]["message"]
        assert "Value error" not in detail, (what, detail)
        if ROUTE.search(detail) or what in {"job", "file", "model", "create", "no file"}:
            assert names_a_tool(detail, tool_names), (what, detail)


def test_loop_settings_error_has_no_library_prefix():
    from learning_mcp.tools.errors import LearningMCPError
    from learning_mcp.tools.loop import loop_config_from

    with pytest.raises(LearningMCPError) as info:
        loop_config_from(None, {"base_model": "x"})  # a model validator's ValueError: no tasks, no task app
    assert "Value error" not in info.value.message and "pass tasks" in info.value.message
