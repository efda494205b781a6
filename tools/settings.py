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
from urllib.parse import urlsplit, urlunsplit
from typing import Annotated, Any, Literal, Mapping

from dotenv import dotenv_values
from pydantic import AliasChoices, BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from learning_mcp.paths import data_dir as resolve_data_dir

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
    """The ``KEY=VALUE`` pairs of a ``.env`` file, parsed by python-dotenv (the parser Synth's CLI uses, so
    quoting, ``export`` prefixes, comments and escapes read the same). Lines without ``=`` are skipped."""
    return {k: v for k, v in dotenv_values(path, encoding="utf-8").items() if v is not None}


def load_env(env_files: list[str] | tuple[str, ...] = (), environ: Mapping[str, str] | None = None,
             cwd: Path | None = None) -> dict[str, str]:
    """The effective environment: the process env, overlaid by explicit env files (later wins), with a cwd
    ``.env`` filling only what is still missing."""
    env = dict(process_environ() if environ is None else environ)
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
    env = process_environ() if env is None else env
    key = env.get(KEY_ENV_VAR) or None
    url = backend_url or next((env[v] for v in URL_ENV_VARS if env.get(v)), None)
    if url:
        base = ensure_api_base(url)
        kind = "synth" if "usesynth.ai" in base or "agent-learning.onrender.com" in base else "custom"
        return Target(base, kind, key or env.get(LOCAL_KEY_ENV_VAR) or None)
    if key:
        return Target(ensure_api_base(SYNTH_DEFAULT_ORIGIN), "synth", key)
    return None


def identity_headers(environ: Mapping[str, str]) -> dict[str, str]:
    """``X-User-ID`` / ``X-Org-ID`` from ``SYNTH_USER_ID`` / ``SYNTH_ORG_ID`` when set (Synth's clients send them)."""
    return {header: environ[name] for name, header in (("SYNTH_USER_ID", "X-User-ID"), ("SYNTH_ORG_ID", "X-Org-ID"))
            if environ.get(name)}


def process_environ() -> Mapping[str, str]:
    """The process environment. The one place that reads ``os.environ`` outside :meth:`Settings.load`: the default
    of library calls made without settings (scripts, tests; Synth's SDK reads the environment the same way).
    The MCP server never relies on it: it passes its :class:`Settings` (and ``Settings.environ``) explicitly."""
    return os.environ


def redact(text: str, secrets: list[str | None]) -> str:
    """Remove every secret from ``text`` (for error messages and logs). The one redactor: the learning-API
    client and the eval sampler both use it."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (URLs are shown in errors and logs)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=f"***@{host}")
    return urlunsplit(parts)


ALLOWED_KEY_ENVS_VAR = "LEARNING_MCP_ALLOWED_KEY_ENVS"


def same_origin(url_a: str, url_b: str) -> bool:
    """Scheme, host and port equal (paths may differ)."""
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
    environ = process_environ() if environ is None else environ
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


# --------------------------------------------------------------------------------------------------------
# the one settings object
# --------------------------------------------------------------------------------------------------------
DATA_DIR_ENV = "LEARNING_MCP_DATA_DIR"
DEFAULT_MAX_UPLOAD_BYTES = 4 * 1024 ** 3


class Settings(BaseSettings):
    """Every project setting, read once at start-up (:meth:`load`) and passed explicitly from there on.

    Sources, highest first: keyword overrides (command-line flags), ``--env-file`` files (later files win),
    the process environment, a ``.env`` in the working directory (fills only what is unset) — Synth's CLI
    precedence (``learning-api.md`` §2, decision §9.15). Environment names are Synth's where Synth has one.
    ``environ`` keeps the merged mapping for variables named at run time (a task app's ``ENVIRONMENT_API_KEY``,
    an operator-allowed ``chat_api_key_env``); nothing else in the project reads ``os.environ`` for settings.
    Secrets are ``SecretStr`` and never appear in ``repr``.
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    synth_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("synth_api_key", KEY_ENV_VAR))
    backend_url: str | None = Field(None, validation_alias=AliasChoices("backend_url", *URL_ENV_VARS))
    backend_key: SecretStr | None = Field(None, validation_alias=AliasChoices("backend_key", LOCAL_KEY_ENV_VAR))
    data_dir: str | None = Field(None, validation_alias=AliasChoices("data_dir", DATA_DIR_ENV))
    max_upload_bytes: int = Field(DEFAULT_MAX_UPLOAD_BYTES, gt=0, validation_alias=AliasChoices(
        "max_upload_bytes", "LEARNING_MCP_MAX_UPLOAD_BYTES"))
    max_concurrent_jobs: int = Field(1, ge=1, validation_alias=AliasChoices(
        "max_concurrent_jobs", "LEARNING_MCP_MAX_CONCURRENT_JOBS"))
    torch_threads: int | None = Field(None, ge=1, validation_alias=AliasChoices(
        "torch_threads", "LEARNING_MCP_TORCH_THREADS"))
    sdk_experimental: Annotated[bool, BeforeValidator(lambda v: v is True or str(v).strip() == "1")] = Field(
        False, validation_alias=AliasChoices("sdk_experimental", "SDK_EXPERIMENTAL"))  # Synth: exactly "1"
    sdk_experimental_models: str = Field("", validation_alias=AliasChoices(
        "sdk_experimental_models", "SDK_EXPERIMENTAL_MODELS"))
    allowed_key_envs: str = Field("", validation_alias=AliasChoices("allowed_key_envs", ALLOWED_KEY_ENVS_VAR))
    hf_hub_offline: bool = Field(False, validation_alias=AliasChoices("hf_hub_offline", "HF_HUB_OFFLINE"))
    synth_user_id: str | None = Field(None, validation_alias=AliasChoices("synth_user_id", "SYNTH_USER_ID"))
    synth_org_id: str | None = Field(None, validation_alias=AliasChoices("synth_org_id", "SYNTH_ORG_ID"))
    # the embedded backend on a Ray cluster (backend/ray_backend.py): "auto", "host:6379" or "ray://host:10001"
    ray_address: str | None = Field(None, validation_alias=AliasChoices("ray_address", "LEARNING_MCP_RAY_ADDRESS"))
    # the inference engine's model cache (backend/inference.py): memory budget in MB (0 = no budget, keep at most
    # two models) and seconds after which an unused model is unloaded (0 = never)
    inference_memory_mb: int = Field(0, ge=0, validation_alias=AliasChoices(
        "inference_memory_mb", "LEARNING_MCP_INFERENCE_MEMORY_MB"))
    inference_idle_unload_s: float = Field(600.0, ge=0, validation_alias=AliasChoices(
        "inference_idle_unload_s", "LEARNING_MCP_INFERENCE_IDLE_UNLOAD_S"))
    # which engine serves the embedded backend's chat completions (backend/vllm_engine.py): "auto" = vLLM when it
    # is installed and a CUDA GPU is present, else transformers; "vllm" refuses to start the backend without them.
    # vLLM's share of GPU memory (its gpu_memory_utilization, 0..1: the rest stays for training jobs) and the
    # largest LoRA rank its adapters may have (vLLM's max_lora_rank)
    inference_engine: Annotated[Literal["auto", "transformers", "vllm"],
                                BeforeValidator(lambda v: v.strip().lower() if isinstance(v, str) else v)] = Field(
        "auto", validation_alias=AliasChoices("inference_engine", "LEARNING_MCP_INFERENCE_ENGINE"))
    vllm_gpu_memory_utilization: float = Field(0.5, gt=0, le=1, validation_alias=AliasChoices(
        "vllm_gpu_memory_utilization", "LEARNING_MCP_VLLM_GPU_MEMORY_UTILIZATION"))
    vllm_max_lora_rank: int = Field(64, ge=1, validation_alias=AliasChoices(
        "vllm_max_lora_rank", "LEARNING_MCP_VLLM_MAX_LORA_RANK"))
    # the embedded backend's limits and sweeps (backend/limits.py, backend/scheduler.py): JSON request bodies over
    # max_request_bytes are refused (413) before parsing; a job created but never started expires (cancelled,
    # error code job_expired, event sft.expired) after job_start_expiry_s (0 = never)
    max_request_bytes: int = Field(8 * 1024 * 1024, gt=0, validation_alias=AliasChoices(
        "max_request_bytes", "LEARNING_MCP_MAX_REQUEST_BYTES"))
    job_start_expiry_s: float = Field(24 * 3600.0, ge=0, validation_alias=AliasChoices(
        "job_start_expiry_s", "LEARNING_MCP_JOB_START_EXPIRY_S"))
    # local model directories a caller without the key may name (os.pathsep-separated; the data dir always counts)
    model_roots: str = Field("", validation_alias=AliasChoices("model_roots", "LEARNING_MCP_MODEL_ROOTS"))
    env_files: tuple[str, ...] = ()
    environ: dict[str, str] = Field(default_factory=dict, repr=False, exclude=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)  # only load() reads the environment, so a Settings() in a test is hermetic

    @classmethod
    def load(cls, env_files: list[str] | tuple[str, ...] = (), *, environ: Mapping[str, str] | None = None,
             cwd: Path | None = None, **overrides: Any) -> "Settings":
        """Build the settings from the environment, env files and overrides (``None`` overrides are ignored).
        Raises ``FileNotFoundError`` for a missing env file and ``pydantic.ValidationError`` for a bad value."""
        env = load_env(list(env_files), environ=environ, cwd=cwd)
        values: dict[str, Any] = {k: v for k, v in env.items() if v != ""}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values, env_files=tuple(str(p) for p in env_files), environ=env)

    @property
    def api_key(self) -> str | None:
        return self.synth_api_key.get_secret_value() if self.synth_api_key else None

    @property
    def local_key(self) -> str | None:
        return self.backend_key.get_secret_value() if self.backend_key else None

    @property
    def allowed_key_env_names(self) -> frozenset[str]:
        return frozenset(v.strip() for v in self.allowed_key_envs.split(",") if v.strip())

    @property
    def identity_headers(self) -> dict[str, str]:
        """Synth's optional identity headers (``SYNTH_USER_ID`` → ``X-User-ID``, ``SYNTH_ORG_ID`` → ``X-Org-ID``)."""
        return identity_headers({"SYNTH_USER_ID": self.synth_user_id or "", "SYNTH_ORG_ID": self.synth_org_id or ""})

    def target(self) -> Target | None:
        """The configured remote learning API, or None for the embedded backend (:func:`resolve_target`)."""
        return resolve_target(backend_url=self.backend_url, env=self.environ)

    def resolved_data_dir(self) -> Path:
        """The data directory (created if missing): ``data_dir`` or the user's data directory."""
        return resolve_data_dir(self.data_dir)
