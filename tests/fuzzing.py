"""Seeded adversarial inputs for the dataset and config tools (used by ``test_fuzz.py`` and ``bench/bench_fuzz.py``).

Every generator is a pure function of a ``random.Random``: the same seed gives the same inputs, so a failure
found by the benchmark reproduces in the default test run. Inputs are built as *text* (JSONL lines, TOML
documents), not as Python objects, so they can carry what a JSON/TOML encoder would refuse to write: lone
surrogate escapes, integer literals past Python's 4,300-digit limit, NUL characters, nesting a thousand deep,
truncated lines and raw bytes.

The kinds come from issue 10's fuzzing pass (each one crashed a tool once) plus generic mutations of valid
examples: a random leaf replaced by a value of another type, a key dropped or renamed, a line cut short.
"""

from __future__ import annotations

import json
import random
from typing import Callable

# ------------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------------
HUGE_INT = "9" * 5000            # past sys.get_int_max_str_digits() (4,300)
LONE_SURROGATE = "\\ud800"       # a JSON escape for an unpaired surrogate: json accepts it, UTF-8 cannot encode it
WEIRD_STRINGS = ["", " ", "\\u0000", LONE_SURROGATE, "\\udfff\\ud800", "\u202e\u200b", "a" * 10_000,
                 "<|im_end|>", "{{ raise_exception('x') }}", "../../etc/passwd", "data:image/png;base64,@@@",
                 "ft:", "\\n\\n", "\U0001F600" * 50, "null", "NaN"]
WEIRD_VALUES = ["null", "true", "false", "0", "-1", "1e309", "-1e309", "NaN", "Infinity", HUGE_INT, "1.5",
                "[]", "{}", "[[[]]]", '{"": {}}', '[null]', '"x"', "2e-400", "-0"]


def deep_json(depth: int, *, kind: str = "list") -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


def _string(rng: random.Random) -> str:
    return '"' + rng.choice(WEIRD_STRINGS) + '"'


def _value(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.45:
        return rng.choice(WEIRD_VALUES)
    if roll < 0.85:
        return _string(rng)
    return deep_json(rng.choice([5, 100, 1000, 3000]), kind=rng.choice(["list", "dict"]))


def valid_examples(rng: random.Random) -> list[dict]:
    """Well-formed SFT examples of every shape the validator knows (chat, multi-turn with weights, tools,
    tool calls with string and object arguments, images, reasoning)."""
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    call_args = {"city": "Oslo"}
    return [
        {"messages": [{"role": "user", "content": f"{a}+{b}=?"}, {"role": "assistant", "content": str(a + b)}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello", "weight": 0}, {"role": "user", "content": "sum?"},
                      {"role": "assistant", "content": "3", "weight": 1}]},
        {"messages": [{"role": "user", "content": "weather?"},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": "c1", "type": "function",
                           "function": {"name": "get_weather", "arguments": json.dumps(call_args)}}]},
                      {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                      {"role": "assistant", "content": "It is sunny."}],
         "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
             "type": "object", "properties": {"city": {"type": "string"}}}}}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                   {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
                      {"role": "assistant", "content": "a dot"}]},
        {"messages": [{"role": "user", "content": "2+2"},
                      {"role": "assistant", "content": "4", "reasoning_content": "2 and 2 make 4"}]},
    ]


def _leaf_paths(node, path=()):
    if isinstance(node, dict):
        if not node:
            yield path
        for key, value in node.items():
            yield from _leaf_paths(value, path + (key,))
    elif isinstance(node, list):
        if not node:
            yield path
        for i, value in enumerate(node):
            yield from _leaf_paths(value, path + (i,))
    else:
        yield path


_MARK = "\x00__FUZZ__\x00"


def _replace(node, path, marker):
    if not path:
        return marker
    node = json.loads(json.dumps(node))
    cur = node
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = marker
    return node


def mutate_example(rng: random.Random, example: dict) -> str:
    """One JSONL line: ``example`` with one mutation applied, as text."""
    roll = rng.random()
    if roll < 0.55:  # a leaf (or whole sub-tree) replaced by a value of another type
        paths = list(_leaf_paths(example))
        path = rng.choice(paths)
        if path and rng.random() < 0.4:
            path = path[: rng.randint(0, len(path) - 1)]
        mutated = _replace(example, path, _MARK)
        return json.dumps(mutated, ensure_ascii=False).replace(json.dumps(_MARK), _value(rng))
    if roll < 0.7:  # a key dropped or renamed somewhere
        text = json.dumps(example)
        keys = [k for k in ("role", "content", "messages", "tool_calls", "function", "arguments", "name",
                            "tool_call_id", "type", "weight", "image_url", "url", "tools", "text") if f'"{k}"' in text]
        if keys:
            key = rng.choice(keys)
            new = rng.choice(['"' + key.upper() + '"', '"' + LONE_SURROGATE + '"', '""', '"' + key + '\\u0000"'])
            return text.replace(f'"{key}"', new, 1)
        return text
    if roll < 0.8:  # cut short
        text = json.dumps(example)
        return text[: rng.randint(0, len(text) - 1)]
    if roll < 0.88:  # extra top-level keys of odd types
        text = json.dumps(example)
        return text[:-1] + f', "{rng.choice(["weight", "metadata", "images", "messages", "x"])}": {_value(rng)}}}'
    if roll < 0.94:  # whole line replaced
        return rng.choice([_value(rng), "", " ", "\t", "{", "}", "[", "\ufeff{}", '{"messages": ' + _value(rng) + "}",
                           json.dumps(example) + " trailing", json.dumps(example) * 2])
    # content-part shape traps: non-string types inside parts
    part = rng.choice(['{"type": ' + _value(rng) + ', "text": "x"}', '{"type": "text", "text": ' + _value(rng) + "}",
                       '{"type": "image_url", "image_url": ' + _value(rng) + "}",
                       '{"type": "image_url", "image_url": {"url": ' + _value(rng) + "}}", _value(rng)])
    return ('{"messages": [{"role": "user", "content": [' + part + ']}, '
            '{"role": "assistant", "content": "ok"}]}')


def jsonl_lines(rng: random.Random, count: int) -> list[str]:
    """``count`` adversarial JSONL lines (about one in six left valid, so files mix good and bad lines)."""
    lines = []
    while len(lines) < count:
        example = rng.choice(valid_examples(rng))
        lines.append(json.dumps(example) if rng.random() < 0.16 else mutate_example(rng, example))
    return lines


# ------------------------------------------------------------------------------------------------------
# TOML configs
# ------------------------------------------------------------------------------------------------------
SFT_BASE = """[algorithm]
type = "offline"
method = "sft"
variety = "lora"

[job]
model = "MODEL"

[compute]
gpu_type = "H100"
gpu_count = 1

[hyperparameters]
n_epochs = 1
per_device_batch = 2
learning_rate = 5e-4
sequence_length = 256

[training]
mode = "lora"

[training.lora]
r = 8
alpha = 16
dropout = 0.05
target_modules = ["q_proj", "v_proj"]
"""

LOOP_BASE = """[loop]
base_model = "MODEL"
tasks = "TASKS"
iterations = 1
n = 2
verifier = "exact"

[hyperparameters]
n_epochs = 1
learning_rate = 5e-4
"""

FILTER_BASE = """[filter]
min_official_score = 0.5
limit = 10
output = "OUT"
"""

TOML_VALUES = ['""', '"x"', "0", "-1", "1.0e400", "nan", "inf", "-inf", "true", "[]", "[1, \"a\"]", "{}",
               "{ a = 1 }", "2024-01-01", "1979-05-27T07:32:00Z", '"\\u0000"', '"\\ud800"', '"' + "a" * 5000 + '"',
               "9" * 5000, '"' + "\\u0000" * 3 + '"', '"../../x"', '"ft:x:y"', "0x7fffffffffffffff",
               '"""multi\nline"""']


def mutate_toml(rng: random.Random, base: str) -> str:
    lines = base.splitlines()
    roll = rng.random()
    value_lines = [i for i, line in enumerate(lines) if "=" in line]
    if roll < 0.45 and value_lines:
        i = rng.choice(value_lines)
        key = lines[i].split("=", 1)[0]
        lines[i] = f"{key}= {rng.choice(TOML_VALUES)}"
    elif roll < 0.55:
        depth = rng.choice([50, 500, 1000, 3000])
        lines.append("deep = " + "[" * depth + "]" * depth)
    elif roll < 0.62:
        depth = rng.choice([100, 1000])
        lines.append("deep = " + "{ a = " * depth + "1" + " }" * depth)
    elif roll < 0.7 and value_lines:
        del lines[rng.choice(value_lines)]
    elif roll < 0.76:
        lines.insert(rng.randint(0, len(lines)), rng.choice(["[hyperparameters]", "[job]", "[[job]]", "[", "x =",
                                                             "= 1", "[a.b.c.d]", "\x00", "key = \"\x00\""]))
    elif roll < 0.82:
        text = "\n".join(lines)
        cut = rng.randint(0, len(text))
        return text[:cut]
    elif roll < 0.88:
        lines.append(rng.choice(["[lora]", "[training.lora]", "[model_config]", "[compute]"]))
        lines.append(f"{rng.choice(['r', 'alpha', 'dropout', 'target_modules', 'max_images_per_message', 'gpu_count', 'topology'])} = {rng.choice(TOML_VALUES)}")
    elif roll < 0.94:
        section = rng.choice(["hyperparameters", "training", "job", "algorithm", "data", "loop", "filter"])
        key = rng.choice(["n_epochs", "total_steps", "sequence_length", "learning_rate", "warmup_ratio",
                          "lora_dropout", "lora_rank", "per_device_batch", "gradient_accumulation_steps",
                          "model", "data", "validation_path", "mode", "variety", "type", "method", "iterations",
                          "n", "temperature", "max_tokens", "verifier", "threshold", "k", "seed"])
        lines.append(f"[{section}]")
        lines.append(f"{key} = {rng.choice(TOML_VALUES)}")
    else:
        return rng.choice(["", "\x00", "[", "a = 1\na = 2", "\ufeff[job]\nmodel = 1", "[job]\nmodel = \"\x00\"",
                           "[[algorithm]]\ntype = 1", "x" * 10_000])
    return "\n".join(lines) + "\n"


def toml_configs(rng: random.Random, count: int, base: str) -> list[str]:
    return [mutate_toml(rng, base) for _ in range(count)]


GENERATORS: dict[str, Callable[[random.Random, int], list[str]]] = {
    "jsonl": jsonl_lines,
    "sft_toml": lambda rng, n: toml_configs(rng, n, SFT_BASE),
    "loop_toml": lambda rng, n: toml_configs(rng, n, LOOP_BASE),
    "filter_toml": lambda rng, n: toml_configs(rng, n, FILTER_BASE),
}


# ------------------------------------------------------------------------------------------------------
# the runner: every input through the real MCP server over stdio
# ------------------------------------------------------------------------------------------------------
def _contains(exc: BaseException, kind: type) -> bool:
    if isinstance(exc, kind):
        return True
    return isinstance(exc, BaseExceptionGroup) and any(_contains(e, kind) for e in exc.exceptions)


def bare_error(name: str, result) -> str | None:
    """Why ``result`` is not an acceptable tool answer (None when it is): an error must carry ``[code]``."""
    text = "".join(getattr(c, "text", "") for c in result.content)
    if not result.is_error:
        return None
    body = text.split(f"Error executing tool {name}", 1)[-1].lstrip(": ").strip()
    if not body.startswith("[") or "]" not in body:
        return f"bare error: {text[:300]!r}"
    if "Traceback" in text:
        return f"traceback in error: {text[:300]!r}"
    return None


async def run_fuzz(*, seed: int, n_lines: int, n_configs: int, work, tiny_model: str, lines_per_file: int = 25,
                   call_timeout_s: float = 60.0, deadline_s: float | None = None, log=None) -> dict:
    """Send ``n_lines`` JSONL lines (in files of ``lines_per_file``, to validate_dataset and upload_file) and
    ``n_configs`` configs of each kind (create_job dry run, run_sft_loop, filter_traces) through the
    ``learning-mcp`` server over stdio. Returns counts: calls, bare errors (with examples), hangs, ok, coded
    errors. Stops early, with ``complete=False``, when ``deadline_s`` (monotonic seconds) passes."""
    import os
    import shutil
    import subprocess
    import sys
    import time
    from pathlib import Path

    import anyio
    from mcp import Client, MCPError, StdioServerParameters

    work = Path(work)
    rng = random.Random(seed)
    exe = shutil.which("learning-mcp") or str(Path(sys.executable).parent / "learning-mcp")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNTH_", "BACKEND_"))}
    data_dir = work / "data"
    env.update(LEARNING_MCP_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1")
    good = work / "good.jsonl"
    good.write_text("".join(json.dumps(e) + "\n" for e in valid_examples(random.Random(0))[:2]))
    tasks = work / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"{i}+1=?", "answer": str(i + 1)}) + "\n"
                             for i in range(6)))
    counts = {"calls": 0, "ok": 0, "coded_errors": 0, "bare_errors": 0, "hangs": 0, "server_crashes": 0, "lines": 0, "configs": 0,
              "examples": [], "complete": True}

    def out_of_time() -> bool:
        return deadline_s is not None and time.monotonic() > deadline_s

    class ServerDied(Exception):
        pass

    async def call(client, name: str, args: dict, label: str) -> None:
        counts["calls"] += 1
        try:
            with anyio.fail_after(call_timeout_s):
                result = await client.call_tool(name, args)
        except TimeoutError:
            counts["hangs"] += 1
            counts["examples"].append(f"HANG {name} {label}")
            return
        except MCPError as exc:
            if "closed" in str(exc).lower():
                counts["server_crashes"] += 1
                counts["examples"].append(f"SERVER DIED {name} {label}: {exc}")
                raise ServerDied from exc
            counts["bare_errors"] += 1  # a JSON-RPC error instead of a tool result
            counts["examples"].append(f"{name} {label}: JSON-RPC error {exc}")
            return
        problem = bare_error(name, result)
        if problem:
            counts["bare_errors"] += 1
            if len(counts["examples"]) < 20:
                counts["examples"].append(f"{name} {label}: {problem}")
        elif result.is_error:
            counts["coded_errors"] += 1
        else:
            counts["ok"] += 1
            if name == "run_sft_loop":  # a fuzzed config that really started a loop: stop it at once
                loop_id = (result.structured_content or {}).get("loop_id")
                if loop_id:
                    await client.call_tool("cancel_loop", {"loop_id": loop_id})

    calls: list[tuple[str, dict, str]] = []
    lines = jsonl_lines(rng, n_lines)
    for start in range(0, len(lines), lines_per_file):
        chunk = lines[start:start + lines_per_file]
        path = work / f"fuzz-{start}.jsonl"
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:
            fh.write("\n".join(chunk) + "\n")
        calls.append(("validate_dataset", {"path": str(path)}, f"{path.name}:{len(chunk)}"))
        if start % (lines_per_file * 8) == 0:
            calls.append(("upload_file", {"path": str(path)}, path.name))
    for kind in ("sft_toml", "loop_toml", "filter_toml"):
        for i, text in enumerate(GENERATORS[kind](rng, n_configs)):
            text = (text.replace("MODEL", tiny_model).replace("TASKS", str(tasks))
                    .replace("OUT", str(work / f"filtered-{i}.jsonl")))
            if kind == "sft_toml":
                calls.append(("create_job", {"config": text, "dataset": str(good), "dry_run": True}, f"{kind}#{i}"))
            elif kind == "loop_toml":
                calls.append(("run_sft_loop", {"config": text, "wait_seconds": 0}, f"{kind}#{i}"))
            else:
                calls.append(("filter_traces", {"config": text}, f"{kind}#{i}"))
    # non-string / wrong-typed arguments at the protocol level, and files that never end
    calls += [(name, args, json.dumps(args)[:60]) for name, args in [
        ("validate_dataset", {"path": 12}), ("validate_dataset", {"path": "\x00"}), ("create_job", {"config": "\x00"}),
        ("create_job", {"config": ["x"]}), ("upload_file", {"path": "/dev/zero"}),
        ("validate_dataset", {"path": "/dev/zero"}), ("filter_traces", {"config": {"a": 1}}),
        ("run_sft_loop", {"config": "\x00"})]]

    params = StdioServerParameters(command=exe, env=env, cwd=str(work))
    pending = list(calls)
    try:
        while pending and not out_of_time():
            try:
                async with Client(params, read_timeout_seconds=call_timeout_s + 30) as client:
                    while pending and not out_of_time():
                        name, args, label = pending.pop(0)
                        if name == "validate_dataset" and label.startswith("fuzz-"):
                            counts["lines"] += int(label.rsplit(":", 1)[1])
                        elif name in ("create_job", "run_sft_loop", "filter_traces") and "#" in label:
                            counts["configs"] += 1
                        await call(client, name, args, label)
            except BaseException as exc:  # noqa: BLE001 - the client's task group wraps a dead server
                if _contains(exc, ServerDied):
                    continue  # a new server process for the rest
                if "closed" in repr(exc).lower():
                    counts["server_crashes"] += 1
                    counts["examples"].append(f"SERVER DIED: {exc!r}"[:300])
                    continue
                raise
        counts["complete"] = not pending
    finally:
        try:
            subprocess.run([exe, "backend", "--stop", "--data-dir", str(data_dir)], capture_output=True, timeout=60,
                           env=env)
        except Exception:  # noqa: BLE001 - best effort
            pass
    if log:
        log(counts)
    return counts
