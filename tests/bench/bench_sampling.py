"""Benchmark: sampling throughput of the backend's batched engine against one request at a time (goal >= 5x).

Usage::

    python tests/bench/bench_sampling.py                    # 64 prompts x n=1, 32 new tokens, 3 rounds
    python tests/bench/bench_sampling.py --prompts 128 --n 4 --max-tokens 64

It starts the embedded backend on loopback with the ``small`` tiny model and sends the same chat-completions
requests (temperature 1, ``max_tokens`` fixed, no stop) to ``POST /api/inference/v1/chat/completions``:

* ``batched`` — all at once (concurrent HTTP requests), as the loop's sampler and ``evaluate`` do; the engine
  coalesces them into few ``generate`` calls;
* ``sequential`` — one after the other, each awaited before the next (what a naive client does).

Throughput is completion tokens (``usage.completion_tokens``) per wall-clock second. One warm-up request loads
the model first, so neither side pays for it. Each round runs both sides (order alternating); it prints each
round, the median ratio, the backend's peak RSS (psutil, sampled every 50 ms) and the load average.
A GPU/vLLM comparison is not part of this script (no GPU here).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def bodies(model: str, prompts: int, n: int, max_tokens: int) -> list[dict]:
    return [{"model": model, "messages": [{"role": "user", "content": f"What is {i}+{i % 7}?"}], "n": n,
             "temperature": 1.0, "max_tokens": max_tokens, "seed": None} for i in range(prompts)]


async def run_side(url: str, reqs: list[dict], concurrent: bool) -> tuple[float, int]:
    import httpx

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=len(reqs))) as client:
        async def one(body: dict) -> int:
            r = await client.post(url, json=body)
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"])

        started = time.perf_counter()
        if concurrent:
            tokens = sum(await asyncio.gather(*(one(b) for b in reqs)))
        else:
            tokens = 0
            for body in reqs:
                tokens += await one(body)
        return time.perf_counter() - started, tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import psutil
    from conftest import start_backend
    from learning_mcp.backend.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="bench-sampling-"))
    model = str(build_tiny_model(work / "small", size="small", seed=0))
    backend = start_backend(work / "backend")
    peak = [0.0]
    stop = threading.Event()

    def sample_rss() -> None:
        proc = psutil.Process(backend.proc.pid)
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], proc.memory_info().rss / 2**20)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)

    threading.Thread(target=sample_rss, daemon=True).start()
    url = f"{backend.api}/inference/v1/chat/completions"
    reqs = bodies(model, args.prompts, args.n, args.max_tokens)
    try:
        asyncio.run(run_side(url, reqs[:1], False))  # load the model
        ratios = []
        for round_ in range(args.rounds):
            order = [True, False] if round_ % 2 == 0 else [False, True]
            got = {}
            for concurrent in order:
                seconds, tokens = asyncio.run(run_side(url, reqs, concurrent))
                got[concurrent] = tokens / seconds
            ratios.append(got[True] / got[False])
            print(f"round {round_ + 1}: batched {got[True]:.0f} tok/s vs sequential {got[False]:.0f} tok/s "
                  f"(x{ratios[-1]:.1f})", flush=True)
        print(f"MEDIAN batched/sequential sampling throughput: {statistics.median(ratios):.1f}x (goal >= 5x); "
              f"{args.prompts} requests x n={args.n}, max_tokens {args.max_tokens}")
        print(f"backend peak RSS {peak[0]:.0f} MB; load average: {os.getloadavg()}; cpus: {os.cpu_count()}")
    finally:
        stop.set()
        backend.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
