"""Benchmark: ``learning_mcp.tools.dataset.validate_jsonl`` against a plain ``json.loads`` validator.

Usage::

    python tests/bench/bench_validate.py --size-mb 1024            # generate a file, measure, delete it
    python tests/bench/bench_validate.py --path existing.jsonl     # measure an existing file

It generates a realistic SFT JSONL file (plain chats, tool-call conversations with flat and OpenAI-style tool
definitions, a few image parts as short data URLs, non-ASCII text, a few invalid lines) in constant memory,
then runs, each in a fresh subprocess so that peak RSS is measured separately:

(a) ``baseline``: the straightforward validator below (text mode, ``json.loads`` per line, one function per
    rule, statistics kept in lists), implementing the same rules;
(b) ``ours``: ``validate_jsonl``.

It prints MB/s for both, the ratio and both peak RSS figures, checks that both report the same error
count, and exits non-zero when the ratio is below 3, our peak RSS is 150 MB or more, or the counts differ.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

MIN_RATIO = 3.0
MAX_RSS_MB = 150.0
ROLES = {"system", "developer", "user", "assistant", "tool"}
IMAGE_FORMATS = {"png", "jpeg", "jpg", "webp", "gif"}


# ------------------------------------------------------------------------------------------------
# (a) Baseline: a plain json.loads-per-line validator with the same rules.
# ------------------------------------------------------------------------------------------------


class RecordError(Exception):
    pass


def baseline_image_url_ok(url: Any) -> bool:
    if not isinstance(url, str) or not url.strip():
        return False
    if url.startswith("http://") or url.startswith("https://"):
        host = url.split("://", 1)[1].split("/", 1)[0]
        return bool(host) and not any(ch.isspace() for ch in url)
    if url.lower().startswith("data:"):
        header, _, payload = url.partition(",")
        media, _, encoding = header[5:].partition(";")
        if not media.lower().startswith("image/") or media.lower()[6:] not in IMAGE_FORMATS:
            return False
        if encoding.lower() != "base64" or not payload or len(payload) % 4:
            return False
        try:
            base64.b64decode(payload, validate=True)
        except ValueError:
            return False
        return True
    return False


def baseline_check_parts(parts: list, i: int, role: str, max_images: int | None, problems: list) -> tuple[int, int]:
    chars = 0
    images = 0
    for p, part in enumerate(parts):
        if not isinstance(part, dict):
            problems.append(("invalid_content_part", f"message {i} part {p} is not an object"))
            continue
        kind = part.get("type")
        if kind == "text":
            if isinstance(part.get("text"), str):
                chars += len(part["text"])
            else:
                problems.append(("invalid_content_part", f"message {i} part {p} text"))
        elif kind in ("image_url", "image"):
            images += 1
            if kind == "image_url":
                url = part.get("image_url")
            else:
                url = part.get("image", part.get("image_url", part.get("url")))
            if isinstance(url, dict):
                url = url.get("url")
            if not baseline_image_url_ok(url):
                problems.append(("invalid_image_url", f"message {i} part {p} bad image"))
        elif not isinstance(kind, str) or not kind:
            problems.append(("invalid_content_part", f"message {i} part {p} has no type"))
    if images and role == "assistant":
        problems.append(("image_in_assistant", f"message {i} image in assistant"))
    if images and max_images is not None and images > max_images:
        problems.append(("image_limit", f"message {i} too many images"))
    return chars, images


def baseline_check_tool_call(call: Any, j: int, problems: list, ids: set, names: list) -> int:
    if not isinstance(call, dict):
        raise RecordError(f"tool_call {j} is not an object")
    name = None
    arguments = None
    if isinstance(call.get("function"), dict):
        fn = call["function"]
        name = fn.get("name") if isinstance(fn.get("name"), str) else None
        arguments = fn.get("arguments")
    if name is None and isinstance(call.get("name"), str):
        name = call["name"]
        arguments = call.get("arguments")
    if not isinstance(name, str) or not name.strip():
        raise RecordError(f"tool_call {j} missing function name")
    names.append(name)
    chars = len(name)
    if isinstance(arguments, str):
        chars += len(arguments)
        try:
            if not isinstance(json.loads(arguments), dict):
                problems.append(("invalid_tool_call", "arguments must encode an object"))
        except ValueError:
            problems.append(("invalid_tool_call", "arguments is not JSON"))
    elif isinstance(arguments, dict):
        chars += len(json.dumps(arguments, separators=(",", ":"), ensure_ascii=False))
    elif arguments is not None:
        problems.append(("invalid_tool_call", "arguments has a bad type"))
    if call.get("id") is not None:
        ids.add(str(call["id"]))
    return chars


def baseline_check_message(msg: Any, i: int, problems: list, ids: set, names: list, max_images: int | None) -> dict:
    if not isinstance(msg, dict):
        raise RecordError(f"message {i} is not an object")
    role = msg.get("role")
    if not isinstance(role, str) or not role.strip():
        raise RecordError(f"message {i} has invalid role")
    if role not in ROLES:
        problems.append(("unknown_role", f"message {i} unknown role"))
    content = msg.get("content")
    chars = 0
    images = 0
    if isinstance(content, str):
        chars += len(content)
    elif isinstance(content, (list, dict)):
        parts = content if isinstance(content, list) else [content]
        chars, images = baseline_check_parts(parts, i, role, max_images, problems)
    elif content is not None:
        raise RecordError(f"message {i} has unsupported content type {type(content).__name__}")
    calls = msg.get("tool_calls")
    n_calls = 0
    if calls is not None:
        if not isinstance(calls, (list, tuple)):
            raise RecordError(f"message {i} tool_calls must be a list")
        for j, call in enumerate(calls):
            chars += baseline_check_tool_call(call, j, problems, ids, names)
        n_calls = len(calls)
    if msg.get("name") is not None and not isinstance(msg.get("name"), str):
        raise RecordError(f"message {i} name must be a string if present")
    for key in ("reasoning", "raw_content"):
        if msg.get(key) is not None and not isinstance(msg.get(key), str):
            raise RecordError(f"message {i} {key} must be a string if present")
    if isinstance(msg.get("reasoning"), str):
        chars += len(msg["reasoning"])
    trained = True
    weight = msg.get("weight")
    if weight is not None:
        if role != "assistant":
            problems.append(("invalid_weight", f"message {i} weight on non-assistant"))
        elif type(weight) is not int or weight not in (0, 1):
            problems.append(("invalid_weight", f"message {i} weight must be 0 or 1"))
        elif weight == 0:
            trained = False
    if role == "tool":
        if msg.get("tool_call_id") is None:
            problems.append(("missing_tool_call_id", f"message {i} no tool_call_id"))
        elif str(msg["tool_call_id"]) not in ids:
            problems.append(("unknown_tool_call_id", f"message {i} unknown tool_call_id"))
    return {"role": role, "chars": chars, "images": images, "calls": n_calls, "trained": trained}


def baseline_check_record(record: Any, min_messages: int, max_images: int | None) -> tuple[list, dict | None]:
    problems: list = []
    try:
        if not isinstance(record, dict):
            raise RecordError("record is not an object")
        messages = record.get("messages")
        if not isinstance(messages, (list, str)):
            raise RecordError("missing messages[] list")
        if len(messages) < min_messages:
            raise RecordError(f"missing messages[] with at least {min_messages} turns")
        ids: set = set()
        names: list = []
        infos = [baseline_check_message(m, i, problems, ids, names, max_images) for i, m in enumerate(messages)]
        tools = record.get("tools")
        tool_names = set()
        if tools is not None:
            if not isinstance(tools, (list, str)):
                raise RecordError("tools must be provided as a list when present")
            for k, tool in enumerate(tools):
                if not isinstance(tool, dict):
                    raise RecordError(f"tool {k} is not an object")
                definition = tool
                nested = tool.get("type") == "function" and isinstance(tool.get("function"), dict)
                if tool.get("name") is None and nested:
                    definition = tool["function"]
                name = definition.get("name")
                if not isinstance(name, str) or not name.strip():
                    raise RecordError(f"tool {k} missing name")
                if definition.get("description") is not None and not isinstance(definition.get("description"), str):
                    raise RecordError(f"tool {k} description must be a string if present")
                if definition.get("parameters") is not None and not isinstance(definition.get("parameters"), dict):
                    raise RecordError(f"tool {k} parameters must be an object if present")
                tool_names.add(name)
        if record.get("metadata") is not None and not isinstance(record.get("metadata"), dict):
            raise RecordError("metadata must be an object if present")
    except RecordError as exc:
        return [("synth", str(exc))], None
    if not any(info["role"] == "assistant" for info in infos):
        problems.append(("no_assistant_message", "no assistant message"))
    undefined = sum(1 for name in names if tool_names and name not in tool_names)
    summary = {
        "messages": len(infos),
        "tokens": math.ceil(sum(info["chars"] for info in infos) / 4),
        "assistants": sum(1 for info in infos if info["role"] == "assistant"),
        "images": sum(info["images"] for info in infos),
        "calls": sum(info["calls"] for info in infos),
        "roles": [info["role"] for info in infos],
        "has_tools": bool(tools),
        "undefined": undefined,
    }
    return problems, summary


def baseline_validate(path: str, min_messages: int = 2) -> dict:
    errors: list = []
    examples = 0
    blank = 0
    messages_per_example: list = []
    tokens_per_example: list = []
    roles: dict = {}
    totals = {"assistants": 0, "images": 0, "calls": 0, "with_tools": 0, "with_images": 0, "undefined": 0}
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                examples += 1
                errors.append((number, "invalid_utf8"))
                continue
            line = line.strip()
            if not line:
                blank += 1
                continue
            examples += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append((number, f"invalid JSON ({exc.msg})"))
                continue
            problems, summary = baseline_check_record(record, min_messages, None)
            errors.extend((number, problem) for problem in problems)
            if summary is not None:
                messages_per_example.append(summary["messages"])
                tokens_per_example.append(summary["tokens"])
                for role in summary["roles"]:
                    roles[role] = roles.get(role, 0) + 1
                totals["assistants"] += summary["assistants"]
                totals["images"] += summary["images"]
                totals["calls"] += summary["calls"]
                totals["with_tools"] += summary["has_tools"]
                totals["with_images"] += bool(summary["images"])
                totals["undefined"] += summary["undefined"]

    def describe(values: list) -> dict:
        if not values:
            return {}
        ordered = sorted(values)
        return {
            "min": ordered[0],
            "mean": sum(ordered) / len(ordered),
            "p95": ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)],
            "max": ordered[-1],
        }

    return {
        "examples": examples,
        "error_total": len(errors),
        "blank_lines": blank,
        "messages_per_example": describe(messages_per_example),
        "tokens_per_example": describe(tokens_per_example),
        "roles": roles,
        **totals,
    }


# ------------------------------------------------------------------------------------------------
# Data generation (constant memory: a bounded pool of distinct records, sampled until the size is reached)
# ------------------------------------------------------------------------------------------------

ASCII_WORDS = (
    "the model answer question tool call function data value result user assistant system please "
    "compute list file weather city temperature because therefore however example train learning rate "
    "step loss epoch token batch gradient python json schema parse error return string number object "
    "I you we it is are was can will should would this that with from for and or not in on at to of"
).split()
NON_ASCII_WORDS = "café naïve résumé über straße “quoted” it’s 東京 数据 模型 😀 ✓ → ≥".split()
MULTILINGUAL_SHARE = 0.2  # share of records whose text mixes in non-ASCII words (accents, quotes, CJK, emoji)


_multilingual_record = False  # set per generated record by build_pool


def random_text(rng: random.Random, low: int, high: int) -> str:
    words = ASCII_WORDS + NON_ASCII_WORDS if _multilingual_record else ASCII_WORDS
    return " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))


def tiny_png_data_url(rng: random.Random) -> str:
    pixels = bytes(rng.randrange(256) for _ in range(3 * 4 * 4))
    raw = b"".join(b"\x00" + pixels[row * 12 : row * 12 + 12] for row in range(4))
    body = zlib.compress(raw)
    png = b"\x89PNG\r\n\x1a\n" + body  # enough for a realistic-looking, valid base64 payload
    return "data:image/png;base64," + base64.b64encode(png).decode()


def tool_definitions(rng: random.Random) -> list:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}}
    if rng.random() < 0.5:
        return [{"name": "get_weather", "description": "Weather for a city", "parameters": parameters},
                {"name": "search", "description": "Search the web", "parameters": {"type": "object"}}]
    return [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": parameters}},
        {"type": "function", "function": {"name": "search", "description": "Search", "parameters": {"type": "object"}}},
    ]


def plain_chat(rng: random.Random) -> dict:
    messages = [{"role": "system", "content": random_text(rng, 5, 40)}]
    for _ in range(rng.randint(1, 4)):
        messages.append({"role": "user", "content": random_text(rng, 5, 120)})
        messages.append({"role": "assistant", "content": random_text(rng, 10, 400)})
    record: dict = {"messages": messages}
    if rng.random() < 0.3:
        record["metadata"] = {"source": "synthetic", "seed": rng.randint(0, 10**6)}
    return record


def tool_chat(rng: random.Random) -> dict:
    call_id = f"call_{rng.randint(0, 10**9)}"
    arguments = json.dumps({"city": rng.choice(["Paris", "Tokyo", "Lima"]), "unit": "c"})
    return {
        "messages": [
            {"role": "system", "content": random_text(rng, 5, 30)},
            {"role": "user", "content": random_text(rng, 5, 60)},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"temp": rng.randint(-10, 35)})},
            {"role": "assistant", "content": random_text(rng, 10, 120), "weight": 1},
        ],
        "tools": tool_definitions(rng),
    }


def image_chat(rng: random.Random) -> dict:
    return {"messages": [
        {"role": "user", "content": [{"type": "text", "text": random_text(rng, 3, 30)},
                                     {"type": "image_url", "image_url": {"url": tiny_png_data_url(rng)}}]},
        {"role": "assistant", "content": random_text(rng, 10, 150)},
    ]}


INVALID_LINES = [
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]',  # truncated
    '{"messages": [{"role": "user", "content": "no answer"}, {"role": "user", "content": "still"}]}',
    '{"messages": [{"role": "wizard", "content": "a"}, {"role": "assistant", "content": "b"}]}',
    '{"messages": [{"role": "user", "content": "a", "weight": 1}, {"role": "assistant", "content": "b"}]}',
    '{"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "b"}]}',
    '{"prompt": "legacy", "completion": "format"}',
]


def build_pool(rng: random.Random, size: int) -> list[bytes]:
    global _multilingual_record
    pool = []
    for _ in range(size):
        _multilingual_record = rng.random() < MULTILINGUAL_SHARE
        roll = rng.random()
        if roll < 0.70:
            record = plain_chat(rng)
        elif roll < 0.95:
            record = tool_chat(rng)
        else:
            record = image_chat(rng)
        pool.append(json.dumps(record, ensure_ascii=rng.random() < 0.5).encode() + b"\n")
    return pool


def generate(path: Path, size_bytes: int, seed: int = 1234) -> int:
    rng = random.Random(seed)
    pool = build_pool(rng, 4000)
    written = 0
    lines = 0
    with open(path, "wb", buffering=1 << 20) as out:
        while written < size_bytes:
            if rng.random() < 0.001:
                line = rng.choice(INVALID_LINES).encode() + b"\n"
            elif rng.random() < 0.0005:
                line = b"\n"
            else:
                line = pool[rng.randrange(len(pool))]
            out.write(line)
            written += len(line)
            lines += 1
    return lines


# ------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------


def run_one(kind: str, path: str) -> None:
    """Child process: run one validator, print a JSON line with time, errors and peak RSS."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from learning_mcp.tools.dataset import validate_jsonl  # imported before timing, for both runs

    started = time.perf_counter()
    cpu_started = os.times()
    if kind == "baseline":
        result = baseline_validate(path)
        error_total, examples = result["error_total"], result["examples"]
    else:
        report = validate_jsonl(path)
        error_total, examples = report.error_total, report.examples
    elapsed = time.perf_counter() - started
    cpu_ended = os.times()
    cpu_seconds = sum(getattr(cpu_ended, name) - getattr(cpu_started, name)
                      for name in ("user", "system", "children_user", "children_system"))
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers_rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # largest worker, if any
    print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu_seconds, "error_total": error_total,
                      "examples": examples, "rss_kb": rss_kb, "workers_rss_kb": workers_rss_kb}))


def tree_rss_bytes(process: Any) -> int:
    """Resident memory of a process and all its descendants (worker processes included)."""
    import psutil

    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(kind: str, path: Path) -> dict:
    """Run one validator in a fresh subprocess; add the peak RSS of its whole process tree (sampled)."""
    import psutil

    child = subprocess.Popen(
        [sys.executable, __file__, "--run-one", kind, "--path", str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    watched = psutil.Process(child.pid)
    peak_tree = 0
    while child.poll() is None:
        peak_tree = max(peak_tree, tree_rss_bytes(watched))
        time.sleep(0.01)
    output = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        raise RuntimeError(f"{kind} run failed with exit code {child.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    result["tree_rss_mb"] = max(peak_tree / (1024 * 1024), result["rss_kb"] / 1024)
    return result


def fastest(best: dict | None, result: dict) -> dict:
    """Keep the faster run; peak RSS is the largest seen over all runs."""
    if best is None:
        return result
    chosen = dict(result if result["seconds"] < best["seconds"] else best)
    for key in ("tree_rss_mb", "rss_kb", "workers_rss_kb"):  # cpu_seconds stays the chosen run's
        chosen[key] = max(best[key], result[key])
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=256.0, help="size of the generated file (MiB)")
    parser.add_argument("--path", help="validate this existing file instead of generating one")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each validator N times (alternating) and keep the fastest run of each")
    parser.add_argument("--run-one", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        run_one(args.run_one, args.path)
        return 0

    temp_dir = None
    if args.path:
        path = Path(args.path)
    else:
        temp_dir = Path(tempfile.mkdtemp(prefix="bench_validate_"))
        path = temp_dir / "bench.jsonl"
        started = time.perf_counter()
        lines = generate(path, int(args.size_mb * 1024 * 1024))
        print(f"generated {path} ({lines} lines) in {time.perf_counter() - started:.1f}s")
    try:
        size_mb = path.stat().st_size / (1024 * 1024)
        baseline, ours = None, None
        for _ in range(max(1, args.repeat)):
            baseline = fastest(baseline, measure("baseline", path))
            ours = fastest(ours, measure("ours", path))
        assert baseline is not None and ours is not None
    finally:
        if temp_dir is not None and not args.keep:
            shutil.rmtree(temp_dir, ignore_errors=True)

    baseline_speed = size_mb / baseline["seconds"]
    ours_speed = size_mb / ours["seconds"]
    ratio = ours_speed / baseline_speed
    ours_rss_mb = ours["tree_rss_mb"]
    print(f"file:      {size_mb:.1f} MiB, {ours['examples']} examples, cpus {os.cpu_count()}")
    for name, result, speed in (("baseline", baseline, baseline_speed), ("ours", ours, ours_speed)):
        print(
            f"{name + ':':10s} {speed:8.1f} MB/s  {result['seconds']:7.2f}s  peak RSS {result['tree_rss_mb']:6.1f} MB"
            f" (process tree, sampled; main {result['rss_kb'] / 1024:.1f} MB, largest worker "
            f"{result['workers_rss_kb'] / 1024:.1f} MB)  errors {result['error_total']}"
        )
    print(f"ratio:     {ratio:.2f}x (need >= {MIN_RATIO})")
    cpu_ratio = baseline["cpu_seconds"] / ours["cpu_seconds"]
    print(f"cpu time:  baseline {baseline['cpu_seconds']:.2f}s, ours {ours['cpu_seconds']:.2f}s (workers included): "
          f"{cpu_ratio:.2f}x less; 1-minute load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    failures = []
    if ratio < MIN_RATIO:
        failures.append(f"throughput ratio {ratio:.2f} < {MIN_RATIO}")
    if ours_rss_mb >= MAX_RSS_MB:
        failures.append(f"peak RSS {ours_rss_mb:.1f} MB >= {MAX_RSS_MB} (process tree)")
    if baseline["error_total"] != ours["error_total"] or baseline["examples"] != ours["examples"]:
        failures.append(
            f"error counts differ: baseline {baseline['error_total']} in {baseline['examples']} examples, "
            f"ours {ours['error_total']} in {ours['examples']}"
        )
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
