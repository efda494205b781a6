"""Where the learning API is and how to authenticate: Synth's environment names, ``.env`` files, defaults.

Resolution (``learning-api.md`` §2 and decision §9.15):

* **key** — ``SYNTH_API_KEY``.
* **base URL** — an explicit argument, then ``SYNTH_BACKEND_URL``, ``BACKEND_BASE_URL``, ``SYNTH_BACKEND_OVERRIDE``;
  then, if a key is set, Synth's hosted API ``https://api.usesynth.ai``; with neither, the **embedded backend**.
* **.env files** — values from ``--env-file`` (repeatable, later files override earlier ones) override the process
  environment (as Synth's ``--env FILE`` takes precedence); without ``--env-file``, a ``.env`` in the working
  directory only fills in variables the process environment does not already set (Synth's ``find_dotenv``).

Every base URL is normalised to end in ``/api`` (Synth's ``ensure_api_base``). The key is kept out of ``repr``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

SYNTH_DEFAULT_ORIGIN = "https://api.usesynth.ai"
URL_ENV_VARS = ("SYNTH_BACKEND_URL", "BACKEND_BASE_URL", "SYNTH_BACKEND_OVERRIDE")
KEY_ENV_VAR = "SYNTH_API_KEY"
LOCAL_KEY_ENV_VAR = "LEARNING_MCP_BACKEND_KEY"
_QUOTED = re.compile(r"""^(['"])((?:\\.|(?!\1).)*)\1""")  # a quoted value, up to its closing quote


def ensure_api_base(base: str) -> str:
    """Synth's rule: strip trailing slashes and make the base end in ``/api``."""
    base = base.strip().rstrip("/")
    if not base.endswith("/api"):
        base = f"{base}/api"
    return base


def parse_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """A small ``.env`` reader: ``KEY=VALUE`` lines, ``export`` prefixes, quotes, ``#`` comments."""
    values: dict[str, str] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        quoted = _QUOTED.match(value)
        if quoted and value[quoted.end():].lstrip().startswith("#"):  # "quoted value" # comment
            value = quoted.group(2)
        elif len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def load_env(env_files: list[str] | tuple[str, ...] = (), environ: Mapping[str, str] | None = None,
             cwd: Path | None = None) -> dict[str, str]:
    """The effective environment: the process env, overlaid by explicit env files (later wins), with a cwd
    ``.env`` filling only what is still missing."""
    env = dict(os.environ if environ is None else environ)
    merged_files: dict[str, str] = {}
    for path in env_files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"env file not found: {path}")
        merged_files.update(parse_env_file(path))
    env.update(merged_files)
    auto = (cwd or Path.cwd()) / ".env"
    if not env_files and auto.is_file():
        for key, value in parse_env_file(auto).items():
            env.setdefault(key, value)
    return env


@dataclass(frozen=True)
class Target:
    """A learning API to talk to."""

    api_base: str  # ends in /api
    kind: Literal["synth", "local", "custom"]
    api_key: str | None = field(default=None, repr=False)

    @property
    def is_synth(self) -> bool:
        return self.kind == "synth"

    @property
    def chat_url(self) -> str:
        return f"{self.api_base}/inference/v1/chat/completions"

    def describe(self) -> str:
        auth = "key set" if self.api_key else "no key"
        return f"{self.kind} learning API at {self.api_base} ({auth})"


def resolve_target(*, backend_url: str | None = None, env: Mapping[str, str] | None = None) -> Target | None:
    """The configured remote target, or ``None`` when the embedded backend should be used."""
    env = os.environ if env is None else env
    key = env.get(KEY_ENV_VAR) or None
    url = backend_url or next((env[v] for v in URL_ENV_VARS if env.get(v)), None)
    if url:
        base = ensure_api_base(url)
        kind = "synth" if "usesynth.ai" in base or "agent-learning.onrender.com" in base else "custom"
        return Target(base, kind, key or env.get(LOCAL_KEY_ENV_VAR) or None)
    if key:
        return Target(ensure_api_base(SYNTH_DEFAULT_ORIGIN), "synth", key)
    return None


def redact(text: str, secrets: list[str | None]) -> str:
    """Remove every secret from ``text`` (for error messages and logs)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


ALLOWED_KEY_ENVS_VAR = "LEARNING_MCP_ALLOWED_KEY_ENVS"


def same_origin(url_a: str, url_b: str) -> bool:
    """Scheme, host and port equal (paths may differ)."""
    from urllib.parse import urlsplit

    a, b = urlsplit(url_a), urlsplit(url_b)
    default = {"http": 80, "https": 443}
    return (a.scheme, a.hostname, a.port or default.get(a.scheme)) == (b.scheme, b.hostname,
                                                                       b.port or default.get(b.scheme))


def endpoint_key(url: str, target: Target, key_env: str | None, *, environ: Mapping[str, str] | None = None,
                 default_env: str | None = None) -> str | None:
    """The key to send to an agent-chosen endpoint, without letting an agent exfiltrate secrets.

    * the learning API's own key goes only to the learning API's own origin;
    * another key is read from an environment variable only if the operator allowed that variable
      (``LEARNING_MCP_ALLOWED_KEY_ENVS``, comma separated) or it is the endpoint kind's standard name
      (``default_env``, e.g. ``ENVIRONMENT_API_KEY`` for task apps).
    Raises ``PermissionError`` for a variable the operator did not allow.
    """
    environ = os.environ if environ is None else environ
    if key_env:
        allowed = {v.strip() for v in environ.get(ALLOWED_KEY_ENVS_VAR, "").split(",") if v.strip()}
        if key_env != default_env and key_env not in allowed:
            raise PermissionError(
                f"environment variable {key_env!r} may not be sent to {url}: the server's operator must list it in "
                f"{ALLOWED_KEY_ENVS_VAR} (this stops a tool call from sending arbitrary secrets to any URL)")
        return environ.get(key_env) or None
    if target.api_key and same_origin(url, target.api_base):
        return target.api_key
    return None
