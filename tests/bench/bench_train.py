"""Benchmark: training throughput of a backend job against a bare TRL ``SFTTrainer`` script, side by side.

Usage::

    python tests/bench/bench_train.py                 # 3 rounds, small tiny model, 384 rows x 2 epochs
    python tests/bench/bench_train.py --rounds 5 --rows 512 --epochs 1
    python tests/bench/bench_train.py --profile       # also cProfile the trainer in-process (top 25 by cumtime)

Both sides train the same ``small`` tiny model (``learning-mcp tiny-model --size small``) on the same rows
(``a+b=?`` chat pairs), with the same settings: ``per_device_batch``, learning rate, epochs, ``max_length``, CPU,
fp32, no saving until the end. Each round runs the two one after the other (order alternates between rounds) and
prints, for each side:

* ``steady tok/s`` — non-padding input tokens seen by the Trainer divided by the wall time of ``trainer.train()``
  (steady state; the backend's ``sft.training.finish`` event reports it, the baseline measures it the same way);
* ``end-to-end s`` — fixed costs included: for the job, ``POST /start`` → status ``succeeded`` (worker process
  start, imports, tokenisation, training, saving, events); for the baseline, its process start → exit;
* ``peak RSS`` — of the worker process (sampled every 50 ms with psutil) / of the baseline process (ru_maxrss).

It ends with the medians of the ratios (job / baseline; goal for steady tok/s >= 0.95) and the load average.
The bare script is what the TRL docs show: conversational ``messages`` rows, ``assistant_only_loss=True``,
TRL tokenising itself, and by default the worker's thread count (one intra-op thread for a model under 50M
parameters; ``--baseline-threads 0`` leaves torch's default, one per core, which on a loaded 2-core machine is
~35x slower for this model: OpenMP threads spin-waiting for a busy sibling core). Exit status 0 always (a benchmark reports; it does not gate).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: conftest's backend helpers

BASELINE = textwrap.dedent('''
    import json, resource, sys, time
    t0 = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    model_dir, data, out, batch, lr, epochs, max_length, threads = sys.argv[1:9]
    if int(threads) > 0:
        torch.set_num_threads(int(threads))
    rows = [json.loads(line) for line in open(data)]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = SFTConfig(output_dir=out, per_device_train_batch_size=int(batch), learning_rate=float(lr),
                     num_train_epochs=float(epochs), max_length=int(max_length), assistant_only_loss=True,
                     use_cpu=True, report_to="none", save_strategy="no", logging_steps=10, disable_tqdm=True,
                     include_num_input_tokens_seen="non_padding", dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    t1 = time.perf_counter()
    trainer.train()
    t2 = time.perf_counter()
    trainer.save_model(out + "/final")
    print(json.dumps({"train_s": t2 - t1, "tokens": int(trainer.state.num_input_tokens_seen),
                      "steps": trainer.state.global_step, "loss": trainer.state.log_history[-1].get("train_loss"),
                      "setup_s": t1 - t0, "threads": torch.get_num_threads(),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
''')


def rows(n: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        out.append({"messages": [{"role": "system", "content": "You add numbers."},
                                 {"role": "user", "content": f"What is {a}+{b}? Answer with the number only."},
                                 {"role": "assistant", "content": str(a + b)}]})
    return out


def upload_ready(api: str, path: Path) -> str:
    """Upload a JSONL file to the backend and wait until it is validated; returns its file id."""
    import httpx
    from conftest import wait_file_ready

    with open(path, "rb") as fh:
        rec = httpx.post(f"{api}/learning/files", files={"file": (path.name, fh, "application/jsonl")},
                         data={"purpose": "fine-tune"}, timeout=60).json()
    return wait_file_ready(api, rec["id"])["id"]


def run_baseline(model_dir: Path, data: Path, out: Path, args) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BASELINE, str(model_dir), str(data), str(out), str(args.batch),
                           str(args.lr), str(args.epochs), str(args.max_length), str(args.baseline_threads)],
                          capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(wall_s=wall, tok_s=result["tokens"] / result["train_s"])
    return result


def run_job(api: str, model_dir: Path, file_id: str, args, *, gpu_count: int = 1, hyperparameters: dict | None = None
            ) -> dict:
    """One job through the backend; its steady tok/s (finish event), wall time start→succeeded, worker peak RSS
    (all the worker's processes: a launcher's ranks too)."""
    import httpx
    import psutil

    hyperparameters = hyperparameters or {"n_epochs": args.epochs, "per_device_batch": args.batch,
                                          "learning_rate": args.lr, "sequence_length": args.max_length}
    payload = {"model": str(model_dir), "training_type": "sft_offline", "training_file_id": file_id,
               "hyperparameters": hyperparameters,
               "metadata": {"effective_config": {"compute": {"gpu_type": "cpu", "gpu_count": gpu_count}}}}
    job = httpx.post(f"{api}/learning/jobs", json=payload, timeout=30).json()
    started = time.perf_counter()
    httpx.post(f"{api}/learning/jobs/{job['id']}/start", timeout=30).raise_for_status()
    peak, proc = 0.0, None
    while True:
        record = httpx.get(f"{api}/learning/jobs/{job['id']}", timeout=30).json()
        if record["status"] in {"succeeded", "failed", "cancelled"}:
            break
        if proc is None and record.get("status") == "running":
            events = httpx.get(f"{api}/learning/jobs/{job['id']}/events", timeout=30).json()
            pids = [e["data"].get("pid") for e in events.get("events", []) if e["type"] == "sft.running"]
            if pids:
                try:
                    proc = psutil.Process(pids[0])
                except psutil.NoSuchProcess:
                    proc = False
        if proc:
            try:
                tree = [proc] + proc.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in tree) / 2**20)
            except psutil.NoSuchProcess:
                proc = False
        time.sleep(0.05)
    wall = time.perf_counter() - started
    if record["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {record['status']}: {record.get('error')}")
    events = httpx.get(f"{api}/learning/jobs/{job['id']}/events", timeout=30).json()["events"]
    finish = next(e["data"] for e in events if e["type"] == "sft.training.finish")
    train_s = finish["train_tokens"] / finish["tokens_per_second"]
    return {"train_s": train_s, "tokens": finish["train_tokens"], "steps": finish["steps"],
            "loss": finish["train_loss_mean"], "tok_s": finish["tokens_per_second"], "wall_s": wall,
            "peak_rss_mb": peak}


def profile_in_process(model_dir: Path, data: Path, workdir: Path, args) -> None:
    """cProfile ``run_training`` (the worker's call) in this process; prints the top of the profile."""
    import cProfile
    import pstats

    from learning_mcp.backend.trainer import TrainRequest, run_training

    class Quiet:
        def event(self, *a, **k): ...
        def metric(self, *a, **k): ...
        def should_stop(self): return False

    req = TrainRequest(job_id="bench", model=str(model_dir), train_path=data, validation_path=None,
                       hyperparameters={"n_epochs": args.epochs, "per_device_batch": args.batch,
                                        "learning_rate": args.lr, "sequence_length": args.max_length},
                       effective_config={}, output_dir=workdir / "profiled", models_dir=workdir / "models",
                       fine_tuned_model_id="ft:bench:bench")
    profiler = cProfile.Profile()
    profiler.runcall(run_training, req, Quiet())
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=384)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--baseline-threads", type=int, default=1,
                        help="torch threads in the bare script: 1 = what the worker uses for a model under 50M "
                             "parameters (default); 0 = torch's default (one per core)")
    args = parser.parse_args()

    from conftest import start_backend
    from learning_mcp.backend.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model_dir = build_tiny_model(work / "small", size="small", seed=0)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(args.rows)))
    (work / "models").mkdir()
    if args.profile:
        profile_in_process(model_dir, data, work, args)
    backend = start_backend(work / "backend")
    try:
        rec = {"id": upload_ready(backend.api, data)}
        results = []
        for round_ in range(args.rounds):
            order = ["job", "baseline"] if round_ % 2 == 0 else ["baseline", "job"]
            got = {}
            for side in order:
                got[side] = (run_job(backend.api, model_dir, rec["id"], args) if side == "job"
                             else run_baseline(model_dir, data, work / f"baseline-{round_}", args))
            results.append(got)
            j, b = got["job"], got["baseline"]
            print(f"round {round_ + 1}: steady tok/s job {j['tok_s']:.0f} vs baseline {b['tok_s']:.0f} "
                  f"(x{j['tok_s'] / b['tok_s']:.2f}); end-to-end s job {j['wall_s']:.1f} vs baseline "
                  f"{b['wall_s']:.1f} (x{b['wall_s'] / j['wall_s']:.2f} speed); tokens {j['tokens']} vs {b['tokens']}; "
                  f"steps {j['steps']} vs {b['steps']}; mean loss {j['loss']:.3f} vs {b['loss']:.3f}; "
                  f"peak RSS MB job {j['peak_rss_mb']:.0f} vs baseline {b['peak_rss_mb']:.0f}; "
                  f"baseline threads {b['threads']}", flush=True)
        steady = statistics.median(r["job"]["tok_s"] / r["baseline"]["tok_s"] for r in results)
        e2e = statistics.median(r["baseline"]["wall_s"] / r["job"]["wall_s"] for r in results)
        print(f"MEDIAN steady-state throughput ratio job/baseline: {steady:.2f} (goal >= 0.95)")
        print(f"MEDIAN end-to-end speed ratio job/baseline: {e2e:.2f}")
        print(f"load average: {os.getloadavg()}; cpus: {os.cpu_count()}")
    finally:
        backend.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
