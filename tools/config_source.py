"""One rule for "is this config argument a file path or TOML text?", shared by every config loader.

The SFT config (``create_job``), the loop config (``run_sft_loop``) and the filter config (``filter_traces``) all
take one string that is either the path of a TOML file or the TOML text itself. They decide which with
:func:`config_path`, so the same string is read the same way by all three:

* an ``os.PathLike`` is a path;
* a string holding a newline is TOML text;
* a one-line string is a path when it names an existing file or folder, or ends in ``.toml``, or holds neither
  ``=`` nor ``[`` (no TOML document fits on one line without one of them); otherwise it is TOML text.

Relative paths resolve against ``cwd`` (default: the process's working directory). The rule is the SFT loader's
historical one (it had the most cases and its own tests); :data:`CONFIG_ARG_HELP` is the sentence the tools'
parameter descriptions use for it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learning_mcp.tools.errors import LearningMCPError

CONFIG_ARG_HELP = ("a path to a TOML file (one line naming an existing file, ending in .toml, or without '=' and "
                   "'['; relative to the server's working directory) or the TOML text itself")


class ConfigSourceError(LearningMCPError):
    """The config argument names a missing file, is empty, or is not valid TOML (``config_not_found``,
    ``invalid_argument``, ``invalid_toml``)."""


def path_exists(path: Path) -> bool:
    """``path.exists()`` that treats unusable names (too long, NUL bytes) as missing."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def is_file(path: Path) -> bool:
    """``path.is_file()`` that treats unusable names (longer than the OS allows, NUL bytes) as no file."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def resolve_path(raw: str | os.PathLike[str], base_dir: Path) -> Path:
    """``raw`` with ``~`` expanded, relative to ``base_dir``, resolved. Raises :class:`ConfigSourceError`
    ``invalid_argument`` when it holds a NUL character."""
    if "\x00" in os.fspath(raw):  # os.stat/realpath raise ValueError on it
        raise ConfigSourceError("invalid_argument", f"path {os.fspath(raw)[:200]!r} holds a NUL character (\\x00); no "
                                                    "file name can: pass a real path")
    path = Path(raw).expanduser()
    return (path if path.is_absolute() else base_dir / path).resolve()


def base_dir_of(cwd: str | os.PathLike[str] | None) -> Path:
    return Path(cwd).expanduser().resolve() if cwd is not None else Path.cwd()


def looks_like_path(text: str, base_dir: Path) -> bool:
    """The rule of this module for a string (see the module docstring)."""
    if "\n" in text:
        return False
    stripped = text.strip()
    if path_exists(resolve_path(stripped, base_dir)) or stripped.lower().endswith(".toml"):
        return True
    return not ("=" in stripped or "[" in stripped)


def config_path(config: str | os.PathLike[str], *, cwd: str | os.PathLike[str] | None = None) -> Path | None:
    """The file ``config`` names (resolved, not checked for existence), or ``None`` when it is TOML text.
    Raises :class:`ConfigSourceError` ``invalid_argument`` for a one-line string holding a NUL character (no
    file name can hold one, and TOML forbids it outside escapes)."""
    base_dir = base_dir_of(cwd)
    if isinstance(config, str) and "\x00" in config and "\n" not in config:
        raise ConfigSourceError("invalid_argument", "config holds a NUL character (\\x00): pass the path of a .toml "
                                                    "file or the TOML text itself, without NUL characters",
                                param="config")
    if isinstance(config, os.PathLike):
        return resolve_path(config, base_dir)
    if looks_like_path(config, base_dir):
        return resolve_path(config.strip(), base_dir)
    return None


@dataclass(frozen=True)
class ConfigSource:
    """The text of a config argument and the file it came from (``None`` for TOML text)."""

    text: str
    path: Path | None

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "<config text>"

    @property
    def base_dir(self) -> Path | None:
        """The folder relative paths inside the config resolve against (``None`` for text)."""
        return self.path.parent if self.path else None


def read_config_source(config: str | os.PathLike[str], *, what: str = "config",
                       cwd: str | os.PathLike[str] | None = None) -> ConfigSource:
    """Decide path or text by the one rule and read the file. Raises :class:`ConfigSourceError`."""
    if not isinstance(config, (str, os.PathLike)):
        raise ConfigSourceError("invalid_argument", f"{what} must be a path or TOML text, not "
                                                    f"{type(config).__name__}", param="config")
    if isinstance(config, str) and not config.strip():
        raise ConfigSourceError("config_not_found", f"No {what} given: pass the path of a .toml file or the TOML "
                                                    "text itself.", param="config")
    path = config_path(config, cwd=cwd)
    if path is None:
        return ConfigSource(str(config), None)
    if not is_file(path):
        raise ConfigSourceError("config_not_found", f"{what} not found: {path}" if not path_exists(path) else
                                f"{what} path is not a file: {path}", param="config")
    try:
        return ConfigSource(path.read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigSourceError("invalid_toml", f"cannot read {what} {path}: {exc}", param="config") from None


def toml_loads(text: str) -> dict[str, Any]:
    """``tomllib.loads`` that fails only with ``tomllib.TOMLDecodeError``: also for arrays or inline tables nested
    deeper than the interpreter's recursion limit (tomllib recurses; ~1,000 levels raise RecursionError) and for
    an integer literal past ``sys.get_int_max_str_digits()`` (4,300 digits; ``int()`` raises ValueError)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise
    except RecursionError:
        raise tomllib.TOMLDecodeError("arrays or inline tables nested too deeply (hundreds of levels); flatten "
                                      "them") from None
    except ValueError as exc:
        reason = ("an integer literal longer than 4300 digits" if "digits" in str(exc)
                  else " ".join(str(exc).split())[:200])
        raise tomllib.TOMLDecodeError(reason) from None


def parse_toml(source: ConfigSource, *, what: str = "config") -> dict[str, Any]:
    """The TOML document of ``source``. Raises :class:`ConfigSourceError` ``invalid_toml``."""
    try:
        return toml_loads(source.text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigSourceError("invalid_toml", f"{what} is not valid TOML ({source.label}): {exc}",
                                param="config") from None


def load_toml_config(config: str | os.PathLike[str], *, what: str = "config",
                     cwd: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], Path | None]:
    """``read_config_source`` then ``parse_toml``: ``(document, file path or None)``."""
    source = read_config_source(config, what=what, cwd=cwd)
    return parse_toml(source, what=what), source.path
