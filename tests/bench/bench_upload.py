"""Benchmark: ``LearningClient.upload_file`` (streaming multipart) against posting ``path.read_bytes()`` with httpx.

Usage::

    python tests/bench/bench_upload.py                      # 1 GiB file, both uploads, then delete everything
    python tests/bench/bench_upload.py --size-mb 256
    python tests/bench/bench_upload.py --baseline-size-mb 256   # when the baseline's copy of the file in memory
                                                                # would not fit: measure it on a smaller file

It generates an SFT JSONL file in constant memory, starts the embedded backend (``learning-mcp backend``) on
loopback with its own temporary data directory, and runs each upload in a fresh child process so that peak RSS
(``ru_maxrss``) is the client's alone:

(a) ``ours``: ``LearningClient.upload_file`` with a progress callback, as the ``upload_file`` tool calls it;
(b) ``baseline``: ``httpx.post(files={"file": (name, path.read_bytes())})``, the obvious way.

Between the two it waits for the backend to finish processing the first upload, so the second is not slowed by
it. It prints MB/s and peak RSS for both and exits non-zero when our client's peak RSS is 150 MB or more, or
the backend stored a different number of bytes than the file has.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAX_RSS_MB = 150.0
MIB = 1024 * 1024

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: conftest's backend helpers


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def generate(path: Path, size_bytes: int, seed: int = 0) -> int:
    """Write at least ``size_bytes`` of chat JSONL; memory stays flat (a fixed pool of lines, 4 MiB buffers)."""
    rng = random.Random(seed)
    words = ["the", "model", "learns", "sum", "of", "two", "numbers", "carefully", "answer", "step", "résumé",
             "naïve", "数字", "and", "then", "checks", "its", "work"]
    pool = []
    for _ in range(512):
        a, b = rng.randint(0, 10**6), rng.randint(0, 10**6)
        prose = " ".join(rng.choice(words) for _ in range(rng.randint(20, 200)))
        row = {"messages": [{"role": "system", "content": "You are a careful calculator."},
                            {"role": "user", "content": f"{prose}. What is {a}+{b}?"},
                            {"role": "assistant", "content": f"{a}+{b}={a + b}"}]}
        pool.append((json.dumps(row, ensure_ascii=False) + "\n").encode())
    written = 0
    with open(path, "wb") as fh:
        buffer, buffered = [], 0
        i = 0
        while written + buffered < size_bytes:
            line = pool[i % len(pool)]
            i += 1
            buffer.append(line)
            buffered += len(line)
            if buffered >= 4 * MIB:
                fh.write(b"".join(buffer))
                written += buffered
                buffer, buffered = [], 0
        fh.write(b"".join(buffer))
        written += buffered
    return written


# ------------------------------------------------------------------------------------------------
# one measured upload (run in a child process)
# ------------------------------------------------------------------------------------------------
def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_one(kind: str, path: Path, api: str) -> None:
    import httpx

    if kind == "ours":
        import anyio

        from learning_mcp.tools.client import LearningClient
        from learning_mcp.tools.settings import Target

        progress = {"calls": 0, "last": 0}

        async def on_progress(done: int, total: int) -> None:
            progress["calls"] += 1
            progress["last"] = done

        async def upload() -> dict:
            async with LearningClient(Target(api, "custom"), upload_timeout_s=3600) as client:
                return await client.upload_file(path, on_progress=on_progress)

        before = rss_mb()
        t0 = time.perf_counter()
        record = anyio.run(upload)
        seconds = time.perf_counter() - t0
        extra = {"progress_calls": progress["calls"], "progress_last": progress["last"]}
    else:
        before = rss_mb()
        t0 = time.perf_counter()
        response = httpx.post(f"{api}/learning/files", files={"file": (path.name, path.read_bytes(),
                                                                       "application/jsonl")},
                              data={"purpose": "fine-tune"}, timeout=3600)
        response.raise_for_status()
        record = response.json()
        seconds = time.perf_counter() - t0
        extra = {}
    print(json.dumps({"kind": kind, "seconds": seconds, "bytes": path.stat().st_size, "rss_before_mb": before,
                      "peak_rss_mb": rss_mb(), "file_id": record.get("id"), "stored_bytes": record.get("bytes"),
                      **extra}))


def measure(kind: str, path: Path, api: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--run-one", kind, "--path", str(path), "--api", api],
                          capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} upload failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wait_processed(api: str, file_id: str, timeout_s: float = 900) -> str:
    import httpx

    deadline = time.monotonic() + timeout_s
    status = "unknown"
    while time.monotonic() < deadline:
        status = httpx.get(f"{api}/learning/files/{file_id}", timeout=30).json().get("status", "unknown")
        if status != "processing":
            return status
        time.sleep(1)
    return status


def report(result: dict) -> str:
    mb = result["bytes"] / MIB
    return (f"{result['kind']:>8}: {mb:8.1f} MiB in {result['seconds']:6.2f} s = {mb / result['seconds']:7.1f} MiB/s, "
            f"peak RSS {result['peak_rss_mb']:7.1f} MB (after imports {result['rss_before_mb']:.1f} MB)")


# ------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024.0, help="size of the generated file (MiB)")
    parser.add_argument("--baseline-size-mb", type=float, default=None,
                        help="measure the baseline on a smaller file of this size (default: the same file)")
    parser.add_argument("--workdir", default=None, help="where to put the files (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files and backend data")
    parser.add_argument("--run-one", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        run_one(args.run_one, Path(args.path), args.api)
        return 0

    from conftest import start_backend

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-upload-"))
    work.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    backend = None
    try:
        data = work / "train.jsonl"
        t0 = time.perf_counter()
        size = generate(data, int(args.size_mb * MIB))
        print(f"generated {data} ({size / MIB:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
        baseline_path = data
        if args.baseline_size_mb is not None and args.baseline_size_mb < args.size_mb:
            baseline_path = work / "baseline.jsonl"
            generate(baseline_path, int(args.baseline_size_mb * MIB), seed=1)
            print(f"baseline measured on a smaller file: {baseline_path.stat().st_size / MIB:.1f} MiB")

        backend = start_backend(work / "backend-data",
                                env={"LEARNING_MCP_MAX_UPLOAD_BYTES": str(max(size, 1) * 4)})
        ours = measure("ours", data, backend.api)
        print(report(ours), f"({ours['progress_calls']} progress callbacks)")
        status = wait_processed(backend.api, ours["file_id"])
        print(f"backend processed {ours['file_id']}: {status}")
        baseline = measure("baseline", baseline_path, backend.api)
        print(report(baseline))

        print(f"throughput ours/baseline: {(ours['bytes'] / ours['seconds']) / (baseline['bytes'] / baseline['seconds']):.2f}x; "
              f"peak RSS ours/baseline: {ours['peak_rss_mb'] / baseline['peak_rss_mb']:.3f}")
        if ours["peak_rss_mb"] >= MAX_RSS_MB:
            failures.append(f"our client's peak RSS {ours['peak_rss_mb']:.1f} MB >= {MAX_RSS_MB:.0f} MB")
        if ours["stored_bytes"] != size:
            failures.append(f"backend stored {ours['stored_bytes']} bytes of {size}")
        if ours["progress_last"] != size:
            failures.append(f"last progress callback reported {ours['progress_last']} of {size} bytes")
    finally:
        if backend is not None:
            backend.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
