"""Benchmark: multi-process training on one node — 2 processes (torchrun, gloo, CPU) vs 1, same global batch.

Usage::

    python tests/bench/bench_scaling.py                  # 3 rounds, small tiny model, 512 rows, global batch 16
    python tests/bench/bench_scaling.py --rounds 5 --global-batch 32

Both jobs run through the embedded backend on the same data with ``global_batch`` fixed (so the same number of
optimizer steps and the same examples per step): one with ``[compute] gpu_type = "cpu", gpu_count = 1``, one
with ``gpu_count = 2`` (two ranks under torchrun; backend/distributed.py). It prints per round the steady-state
tokens/s (the ``sft.training.finish`` event: tokens seen by all ranks / training wall time), the end-to-end time
(start → succeeded, fixed costs included: a second process start, imports, process-group setup), the peak RSS
of the worker's process tree, and at the end the median ratios and the load average. On a 2-core machine shared
with other work, 2 processes can be slower than 1: the ratio measures this machine, not the method.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3)
    args = parser.parse_args()

    from bench_train import rows, run_job, upload_ready
    from conftest import start_backend
    from learning_mcp.backend.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    model_dir = build_tiny_model(work / "small", size="small", seed=0)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(args.rows)))
    backend = start_backend(work / "backend")
    hp = {"n_epochs": args.epochs, "global_batch": args.global_batch, "learning_rate": args.lr}
    try:
        rec = {"id": upload_ready(backend.api, data)}
        results = []
        for round_ in range(args.rounds):
            got = {}
            for world in ([1, 2] if round_ % 2 == 0 else [2, 1]):
                got[world] = run_job(backend.api, model_dir, rec["id"], args, gpu_count=world, hyperparameters=hp)
            results.append(got)
            one, two = got[1], got[2]
            print(f"round {round_ + 1}: steady tok/s 2 procs {two['tok_s']:.0f} vs 1 proc {one['tok_s']:.0f} "
                  f"(x{two['tok_s'] / one['tok_s']:.2f}); end-to-end s {two['wall_s']:.1f} vs {one['wall_s']:.1f}; "
                  f"steps {two['steps']} vs {one['steps']}; tokens {two['tokens']} vs {one['tokens']}; "
                  f"mean loss {two['loss']:.3f} vs {one['loss']:.3f}; peak RSS MB {two['peak_rss_mb']:.0f} vs "
                  f"{one['peak_rss_mb']:.0f}", flush=True)
        steady = statistics.median(r[2]["tok_s"] / r[1]["tok_s"] for r in results)
        e2e = statistics.median(r[1]["wall_s"] / r[2]["wall_s"] for r in results)
        print(f"MEDIAN steady-state throughput 2 processes / 1 process: {steady:.2f}")
        print(f"MEDIAN end-to-end speed 2 processes / 1 process: {e2e:.2f}")
        print(f"load average: {os.getloadavg()}; cpus: {os.cpu_count()}")
    finally:
        backend.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
