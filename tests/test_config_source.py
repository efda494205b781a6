"""One path-or-TOML rule for the SFT, loop and filter configs (issue 7): the same argument reads the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from learning_mcp.tools.config_source import CONFIG_ARG_HELP, config_path
from learning_mcp.tools.errors import LearningMCPError
from learning_mcp.tools.filtering import load_filter_config
from learning_mcp.tools.loop import LoopConfig, parse_loop_toml, sft_config_doc
from learning_mcp.tools.sft_config import load_config

DOC = """\
[loop]
base_model = "tiny"
tasks = "tasks.jsonl"

[filter]
output = "kept.jsonl"

[algorithm]
type = "offline"
method = "sft"
variety = "fft"

[job]
model = "tiny"

[hyperparameters]
n_epochs = 2
"""


def _read_all(arg):
    """What each of the three loaders makes of ``arg``: (sft dict, sft path), loop args, filter output."""
    sft, sft_path = load_config(arg)
    loop_args, _ = parse_loop_toml(arg)
    spec = load_filter_config(arg)
    return sft, sft_path, loop_args, spec


def test_an_existing_file_with_any_suffix_is_a_file_for_every_loader(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "x.cfg"  # not .toml: the loop loader used to read this as TOML text
    cfg.write_text(DOC)
    for arg in (str(cfg), "x.cfg", cfg):
        sft, sft_path, loop_args, spec = _read_all(arg)
        assert sft_path == cfg.resolve()
        assert sft["hyperparameters"] == {"n_epochs": 2}
        assert loop_args["tasks"] == str(tmp_path / "tasks.jsonl")  # relative to the file: it was read as a file
        assert spec.output == str(tmp_path / "kept.jsonl")  # idem
        assert config_path(arg) == cfg.resolve()


@pytest.mark.parametrize("arg", ["/no/such/dir/x.cfg", "missing-config", "configs/missing.toml", "dir[1]/x.toml"])
def test_a_missing_path_is_config_not_found_for_every_loader(tmp_path, monkeypatch, arg):
    monkeypatch.chdir(tmp_path)
    assert config_path(arg) is not None
    codes = []
    for load in (load_config, parse_loop_toml, load_filter_config):
        with pytest.raises(LearningMCPError) as caught:
            load(arg)
        codes.append(caught.value.code)
        assert "not found" in caught.value.message, caught.value.message
    assert codes == ["config_not_found"] * 3


@pytest.mark.parametrize("arg", [DOC, 'filter.output = "kept.jsonl"', "[filter]"])
def test_toml_text_is_text_for_every_loader(tmp_path, monkeypatch, arg):
    monkeypatch.chdir(tmp_path)
    assert config_path(arg) is None
    sft, sft_path = load_config(arg)
    assert sft_path is None and "filter" in sft
    loop_args, text = parse_loop_toml(arg)
    assert text == arg
    if "output" in str(arg):
        assert load_filter_config(arg).output == "kept.jsonl"  # text: relative paths stay as written


def test_loop_config_keeps_its_sft_sections_as_data(tmp_path):
    args, _ = parse_loop_toml(DOC)
    assert args["sft_config"] == {"algorithm": {"type": "offline", "method": "sft", "variety": "fft"},
                                  "job": {"model": "tiny"}, "hyperparameters": {"n_epochs": 2}}
    cfg = LoopConfig(**{k: v for k, v in args.items() if k != "output"})  # output: a filter-only key
    assert sft_config_doc(cfg.sft_config, "tiny") == args["sft_config"]
    assert sft_config_doc(cfg.sft_config, "tiny") is not cfg.sft_config  # a copy: overrides never leak back
    sft_file = tmp_path / "sft.conf"
    sft_file.write_text('[algorithm]\ntype = "offline"\n')
    assert sft_config_doc(str(sft_file), "tiny") == {"algorithm": {"type": "offline"}}
    assert sft_config_doc(None, "tiny")["job"] == {"model": "tiny"}


def test_the_rule_is_documented_in_the_tools_parameters():
    import anyio

    from learning_mcp.server.app import create_server
    from learning_mcp.tools.settings import Settings

    async def schemas():
        tools = await create_server(Settings()).list_tools()
        return {t.name: t.input_schema["properties"] for t in tools}

    props = anyio.run(schemas)
    for tool in ("create_job", "run_sft_loop", "filter_traces"):
        assert CONFIG_ARG_HELP in props[tool]["config"]["description"], tool
