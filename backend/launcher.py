"""Running the embedded backend: in the foreground (``learning-mcp backend``) or detached for the MCP server.

The running backend announces itself in ``<data_dir>/backend.json`` (``{url, pid, version, started_at}``,
written atomically once the socket is bound, removed on a clean shutdown). :func:`ensure_backend` reuses a
healthy backend found there, and otherwise starts one **detached** (its own session, output to
``logs/backend.log``), so training jobs outlive the MCP server process that started it. A lock file keeps two
MCP servers from starting two backends over the same data directory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import ValidationError

from learning_mcp import __version__
from learning_mcp.paths import data_dir as resolve_data_dir
from learning_mcp.tools.atomic import write_text_atomic
from learning_mcp.tools.errors import validation_problems
from learning_mcp.tools.settings import LOCAL_KEY_ENV_VAR, Settings, redact

log = logging.getLogger(__name__)

BACKEND_FILE = "backend.json"


@dataclass(frozen=True)
class BackendInfo:
    url: str
    pid: int | None
    started: bool  # True when this call started it


class BackendStartError(RuntimeError):
    """The embedded backend could not be started. ``reason``: the backend's own error line from its log
    (``[code] message`` or ``Error: …``, secrets redacted), when it wrote one; ``missing_training_stack``: the log
    shows an ImportError / ModuleNotFoundError (the training extra is not installed)."""

    def __init__(self, message: str, *, reason: str | None = None, missing_training_stack: bool = False):
        super().__init__(message)
        self.reason = reason
        self.missing_training_stack = missing_training_stack


_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:,.]+ +(?:CRITICAL|ERROR|WARNING|INFO|DEBUG) +[\w.]+: ?")
_EXCEPTION_LINE = re.compile(r"^[\w.]*(?:Error|Exception)\b: ")
_IMPORT_FAILURE = re.compile(r"\b(?:ImportError|ModuleNotFoundError)\b")


def _secret_values(environ: Mapping[str, str] | None) -> list[str]:
    """Values of key-like variables (``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``) of ``environ``
    (None: this process's environment): redacted from log text before anyone reads it."""
    env = os.environ if environ is None else environ
    return [v for k, v in env.items() if k.upper().endswith(("_KEY", "_TOKEN", "_SECRET", "_PASSWORD"))]


def start_failure_reason(log_text: str, environ: Mapping[str, str] | None = None) -> tuple[str | None, bool]:
    """``(reason, missing_training_stack)`` from what a backend that failed to start wrote to its log:
    ``reason`` is the last line that (after the logging prefix) starts with ``[`` or ``Error``, else the last
    exception line of a traceback (``XError: …``), redacted and cut to 600 characters; ``missing_training_stack``
    is True when the text shows an ImportError or ModuleNotFoundError."""
    reason = fallback = None
    for raw in log_text.splitlines():
        line = _LOG_PREFIX.sub("", raw.strip(), count=1).strip()
        if line.startswith("[") and "]" in line[:60] or line.startswith("Error"):
            reason = line
        elif _EXCEPTION_LINE.match(line):
            fallback = line
    reason = reason or fallback
    if reason is not None:
        reason = redact(" ".join(reason.split()), _secret_values(environ))[:600]
    return reason, bool(_IMPORT_FAILURE.search(log_text))


def _is_loopback(host: str) -> bool:
    return host in {"127.0.0.1", "localhost", "::1"} or host.startswith("127.")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def write_backend_file(data_dir: Path, url: str) -> None:
    info = {"url": url, "pid": os.getpid(), "version": __version__, "started_at": time.time()}
    write_text_atomic(data_dir / BACKEND_FILE, json.dumps(info))


def remove_backend_file(data_dir: Path) -> None:
    path = data_dir / BACKEND_FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def read_backend_file(data_dir: Path) -> dict | None:
    try:
        return json.loads((data_dir / BACKEND_FILE).read_text())
    except (OSError, ValueError):
        return None


GRACEFUL_SHUTDOWN_S = 10


def healthy(url: str, timeout: float = 2.0, api_key: str | None = None, data_dir: Path | None = None) -> bool:
    """The backend at ``url`` answers — and, with ``data_dir``, it is the one serving that data directory
    (a stale backend.json may point at a port another backend reuses)."""
    api_key = api_key or os.environ.get(LOCAL_KEY_ENV_VAR) or None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/api/health", timeout=timeout, headers=headers)
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return False
    if response.status_code != 200 or body.get("status") != "ok":
        return False
    if data_dir is None or "data_dir" not in body:  # without the key, health says only "ok": alive is all we learn
        return True
    return Path(body.get("data_dir", "")).resolve() == Path(data_dir).resolve()


def load_settings(env_files: list[str] | tuple[str, ...] = (), **overrides) -> Settings:
    """The backend's settings, built once: flags (``overrides``; None means "not given") over ``--env-file`` files
    over the environment over a ``.env`` in the working directory. Raises ``BackendStartError`` naming the bad
    value or the missing env file."""
    try:
        return Settings.load(env_files, **overrides)
    except FileNotFoundError as exc:
        raise BackendStartError(str(exc)) from None
    except ValidationError as exc:
        problems = validation_problems(exc.errors())
        raise BackendStartError(f"[invalid_setting] {problems}") from None


def serve(host: str = "127.0.0.1", port: int = 8765, data_dir: str | os.PathLike | None = None,
          api_key: str | None = None, log_level: str = "info", *, settings: Settings | None = None,
          env_files: list[str] | tuple[str, ...] = ()) -> int:
    """Run the backend in the foreground until interrupted. ``settings`` defaults to :func:`load_settings` with
    ``api_key`` and ``env_files``; the backend reads nothing from the environment after that."""
    import uvicorn

    from learning_mcp.backend.app import create_app  # FastAPI: only when serving
    from learning_mcp.backend.vllm_engine import EngineUnavailableError

    if settings is None:
        try:
            settings = load_settings(env_files, backend_key=api_key)
        except BackendStartError as exc:
            log.error("%s", exc)
            return 2
    api_key = settings.local_key
    if not _is_loopback(host) and not api_key:
        log.error("refusing to listen on %s without an API key: pass --api-key or set LEARNING_MCP_BACKEND_KEY", host)
        return 2
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s (is another backend running? `learning-mcp backend --status`)",
                  host, port, exc.strerror or exc)
        return 2
    root = resolve_data_dir(data_dir or settings.data_dir)
    try:
        app = create_app(root, settings=settings)
    except EngineUnavailableError as exc:  # LEARNING_MCP_INFERENCE_ENGINE=vllm without vLLM or a GPU
        log.error("%s", exc)
        return 2
    app.state.shutdown_hooks.append(lambda: remove_backend_file(root))
    # a SIGTERM cancels requests still running after GRACEFUL_SHUTDOWN_S (a long generation never blocks --stop)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    server = uvicorn.Server(config)

    url_host = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
    url = f"http://{url_host}:{port}"

    async def _run() -> None:
        import asyncio

        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            write_backend_file(root, url)
            log.info("learning backend listening on %s (data dir %s)", url, root)
        await task

    import asyncio

    try:
        asyncio.run(_run())
    finally:
        remove_backend_file(root)
    return 0


def ensure_backend(data_dir: Path, *, start_timeout_s: float = 60.0,
                   environ: Mapping[str, str] | None = None) -> BackendInfo:
    """Return a healthy backend for ``data_dir``, starting a detached one if none is running.

    ``environ``: the environment the detached backend starts with (the caller's ``Settings.environ``, so values
    from its ``--env-file`` reach the backend); None inherits this process's environment."""
    data_dir.mkdir(parents=True, exist_ok=True)
    info = read_backend_file(data_dir)
    if info and healthy(info["url"], data_dir=data_dir):
        return BackendInfo(info["url"], info.get("pid"), False)
    lock_path = data_dir / "backend.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = read_backend_file(data_dir)  # another process may have started it while we waited
        if info and healthy(info["url"], data_dir=data_dir):
            return BackendInfo(info["url"], info.get("pid"), False)
        port = free_port()
        logs = data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / "backend.log"
        log_file = open(log_path, "ab")
        log_start = log_file.tell()  # what this start appends is read back if it fails
        cmd = [sys.executable, "-m", "learning_mcp", "backend", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data_dir)]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True,
                                env=dict(environ) if environ is not None else None)
        log_file.close()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                try:
                    with open(log_path, "rb") as f:
                        f.seek(log_start)
                        text = f.read(1_000_000).decode("utf-8", "replace")
                except OSError:
                    text = ""
                reason, missing = start_failure_reason(text, environ)
                said = f": {reason}" if reason else ""
                raise BackendStartError(
                    f"the embedded backend exited during start-up ({proc.returncode}){said}; see {log_path}",
                    reason=reason, missing_training_stack=missing)
            if healthy(url, timeout=1.0):
                log.info("started the embedded backend at %s (pid %s)", url, proc.pid)
                return BackendInfo(url, proc.pid, True)
            time.sleep(0.2)
        proc.terminate()
        raise BackendStartError(f"the embedded backend did not answer within {start_timeout_s:.0f}s; "
                                f"see {logs / 'backend.log'}")


def stop_backend(data_dir: Path, *, timeout_s: float = GRACEFUL_SHUTDOWN_S + 15.0) -> tuple[str, bool]:
    """Stop the backend serving ``data_dir`` (``learning-mcp backend --stop``): SIGTERM, then wait up to
    ``timeout_s`` for the process to exit (the server cancels requests still running after
    :data:`GRACEFUL_SHUTDOWN_S`). Returns (what was done, True when no backend runs any more); the CLI exits
    non-zero on False. Running jobs' workers get SIGTERM from nobody: they finish or are adopted by the next
    backend start."""
    import signal

    info = read_backend_file(data_dir)
    if not info or not info.get("pid"):
        return f"no backend is recorded for {data_dir}", True
    pid = int(info["pid"])
    if not healthy(info["url"], data_dir=data_dir):
        (data_dir / BACKEND_FILE).unlink(missing_ok=True)
        return f"the backend recorded for {data_dir} (pid {pid}) is not running; removed the stale record", True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return f"the backend (pid {pid}) exited before it was signalled", True
    started = time.monotonic()
    from learning_mcp.backend.scheduler import pid_alive  # a zombie (exited, parent not yet reaped) is gone

    while time.monotonic() - started < timeout_s:
        if not pid_alive(pid):
            return f"stopped the backend at {info['url']} (pid {pid}) in {time.monotonic() - started:.1f} s", True
        time.sleep(0.2)
    return (f"sent SIGTERM to the backend (pid {pid}); it is STILL RUNNING after {timeout_s:.0f} s; "
            f"run --stop again, or end it with `kill -9 {pid}` (its training workers keep running)"), False


def backend_status(data_dir: Path) -> str:
    info = read_backend_file(data_dir)
    if not info:
        return f"no backend is recorded for {data_dir}"
    state = "running" if healthy(info["url"], data_dir=data_dir) else "not answering"
    return f"backend for {data_dir}: {info['url']} (pid {info.get('pid')}) {state}"
