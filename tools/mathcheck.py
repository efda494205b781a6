"""Math answer equivalence with math-verify, run in a helper process so it can never hang or crash the caller.

The ``math`` verifier (:mod:`.rewards`) asks one question: is the answer span a model gave mathematically equal to
the reference? `math-verify <https://github.com/huggingface/Math-Verify>`_ (the checker TRL's ``accuracy_reward``
uses) answers it: it parses LaTeX and plain text into SymPy (``\\frac{3}{4}``, ``0.75``, ``1{,}000``, ``\\$18.90``,
``x = 5``, ``12\\text{ cm}``, sets, intervals, tuples) and compares with a tolerance of 6 decimal places.

Why a process. math-verify bounds each parse/compare with ``signal.alarm``, which raises
``ValueError: signal only works in main thread`` anywhere but the main thread – and our verifiers run in anyio
worker threads, the MCP server's loop threads and asyncio code. Turning the alarms off (``parsing_timeout=None``,
``timeout_seconds=None``) is not enough either: SymPy evaluates ``10^{10^{10}}`` exactly and a model sampling at
temperature 0.7 writes such things; a thread cannot be interrupted. So every check is sent to ONE long-lived child
process (``python -m learning_mcp.tools.mathcheck``, JSON lines over its stdin/stdout) that runs math-verify on its
own main thread with its alarms on (``MATH_TIMEOUT_S`` per parse and per comparison). The parent waits at most
``hard_timeout_s`` for the answer; past that the child is killed, the pair scores "not equal" (as math-verify scores
a timeout) and the next call starts a fresh child. Calls are serialised by a lock (each takes milliseconds);
the child costs ~1-2 s to start once per server process and is killed at interpreter exit.

:func:`math_equal` is the entry point; :func:`require_math_verify` raises a clear error when the optional
dependency is missing (``pip install 'learning-mcp[math]'``).
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time

__all__ = ["MATH_TIMEOUT_S", "MathVerifyMissing", "math_equal", "require_math_verify", "shutdown"]

logger = logging.getLogger(__name__)

MATH_TIMEOUT_S = 5  # math-verify's own per-parse / per-comparison alarm inside the child
HARD_TIMEOUT_S = 20.0  # the parent's limit for one check, child start included
INSTALL_HINT = "pip install 'learning-mcp[math]'  (or: pip install 'math-verify[antlr4_13_2]')"


class MathVerifyMissing(RuntimeError):
    """math-verify (the optional ``math`` extra) is not installed."""


def require_math_verify() -> None:
    """Raise :class:`MathVerifyMissing` (with the install command) unless math-verify is importable."""
    if importlib.util.find_spec("math_verify") is None:
        raise MathVerifyMissing(
            f"the math verifier needs the math-verify package, which is not installed: {INSTALL_HINT}"
        )


class _Child:
    """One helper process and the protocol with it. Not thread-safe: :func:`math_equal` holds the lock."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "learning_mcp.tools.mathcheck"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the child's tracebacks go to our stderr (never stdout: that may be the MCP protocol)
            env=env,
            close_fds=True,
        )
        self.proc = proc
        return proc

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.kill()
            proc.wait(timeout=5)
        except Exception:  # pragma: no cover - best effort
            pass
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except Exception:  # pragma: no cover
                pass

    def ask(self, request: dict, timeout_s: float) -> dict:
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer within {timeout_s:g}s")
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                break
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the math-verify helper process exited (code {proc.poll()})")
        return json.loads(line)


_lock = threading.Lock()
_child = _Child()


def math_equal(reference: str, answer: str, *, answer_is_text: bool = False,
               hard_timeout_s: float = HARD_TIMEOUT_S) -> bool:
    """True when ``answer`` is mathematically equal to ``reference``, as math-verify judges it.

    ``reference`` is one expression (LaTeX or plain, e.g. the content of a ``\\boxed{}``); so is ``answer``, unless
    ``answer_is_text``: then it is free text that math-verify searches for its final answer (boxed first, then the
    rightmost LaTeX or number). A check that times out or crashes the helper is False (logged as a warning).
    Raises :class:`MathVerifyMissing` when math-verify is not installed.
    """
    require_math_verify()
    request = {"gold": str(reference), "pred": str(answer), "text": bool(answer_is_text)}
    with _lock:
        for attempt in (1, 2):
            try:
                reply = _child.ask(request, hard_timeout_s)
            except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
                _child.kill()
                if isinstance(exc, TimeoutError) or attempt == 2:
                    logger.warning("math-verify: %r vs %r gave no answer (%s); scored as not equal",
                                   _short(reference), _short(answer), exc)
                    return False
                continue  # a helper that died (e.g. killed from outside): start a fresh one once
            if "error" in reply:
                if reply.get("missing"):
                    raise MathVerifyMissing(f"math-verify cannot be imported in the helper process ({reply['error']}): "
                                            f"{INSTALL_HINT}")
                logger.warning("math-verify raised on %r vs %r: %s", _short(reference), _short(answer), reply["error"])
                return False
            return bool(reply.get("equal"))
    return False  # pragma: no cover


def shutdown() -> None:
    """Stop the helper process (also done at interpreter exit)."""
    with _lock:
        _child.kill()


atexit.register(shutdown)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


# ---------------------------------------------------------------------------------------------------------------
# The helper process


def _serve() -> None:  # pragma: no cover - runs in the child
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol channel
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    logging.disable(logging.WARNING)  # math-verify logs every timeout and parse failure
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    except Exception as exc:  # noqa: BLE001
        for _ in sys.stdin:
            out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}", "missing": True}) + "\n")
        return
    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    gold_cache: dict[str, list] = {}

    def parsed(text: str, free_text: bool = False) -> list:
        wrapped = text if free_text else "\\boxed{" + text + "}"
        return parse(wrapped, extraction_config=config, parsing_timeout=MATH_TIMEOUT_S)

    for raw in sys.stdin:
        try:
            request = json.loads(raw)
            gold = gold_cache.get(request["gold"])
            if gold is None:
                gold = parsed(request["gold"])
                if len(gold_cache) > 4096:
                    gold_cache.clear()
                gold_cache[request["gold"]] = gold
            pred = parsed(request["pred"], bool(request.get("text")))
            equal = bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=MATH_TIMEOUT_S)
            reply = {"equal": bool(equal)}
        except Exception as exc:  # noqa: BLE001
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")


if __name__ == "__main__":  # pragma: no cover
    _serve()
