"""What every tool registration module of the MCP server shares: tool annotations, the one error translator
(:func:`tool_errors`), the result shape (:func:`result`), the lifespan state accessor and progress reports.

No module in ``server/`` imports another tool-registration module; they all import this one.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from typing import Any, Iterator

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.context import CallNext, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel

from learning_mcp.tools.client import LearningAPIError
from learning_mcp.tools.errors import LearningMCPError, api_failure, tool_text

log = logging.getLogger("learning_mcp.server")

READ_ONLY_LOCAL = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                  open_world_hint=False)
READ_ONLY_REMOTE = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                   open_world_hint=True)
UPLOADS = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=True)
STARTS_WORK = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                              open_world_hint=True)
CANCELS = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True)


@contextmanager
def tool_errors(action: str = "the call") -> Iterator[None]:
    """The one translator at the MCP edge: every expected failure (a :class:`LearningMCPError`, the client's
    ``LearningAPIError`` included) becomes a ``ToolError`` whose text is ``[code] message``; anything else is a
    bug and reaches the SDK as is."""
    try:
        yield
    except LearningAPIError as exc:  # the client's HTTP error: say what failed and what to try next
        raise ToolError(tool_text(api_failure(exc, action=action))) from None
    except LearningMCPError as exc:  # every expected failure of the tool logic: "[code] message"
        raise ToolError(tool_text(exc)) from None


def reject_unknown_tools(server: MCPServer) -> None:
    """Answer a call to an unknown tool with JSON-RPC -32602, as both spec revisions require (MCPServer still
    answers with an isError result: python-sdk#3659). Same middleware as the reference servers."""
    async def middleware(ctx: ServerRequestContext, call_next: CallNext):
        if ctx.method == "tools/call" and ctx.params is not None:
            name = ctx.params.get("name")
            if isinstance(name, str) and name not in {tool.name for tool in await server.list_tools()}:
                raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {name}")
        return await call_next(ctx)

    server.middleware.append(middleware)


def result(model: BaseModel, summary: str) -> CallToolResult:
    """A one-line summary for humans and models, then the structured JSON."""
    data = model.model_dump(mode="json")
    return CallToolResult(content=[TextContent(type="text", text=summary),
                                   TextContent(type="text", text=json.dumps(data, indent=1, default=str))],
                          structured_content=data)


def state_of(ctx: Context) -> Any:
    return ctx.request_context.lifespan_context


async def _progress(ctx: Context, done: float, total: float | None, message: str) -> None:
    try:
        await ctx.report_progress(done, total, message)
    except Exception:  # progress is advisory: a host without a token or a closed stream must not fail the call
        log.debug("progress notification dropped", exc_info=True)
