"""The ``learning-mcp`` command.

* ``learning-mcp`` — serve MCP over stdio (what an agent host runs).
* ``learning-mcp --transport http --port 8000`` — serve MCP over streamable HTTP.
* ``learning-mcp backend [--host H] [--port P] [--data-dir D]`` — run the embedded learning backend in the foreground.
* ``learning-mcp tiny-model PATH [--size tiny|small|vl]`` — write a tiny offline model + tokenizer for tests and demos.
* ``learning-mcp train | status | eval | filter | loop | export`` — Synth-style commands on the tools' code
  (:mod:`learning_mcp.commands`: progress on stderr, ``--json`` on stdout, exit codes for scripts).

Logging goes to stderr, configured before anything heavy is imported: on stdio, stdout belongs to the protocol.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import SecretStr, ValidationError

from learning_mcp import __version__
from learning_mcp.commands import COMMANDS, add_commands
from learning_mcp.paths import data_dir as resolve_data_dir
from learning_mcp.tools.errors import validation_problems
from learning_mcp.tools.settings import Settings


def _version() -> str:
    return __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="learning-mcp",
        description="MCP server for fine-tuning models through Synth's learning API (or the embedded backend).",
    )
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                        help="MCP transport (default: stdio)")
    parser.add_argument("--host", default="127.0.0.1", help="host for --transport http (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port for --transport http (default 8000)")
    parser.add_argument("--env-file", action="append", default=[], metavar="FILE",
                        help=".env file with SYNTH_API_KEY etc. (repeatable; later files override earlier ones)")
    parser.add_argument("--backend-url", default=None,
                        help="learning API base URL (default: $SYNTH_BACKEND_URL…, else Synth's when SYNTH_API_KEY "
                             "is set, else the embedded backend)")
    parser.add_argument("--data-dir", default=None, help="state directory (default: $LEARNING_MCP_DATA_DIR or the "
                                                         "user data dir)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        type=str.upper, help="stderr log level (default: %(default)s)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command")

    backend = sub.add_parser("backend", help="run the embedded learning backend in the foreground",
                             description="Synth's learning API on this machine: uploads, SFT jobs (trained in "
                                         "worker processes), fine-tuned models and chat completions.")
    backend.add_argument("--host", dest="backend_host", metavar="HOST", default="127.0.0.1",
                         help="listen address (default: %(default)s; anything else needs --api-key)")
    backend.add_argument("--port", dest="backend_port", metavar="PORT", type=int, default=8765,
                         help="port (default: %(default)s)")
    backend.add_argument("--data-dir", dest="backend_data_dir", metavar="DIR", default=None,
                         help="state directory (default: $LEARNING_MCP_DATA_DIR or the user data dir)")
    backend.add_argument("--api-key", default=None,
                         help="require this bearer key (also $LEARNING_MCP_BACKEND_KEY; required off loopback)")
    backend.add_argument("--stop", action="store_true", help="stop the backend serving the data dir, then exit")
    backend.add_argument("--status", action="store_true", help="show the backend serving the data dir, then exit")

    tiny = sub.add_parser("tiny-model", help="write a tiny offline model + tokenizer (for tests and demos)",
                          description="A tiny Qwen2-style causal LM with a byte-level tokenizer and a ChatML "
                                      "template, built offline; the trainer and inference accept it like any model.")
    tiny.add_argument("path", help="folder to write (created)")
    tiny.add_argument("--size", choices=["tiny", "small", "vl"], default="tiny",
                      help="tiny: ~27k parameters (plumbing tests); small: ~140k (learns arithmetic); "
                           "vl: a ~41k-parameter LLaVA-style vision-language model + processor")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: %(default)s)")
    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "uvicorn.access"):  # one line per request drowns what matters
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "tiny-model":
        from learning_mcp.backend.tiny import main as tiny_main  # imports torch: only for this command

        return tiny_main([args.path, "--size", args.size, "--seed", str(args.seed)])
    settings = _settings(args)
    if settings is None:
        return 2
    if args.command in COMMANDS:
        from learning_mcp.commands import run_command

        return run_command(args, settings)
    if args.command == "backend":
        from learning_mcp.backend.launcher import backend_status, serve, stop_backend

        data_dir = args.backend_data_dir or settings.data_dir
        if args.stop or args.status:
            root = resolve_data_dir(data_dir)
            if args.stop:  # non-zero when the backend is still running after the bounded wait
                message, stopped = stop_backend(root)
                sys.stderr.write(message + "\n")
                return 0 if stopped else 1
            sys.stderr.write(backend_status(root) + "\n")
            return 0
        if args.api_key:
            settings = settings.model_copy(update={"backend_key": SecretStr(args.api_key)})
        return serve(host=args.backend_host, port=args.backend_port, data_dir=data_dir, settings=settings)

    from learning_mcp.server.app import run_server  # the MCP SDK: not needed by the other commands

    return run_server(settings, transport=args.transport, host=args.host, port=args.port)


def _settings(args: argparse.Namespace) -> Settings | None:
    """The one settings object, built here at start-up from the flags, the env files and the environment
    (:meth:`Settings.load`); None after writing what is wrong to stderr."""
    for path in args.env_file:
        if not Path(path).is_file():
            sys.stderr.write(f"Error: --env-file {path} does not exist\n")
            return None
    try:
        return Settings.load(args.env_file, backend_url=args.backend_url, data_dir=args.data_dir)
    except ValidationError as exc:
        problems = validation_problems(exc.errors())
        sys.stderr.write(f"[invalid_setting] {problems}\n")
        return None


if __name__ == "__main__":
    raise SystemExit(main())
