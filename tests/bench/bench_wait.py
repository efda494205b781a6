"""Benchmark: time from a job's end to ``get_job_status(wait_seconds=…)`` returning it (goal <= 1 s).

Usage::

    python tests/bench/bench_wait.py              # 5 jobs on the tiny model
    python tests/bench/bench_wait.py --jobs 10

It starts the embedded backend on loopback, and for each job calls :func:`learning_mcp.tools.jobs.job_status`
— the function behind the MCP tool ``get_job_status`` — the way an agent does: ``wait_seconds=30`` with the
previous ``next_since_seq``, again and again until the status is terminal. The latency of a job is the wall
clock of the call's return minus the job's ``finished_at`` (the backend's own timestamp, same machine clock).
It prints each latency, their median and maximum, and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def _epoch(iso: str) -> float:
    return dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


async def one_job(api: str, model: str, file_id: str, steps: int) -> tuple[float, int]:
    from learning_mcp.tools.client import LearningClient
    from learning_mcp.tools.jobs import TERMINAL_STATUSES, job_status
    from learning_mcp.tools.settings import Target

    async with LearningClient(Target(api_base=api, kind="local")) as client:
        job = await client._http.post("learning/jobs", json={
            "model": model, "training_type": "sft_offline", "training_file_id": file_id,
            "hyperparameters": {"total_steps": steps, "per_device_batch": 4, "learning_rate": 1e-3}})
        job_id = job.json()["id"]
        await client._http.post(f"learning/jobs/{job_id}/start")
        since, calls = 0, 0
        while True:
            snap = await job_status(client, job_id, since_seq=since, wait_seconds=30)
            returned = time.time()
            calls += 1
            since = snap.next_since_seq
            if snap.record.status in TERMINAL_STATUSES:
                return returned - _epoch(snap.record.finished_at), calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    from bench_train import upload_ready
    from conftest import arithmetic_rows, start_backend
    from learning_mcp.backend.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="bench-wait-"))
    model = build_tiny_model(work / "tiny", size="tiny", seed=0)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_rows(32)))
    backend = start_backend(work / "backend")
    try:
        rec = {"id": upload_ready(backend.api, data)}
        latencies = []
        for i in range(args.jobs):
            latency, calls = asyncio.run(one_job(backend.api, str(model), rec["id"], args.steps))
            latencies.append(latency)
            print(f"job {i + 1}: returned {latency:.3f} s after the job finished ({calls} get_job_status calls)",
                  flush=True)
        print(f"MEDIAN end -> get_job_status return: {statistics.median(latencies):.3f} s; max {max(latencies):.3f} s "
              f"(goal <= 1 s)")
        print(f"load average: {os.getloadavg()}; cpus: {os.cpu_count()}")
    finally:
        backend.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
