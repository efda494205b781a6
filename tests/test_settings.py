"""Where the learning API is and which key to use: env precedence, ``.env`` parsing, env files, the target."""

from __future__ import annotations

from pathlib import Path

import pytest

from learning_mcp.tools.settings import (SYNTH_DEFAULT_ORIGIN, Target, load_env, parse_env_file, redact,
                                         resolve_target)

KEY = "sk-test-SECRET123"


# ------------------------------------------------------------------------------------------------------
# resolve_target
# ------------------------------------------------------------------------------------------------------
def test_url_precedence_synth_backend_url_first():
    env = {"SYNTH_BACKEND_URL": "http://one:1", "BACKEND_BASE_URL": "http://two:2",
           "SYNTH_BACKEND_OVERRIDE": "http://three:3"}
    assert resolve_target(env=env).api_base == "http://one:1/api"
    env.pop("SYNTH_BACKEND_URL")
    assert resolve_target(env=env).api_base == "http://two:2/api"
    env.pop("BACKEND_BASE_URL")
    assert resolve_target(env=env).api_base == "http://three:3/api"


def test_empty_url_variables_are_skipped():
    env = {"SYNTH_BACKEND_URL": "", "BACKEND_BASE_URL": "", "SYNTH_BACKEND_OVERRIDE": "http://three:3/api/"}
    assert resolve_target(env=env).api_base == "http://three:3/api"


def test_explicit_argument_beats_every_variable():
    env = {"SYNTH_BACKEND_URL": "http://one:1", "SYNTH_API_KEY": KEY}
    target = resolve_target(backend_url="http://explicit:9/", env=env)
    assert target.api_base == "http://explicit:9/api" and target.kind == "custom" and target.api_key == KEY


def test_key_alone_means_synth_hosted():
    target = resolve_target(env={"SYNTH_API_KEY": KEY})
    assert target == Target(f"{SYNTH_DEFAULT_ORIGIN}/api", "synth", KEY)
    assert target.is_synth and target.chat_url == "https://api.usesynth.ai/api/inference/v1/chat/completions"


def test_nothing_means_embedded_backend():
    assert resolve_target(env={}) is None
    assert resolve_target(env={"SYNTH_API_KEY": "", "SYNTH_BACKEND_URL": ""}) is None
    # unrelated variables do not count
    assert resolve_target(env={"BACKEND_URL": "http://x", "SYNTH_KEY": KEY}) is None


@pytest.mark.parametrize("url, kind", [
    ("https://api.usesynth.ai", "synth"),
    ("https://agent-learning.onrender.com/api", "synth"),
    ("http://127.0.0.1:8765", "custom"),
])
def test_kind_follows_the_url(url, kind):
    assert resolve_target(env={"SYNTH_BACKEND_URL": url}).kind == kind


def test_url_without_synth_key_uses_the_local_backend_key():
    target = resolve_target(env={"SYNTH_BACKEND_URL": "http://h:1", "LEARNING_MCP_BACKEND_KEY": "local-key"})
    assert target.api_key == "local-key"
    target = resolve_target(env={"SYNTH_BACKEND_URL": "http://h:1", "LEARNING_MCP_BACKEND_KEY": "local-key",
                                 "SYNTH_API_KEY": KEY})
    assert target.api_key == KEY


def test_process_env_is_the_default(monkeypatch):
    for name in ("SYNTH_BACKEND_URL", "BACKEND_BASE_URL", "SYNTH_BACKEND_OVERRIDE", "SYNTH_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BACKEND_BASE_URL", "http://from-process:5")
    assert resolve_target().api_base == "http://from-process:5/api"


def test_the_key_stays_out_of_repr_and_describe():
    target = resolve_target(env={"SYNTH_API_KEY": KEY})
    assert KEY not in repr(target) and KEY not in str(target) and KEY not in target.describe()
    assert "key set" in target.describe()
    assert "no key" in Target("http://h/api", "custom").describe()


def test_redact():
    assert redact(f"Bearer {KEY} and again {KEY}", [KEY, None]) == "Bearer *** and again ***"
    assert redact("abc", ["", None, "ab"]) == "abc"  # too-short "secrets" are not treated as secrets


# ------------------------------------------------------------------------------------------------------
# .env files
# ------------------------------------------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_parse_env_file(tmp_path):
    path = write(tmp_path / "a.env", """\
# a comment line
   # an indented comment

PLAIN=value
SPACED = spaced value   
export EXPORTED=yes
export   EXPORTED_SPACES=also
DOUBLE="double quoted # not a comment"
SINGLE='single quoted'
INLINE=value # trailing comment
HASH_IN_VALUE=abc#def
EMPTY=
EQUALS=a=b=c
QUOTED_WITH_COMMENT="quoted" # and a comment
ESCAPED="say \\"hi\\"" # escapes are read as python-dotenv reads them
URL=https://api.usesynth.ai/api?x=1
no_equals_line
""")
    assert parse_env_file(path) == {
        "PLAIN": "value",
        "SPACED": "spaced value",
        "EXPORTED": "yes",
        "EXPORTED_SPACES": "also",
        "DOUBLE": "double quoted # not a comment",
        "SINGLE": "single quoted",
        "INLINE": "value",
        "HASH_IN_VALUE": "abc#def",
        "EMPTY": "",
        "EQUALS": "a=b=c",
        "QUOTED_WITH_COMMENT": "quoted",
        "ESCAPED": 'say "hi"',  # python-dotenv (the parser Synth uses) unescapes inside double quotes
        "URL": "https://api.usesynth.ai/api?x=1",
    }


def test_env_files_later_wins_and_override_the_process_env(tmp_path):
    first = write(tmp_path / "first.env", "SYNTH_API_KEY=first\nONLY_FIRST=1\nSYNTH_BACKEND_URL=http://first:1\n")
    second = write(tmp_path / "second.env", "SYNTH_API_KEY=second\nONLY_SECOND=2\n")
    env = load_env([str(first), str(second)], environ={"SYNTH_BACKEND_URL": "http://process:9", "HOME": "/h"},
                   cwd=tmp_path)
    assert env["SYNTH_API_KEY"] == "second" and env["ONLY_FIRST"] == "1" and env["ONLY_SECOND"] == "2"
    # an explicitly passed file takes precedence (Synth's `--env FILE`), and the rest of the env is kept
    assert env["SYNTH_BACKEND_URL"] == "http://first:1" and env["HOME"] == "/h"
    env = load_env([str(second), str(first)], environ={}, cwd=tmp_path)
    assert env["SYNTH_API_KEY"] == "first"


def test_cwd_dotenv_fills_gaps_only(tmp_path):
    write(tmp_path / ".env", "SYNTH_API_KEY=from-dotenv\nSYNTH_BACKEND_URL=http://dotenv:1\n")
    env = load_env([], environ={"SYNTH_API_KEY": "from-process"}, cwd=tmp_path)
    assert env["SYNTH_API_KEY"] == "from-process"  # never overrides the process env
    assert env["SYNTH_BACKEND_URL"] == "http://dotenv:1"  # but fills what is missing
    target = resolve_target(env=env)
    assert target.api_base == "http://dotenv:1/api" and target.api_key == "from-process"


def test_explicit_env_file_beats_cwd_dotenv(tmp_path):
    write(tmp_path / ".env", "SYNTH_API_KEY=from-dotenv\nDOTENV_ONLY=1\n")
    explicit = write(tmp_path / "explicit.env", "SYNTH_API_KEY=from-explicit\n")
    env = load_env([str(explicit)], environ={}, cwd=tmp_path)
    assert env["SYNTH_API_KEY"] == "from-explicit"
    assert "DOTENV_ONLY" not in env  # with --env-file the working directory's .env is not read


def test_no_dotenv_anywhere(tmp_path):
    assert load_env([], environ={"A": "1"}, cwd=tmp_path) == {"A": "1"}


def test_missing_env_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="env file not found"):
        load_env([str(tmp_path / "nope.env")], environ={}, cwd=tmp_path)


def test_load_env_does_not_touch_os_environ(tmp_path, monkeypatch):
    monkeypatch.delenv("LEARNING_MCP_SETTINGS_TEST", raising=False)
    env_file = write(tmp_path / "x.env", "LEARNING_MCP_SETTINGS_TEST=1\n")
    assert load_env([str(env_file)], cwd=tmp_path)["LEARNING_MCP_SETTINGS_TEST"] == "1"
    import os

    assert "LEARNING_MCP_SETTINGS_TEST" not in os.environ
