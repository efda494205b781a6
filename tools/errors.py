"""The one exception type tool logic raises for an expected failure.

``ToolFailure`` carries a stable snake_case ``code`` and a message that says what was wrong and what to do
next. The MCP layer turns it into a ``ToolError`` (the text the model reads); library callers (the ReST-EM
loop, scripts) catch it directly. Nothing in here may contain an API key: messages are built from
``LearningAPIError`` details, which the client has already redacted.
"""

from __future__ import annotations


class ToolFailure(Exception):
    def __init__(self, code: str, message: str, *, data: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data or {}

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


def api_failure(exc: Exception, *, action: str, hint: str = "") -> ToolFailure:
    """Wrap a ``LearningAPIError`` from the client into a ToolFailure that says what to try next."""
    from learning_mcp.tools.client import LearningAPIError

    if not isinstance(exc, LearningAPIError):
        return ToolFailure("internal_error", f"{action} failed: {type(exc).__name__}: {exc}")
    if exc.unreachable:
        return ToolFailure("backend_unreachable",
                           f"{action} failed: {exc.detail}. Check that the learning API is running and the URL is "
                           "right (the diagnose tool shows which API this server uses); then retry.")
    if exc.status in (401, 403):
        return ToolFailure("auth_failed", f"{action} failed: HTTP {exc.status}: {exc.detail}. Check SYNTH_API_KEY "
                                          "in the server's environment (the key itself is never shown).")
    if exc.status == 429:
        return ToolFailure("rate_limited", f"{action} failed: rate limited after retries ({exc.detail}); wait a "
                                           "minute and retry.")
    if exc.status is not None and exc.status >= 500:
        return ToolFailure("backend_error", f"{action} failed: the learning API answered HTTP {exc.status} after "
                                            f"retries ({exc.detail}); retry later.")
    code = exc.code if exc.code and not exc.code.startswith("http_") else f"http_{exc.status}"
    param = f" (field: {exc.param})" if exc.param else ""
    return ToolFailure(code, f"{action} failed: HTTP {exc.status}: {exc.detail}{param}. {hint}".strip())
