"""What every tool registration module of the MCP server shares: tool annotations, the one error translator
(:func:`tool_errors`), the result shape (:func:`result`), the lifespan state accessor and progress reports.

No module in ``server/`` imports another tool-registration module; they all import this one.

Hardening (issue 10): every tool answer is either a result or a ``[code] message`` error. Three layers:

* :func:`tool_errors` translates expected failures and, as the last resort (the floor, not the fix), turns any
  other exception into ``[internal_error] <tool>: …`` after logging its traceback to stderr;
* :func:`harden_tool_calls` (server middleware) rewrites what escapes the tool body — the SDK's argument
  validation errors become ``[invalid_arguments] <tool>: field: problem``, a crash outside ``tool_errors``
  becomes ``[internal_error]`` — and makes every answer encodable: a lone surrogate (valid in JSON input,
  not in UTF-8 output) is written as its ``\\udXXX`` escape, so the stdio writer never dies on it;
* the tool logic itself turns each kind of bad input into its own code (``tools/dataset.py``,
  ``tools/config_source.py``).
"""

from __future__ import annotations

import base64
import contextvars
import difflib
import json
import logging
import os
import re
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.context import CallNext, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel

from learning_mcp.tools.client import LearningAPIError
from learning_mcp.tools.errors import LearningMCPError, api_failure, tool_text
from learning_mcp.tools.settings import redact

log = logging.getLogger("learning_mcp.server")

READ_ONLY_LOCAL = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                  open_world_hint=False)
READ_ONLY_REMOTE = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                   open_world_hint=True)
UPLOADS = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=True)
STARTS_WORK = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                              open_world_hint=True)
CANCELS = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True)


_CURRENT_TOOL: contextvars.ContextVar[str] = contextvars.ContextVar("learning_mcp_tool", default="")


def _secret_values() -> list[str]:
    """Values of the environment's key-like variables (``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``):
    an unexpected exception's text is redacted with them before an agent reads it."""
    return [v for k, v in os.environ.items() if k.upper().endswith(("_KEY", "_TOKEN", "_SECRET", "_PASSWORD"))]


def internal_error_text(tool: str, exc: BaseException | None = None) -> str:
    """``[internal_error] <tool>: …`` — what an agent reads for a bug (the traceback is on the server's stderr)."""
    detail = redact(" ".join(str(exc).split()), _secret_values()) if exc is not None else ""
    what = f"{type(exc).__name__}: {detail[:300]}" if exc is not None else "unexpected failure"
    return (f"[internal_error] {tool or 'the tool'}: {what}. This is a bug in learning-mcp, not in your input as far "
            "as it can tell; the traceback is in the server's log (stderr). Retry once; if it repeats, report it "
            "and use the diagnose tool to check the setup.")


def _log_traceback(tool: str, exc: BaseException) -> None:
    """The traceback of an unexpected exception, on stderr (never stdout: it belongs to the protocol)."""
    try:
        text = redact("".join(traceback.format_exception(exc)), _secret_values())
        sys.stderr.write(f"learning-mcp: internal error in tool {tool or '?'}:\n"
                         + text.encode("utf-8", "backslashreplace").decode("utf-8"))
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a closed stderr must not turn a bug into a crash
        pass


@contextmanager
def tool_errors(action: str = "the call") -> Iterator[None]:
    """The one translator at the MCP edge: every expected failure (a :class:`LearningMCPError`, the client's
    ``LearningAPIError`` included) becomes a ``ToolError`` whose text is ``[code] message``. Anything else is a
    bug: its traceback goes to stderr and the agent reads ``[internal_error] <tool>: <type>: <message>``
    (the floor; each kind of bad input gets its own code where it is met)."""
    try:
        yield
    except LearningAPIError as exc:  # the client's HTTP error: say what failed and what to try next
        raise ToolError(tool_text(api_failure(exc, action=action))) from None
    except LearningMCPError as exc:  # every expected failure of the tool logic: "[code] message"
        raise ToolError(tool_text(exc)) from None
    except (ToolError, MCPError):
        raise
    except Exception as exc:  # noqa: BLE001 - the last resort
        tool = _CURRENT_TOOL.get() or action
        _log_traceback(tool, exc)
        raise ToolError(internal_error_text(tool, exc)) from None


_PREFIX = re.compile(r"^Error executing tool [^:]*(: )?")
_PYDANTIC_ITEM = re.compile(r"^(?P<loc>\S[^\n]*)\n  (?P<msg>[^\n\[]+?)(?: \[type=(?P<type>[^,\]]+)"
                            r"(?:, input_value=(?P<value>.*?))?(?:, input_type=(?P<itype>[^\]]+))?\])?$", re.M)


def _arguments_text(tool: str, body: str) -> str:
    """The SDK's pydantic argument error as ``[invalid_arguments] tool: field: problem (got type)``."""
    problems = []
    for m in _PYDANTIC_ITEM.finditer(body):
        if m.group("loc").startswith(("For further information", "1 validation error", "validation error")) or \
                "validation error" in m.group("loc"):
            continue
        got = f" (got {m.group('itype')})" if m.group("itype") else ""
        problems.append(f"{m.group('loc').strip()}: {m.group('msg').strip()}{got}")
    listed = "; ".join(problems[:5]) or " ".join(body.split())[:300]
    return (f"[invalid_arguments] {tool}: {listed}. Call {tool} again with arguments that match its input "
            "schema (tools/list shows it).")


def _clean_text(text: str) -> str:
    """``text`` made encodable as UTF-8: each lone surrogate becomes its ``\\udXXX`` escape."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def clean_json(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with every string and key made encodable (see _clean_text)."""
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, dict):
        return {(_clean_text(k) if isinstance(k, str) else k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def _error_text(tool: str, text: str) -> str:
    """``text`` when it already carries a ``[code]``; otherwise the SDK's prefix and a coded body."""
    body = _PREFIX.sub("", text, count=1).strip()
    if body.startswith("[") and "]" in body[:60]:
        return text
    if "validation error for" in body:
        coded = _arguments_text(tool, body)
    else:
        coded = internal_error_text(tool) if not body else internal_error_text(tool, RuntimeError(body))
    return f"Error executing tool {tool}: {coded}"


def harden_tool_calls(server: MCPServer) -> None:
    """Middleware for ``tools/call``: every error answer carries a ``[code]`` (argument validation by the SDK →
    ``invalid_arguments``, a crash outside :func:`tool_errors` → ``internal_error``, traceback logged by the SDK)
    and every string of the answer is encodable, so one odd input can never kill the stdio writer."""
    async def middleware(ctx: ServerRequestContext, call_next: CallNext):
        if ctx.method != "tools/call" or not isinstance(ctx.params, dict):
            return await call_next(ctx)
        name = ctx.params.get("name")
        tool = _clean_text(name) if isinstance(name, str) else "?"
        token = _CURRENT_TOOL.set(tool)
        try:
            out = await call_next(ctx)
        finally:
            _CURRENT_TOOL.reset(token)
        if isinstance(out, dict):
            if out.get("isError"):
                for part in out.get("content") or []:
                    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                        part["text"] = _error_text(tool, part["text"])
            out = clean_json(out)
        return out

    server.middleware.append(middleware)


def unknown_arguments_text(tool: str, given: Iterable[str], declared: Iterable[str]) -> str:
    """``[invalid_arguments] tool: unknown argument(s) a, b (did you mean …?); this tool takes: x, y``."""
    declared = sorted(declared)
    unknown = [_clean_text(str(a)) for a in given]
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, declared, n=1, cutoff=0.6)
        if close:
            hints.append(f"{close[0]} for {name}" if len(unknown) > 1 else close[0])
    did_you_mean = f" (did you mean {', '.join(hints)}?)" if hints else ""
    takes = ", ".join(declared) or "no arguments"
    return (f"[invalid_arguments] {tool}: unknown argument(s) {', '.join(unknown)}{did_you_mean}; this tool takes: "
            f"{takes}. Call {tool} again with only those arguments (tools/list shows each one's schema).")


def reject_unknown_tools(server: MCPServer) -> None:
    """Answer a call to an unknown tool with JSON-RPC -32602, as both spec revisions require (MCPServer still
    answers with an isError result: python-sdk#3659). Same middleware as the reference servers.

    Arguments the tool's input schema does not declare are refused too (the SDK's argument models drop them
    silently, so ``dry_run`` misspelt would start a real run): ``[invalid_arguments] tool: unknown argument(s) …``.
    That check wraps :meth:`MCPServer.call_tool` rather than living in the middleware, so the refusal is an
    ordinary ``isError`` tool result that the SDK shapes for either protocol era."""
    declared: dict[str, frozenset[str] | None] = {}  # tool name -> property names (None: takes anything)

    async def properties_of(name: str) -> frozenset[str] | None | bool:
        """The tool's declared argument names; None when its schema admits extra ones; False: no such tool."""
        if name not in declared:  # a miss refreshes the cache (a tool added after the first call)
            declared.clear()
            for tool in await server.list_tools():
                schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
                props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
                declared[tool.name] = None if schema.get("additionalProperties") not in (None, False) \
                    else frozenset(props)
        return declared.get(name, False)

    async def middleware(ctx: ServerRequestContext, call_next: CallNext):
        if ctx.method == "tools/call" and ctx.params is not None:
            name = ctx.params.get("name")
            if isinstance(name, str) and await properties_of(name) is False:
                raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {name}")
        return await call_next(ctx)

    call_tool = server.call_tool

    async def checked_call_tool(name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        props = await properties_of(name)
        if isinstance(props, frozenset) and isinstance(arguments, dict):
            unknown = [key for key in arguments if key not in props]
            if unknown:
                raise ToolError(f"Error executing tool {name}: {unknown_arguments_text(name, unknown, props)}")
        return await call_tool(name, arguments, context)

    server.call_tool = checked_call_tool  # type: ignore[method-assign]
    server.middleware.append(middleware)


def result(model: BaseModel, summary: str, *, image: bytes | None = None) -> CallToolResult:
    """A one-line summary for humans and models, then the structured JSON, then (``image``: PNG bytes) the picture
    as MCP image content."""
    try:
        data = model.model_dump(mode="json")
    except UnicodeEncodeError:  # a lone surrogate from the input (a JSON escape): escape it, then serialise
        model = type(model).model_validate(clean_json(model.model_dump()))
        data = model.model_dump(mode="json")
    data = clean_json(data)
    summary = _clean_text(summary)
    content: list = [TextContent(type="text", text=summary),
                     TextContent(type="text", text=json.dumps(data, indent=1, default=str))]
    if image is not None:
        content.append(png_image_content(image))
    return CallToolResult(content=content, structured_content=data)


def state_of(ctx: Context) -> Any:
    return ctx.request_context.lifespan_context


async def _progress(ctx: Context, done: float, total: float | None, message: str) -> None:
    try:
        await ctx.report_progress(done, total, message)
    except Exception:  # progress is advisory: a host without a token or a closed stream must not fail the call
        log.debug("progress notification dropped", exc_info=True)


def png_image_content(png: bytes) -> ImageContent:
    """``png`` as an MCP ``ImageContent`` block (base64, ``image/png``) for a tool result's content list."""
    return ImageContent(type="image", data=base64.b64encode(png).decode("ascii"), mime_type="image/png")
