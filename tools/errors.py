"""The one error type of learning-mcp, and its mapping to the learning API's error body.

Every expected failure anywhere in the project is a :class:`LearningMCPError` (or a subclass) carrying

* ``code``    — a stable snake_case code (``invalid_config``, ``backend_unreachable``, ``model_not_found`` …);
* ``message`` — what was wrong and what to do next (for the agent: which tool to call);
* ``param``   — the offending field or argument, when there is one (``hyperparameters.sequence_length``);
* ``data``    — extra structured detail (never a secret);
* ``status``  — the HTTP status the backend answers it with (400 unless a subclass says otherwise).

It is translated once at each edge: the MCP server turns it into a ``ToolError`` whose text is
``[code] message`` (:func:`tool_text`), the backend into ``{"detail": message, "error": {code, message, param}}``
(learning-api.md §3.9) — no other exception type crosses a boundary. ``ToolFailure`` is the historical name used
by tool logic and stays an alias of the base type.

Nothing in here may contain an API key: messages are built from ``LearningAPIError`` details, which the client
has already redacted.
"""

from __future__ import annotations

from typing import Any


class LearningMCPError(Exception):
    """An expected failure: ``code``, ``message``, optional ``param``, ``data`` and HTTP ``status``."""

    status: int = 400

    def __init__(self, code: str, message: str, *, param: str | None = None, data: dict | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.data = data or {}
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def error_body(self) -> dict[str, Any]:
        """The backend's JSON error body (learning-api.md §3.9)."""
        return {"detail": self.message, "error": {"code": self.code, "message": self.message, "param": self.param}}


ToolFailure = LearningMCPError


class MessageError(LearningMCPError):
    """A :class:`LearningMCPError` whose ``str()`` is its bare ``message``: the domain errors of the tool logic
    (config, filter, verifier, task file, endpoint, model registry), whose text callers embed in their own
    sentences and which keep Synth's exact wording. The MCP edge still shows ``[code] message``
    (:func:`tool_text`)."""

    def __str__(self) -> str:
        return self.message


def tool_text(exc: LearningMCPError) -> str:
    """The text an agent reads for a failed tool call: ``[code] message``."""
    return f"[{exc.code}] {exc.message}"


class LearningAPIError(MessageError):
    """An HTTP error (or an unreachable API) from the learning API, with what an agent needs to act on it:
    ``status`` (None when unreachable), ``method``, ``path``, the server's ``detail`` (already redacted),
    its ``code``/``param`` and ``retry_after`` (seconds). ``str()`` is ``"METHOD /path -> HTTP status: detail"``;
    :func:`api_failure` turns it into what the agent reads."""

    def __init__(self, status: int | None, method: str, path: str, detail: str, *, code: str | None = None,
                 param: str | None = None, retry_after: float | None = None):
        where = f"{method} {path}"
        super().__init__(code or ("unreachable" if status is None else f"http_{status}"),
                         f"{where} failed: {detail}" if status is None else f"{where} -> HTTP {status}: {detail}",
                         param=param)
        self.status, self.method, self.path, self.detail = status, method, path, detail  # type: ignore[assignment]
        self.retry_after = retry_after

    @property
    def unreachable(self) -> bool:
        return self.status is None




def api_failure(exc: Exception, *, action: str, hint: str = "") -> ToolFailure:
    """Wrap a ``LearningAPIError`` from the client into a ToolFailure that says what to try next."""
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
    return ToolFailure(code, f"{action} failed: HTTP {exc.status}: {exc.detail}{param}. {hint}".strip(),
                       param=exc.param)


PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def validation_problems(errors: list[Any]) -> str:
    """pydantic's ``ValidationError.errors()`` as ``"field.path: message; …"``, without the library's "Value
    error," / "Assertion failed," prefixes (a validator's own message is what the reader needs)."""
    parts = []
    for error in errors:
        message = str(error.get("msg", "invalid value"))
        for prefix in PYDANTIC_PREFIXES:
            message = message.removeprefix(prefix)
        loc = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts)
