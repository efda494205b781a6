"""Jobs as Ray Train jobs, when the backend is pointed at a Ray cluster.

Setting: ``LEARNING_MCP_RAY_ADDRESS`` (``Settings.ray_address``), e.g. ``ray://head:10001`` or ``10.0.0.5:6379``
or ``auto``. With it set, the scheduler spawns, per job, a small driver process
``python -m learning_mcp.backend.ray_backend --address A --data-dir D --job-id J`` instead of the worker. The
driver connects to the cluster and runs ``ray.train.torch.TorchTrainer`` with :func:`train_loop_per_worker`
— which runs the very same rank code as the torchrun path (:func:`.distributed.run_rank` →
:func:`.worker.run_job` → :func:`.trainer.run_training`) — and a ``ScalingConfig`` built from ``[compute]``:
``num_workers = gpu_count`` and ``use_gpu = gpu_type != "cpu"``. Queueing and placement are Ray's: a job whose
workers do not fit waits in Ray until they do (``LEARNING_MCP_MAX_CONCURRENT_JOBS`` still bounds how many
drivers the backend runs at once).

Status, events, metrics and the model flow through the same store: every Ray worker opens the backend's data
directory (SQLite in WAL mode + the model folder), so the data directory must be on a filesystem every node
sees (one machine, or a shared mount); only rank 0 writes events and the model. Ray Train's own run folder goes
to ``<data dir>/ray/<job id>``.

Cancel: every rank polls the job's ``cancel_requested`` in the store (as a local worker does) and the ranks
agree on stopping through ``all_reduce``; the driver ignores the scheduler's SIGTERM so rank 0 can record the
cancellation (the scheduler's SIGKILL after its grace period ends the driver, and Ray then tears down the
workers). A Ray worker that dies (node lost, ``kill -9``, OOM) makes ``fit()`` raise; the driver marks the job
``failed`` with code ``ray_worker_failed`` and Ray's reason. ``FailureConfig(max_failures=0)``: no automatic
retry, since a retry restarts training from scratch (no checkpoints are kept).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from learning_mcp.backend.distributed import plan_launch

log = logging.getLogger("learning_mcp.ray")

RAY_ADDRESS_ENV = "LEARNING_MCP_RAY_ADDRESS"


def driver_command(address: str, data_dir: Path, job_id: str) -> list[str]:
    """The command the scheduler spawns for a job when the backend is pointed at a Ray cluster."""
    return [sys.executable, "-m", "learning_mcp.backend.ray_backend", "--address", address,
            "--data-dir", str(data_dir), "--job-id", job_id]


def scaling_for(payload: dict) -> dict[str, Any]:
    """``{"num_workers", "use_gpu"}`` from the payload's ``[compute]`` (``gpu_count`` workers; CPU when
    ``gpu_type = "cpu"``)."""
    effective = (payload.get("metadata") or {}).get("effective_config") or {}
    compute = effective.get("compute") if isinstance(effective.get("compute"), dict) else {}
    try:
        workers = max(1, int(compute.get("gpu_count") or 1))
    except (TypeError, ValueError):
        workers = 1
    use_gpu = bool(compute.get("gpu_type")) and str(compute.get("gpu_type")).strip().lower() != "cpu"
    return {"num_workers": workers, "use_gpu": use_gpu}


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: the same rank code as under torchrun (Ray Train has set RANK/WORLD_SIZE/… and the
    process group)."""
    from learning_mcp.backend import distributed
    from learning_mcp.backend.store import Store

    os.environ["LEARNING_MCP_DIST_LAUNCHER"] = "ray"
    os.environ["LEARNING_MCP_DIST_STRATEGY"] = config.get("strategy") or "ddp"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not config.get("use_gpu"):
        os.environ["LEARNING_MCP_DIST_DEVICE"] = "cpu"
    store = Store(Path(config["data_dir"]))
    if distributed.world_size() > 1:
        code = distributed.run_rank(store, config["job_id"])
    else:
        from learning_mcp.backend.worker import run_job

        code = run_job(store, config["job_id"])
    if code not in (0, None):
        raise RuntimeError(f"rank {distributed.rank()} ended with exit code {code}")


def run_driver(address: str, data_dir: Path, job_id: str) -> int:
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from learning_mcp.backend.scheduler import finish_failed
    from learning_mcp.backend.store import Store

    store = Store(data_dir)
    job = store.get_job(job_id)
    if job is None:
        return 2
    payload = job.get("_payload") or {}
    scaling = scaling_for(payload)
    strategy = plan_launch(payload, gpus_available=scaling["num_workers"] if scaling["use_gpu"] else 0).strategy
    signal.signal(signal.SIGTERM, lambda *_: log.info("SIGTERM: the ranks stop through the store's cancel flag"))
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:
        finish_failed(store, job_id, "ray_unavailable", f"cannot connect to the Ray cluster at {address!r} "
                      f"({type(exc).__name__}: {exc}); check {RAY_ADDRESS_ENV} and that the cluster is up",
                      data={"failure_kind": "infrastructure"})
        return 1
    store.add_event(job_id, "sft.ray.submitted",
                    f"submitted to the Ray cluster at {address} as a Ray Train job "
                    f"({scaling['num_workers']} workers, {'GPU' if scaling['use_gpu'] else 'CPU'})",
                    {"launcher": "ray", "address": address, **scaling,
                     "cluster_resources": {k: v for k, v in ray.cluster_resources().items()
                                           if k in ("CPU", "GPU", "memory")}})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"data_dir": str(data_dir), "job_id": job_id, "use_gpu": scaling["use_gpu"],
                           "strategy": "ddp" if strategy == "single" else strategy},
        scaling_config=ScalingConfig(num_workers=scaling["num_workers"], use_gpu=scaling["use_gpu"]),
        run_config=RunConfig(name=job_id, storage_path=str(data_dir / "ray"),
                             failure_config=FailureConfig(max_failures=0)),
    )
    try:
        trainer.fit()
    except Exception as exc:
        message = str(exc).strip().splitlines()
        reason = next((line for line in message if "Error" in line or "died" in line.lower()), message[0] if message
                      else type(exc).__name__)[:500]
        finish_failed(store, job_id, "ray_worker_failed",
                      f"the Ray Train job failed: a worker died or raised ({reason}); no retry "
                      "(FailureConfig max_failures=0). Create and start the job again.",
                      data={"failure_kind": "infrastructure", "traceback": traceback.format_exc()[-4000:]})
        return 1
    finally:
        try:
            ray.shutdown()
        except Exception:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="learning_mcp.backend.ray_backend")
    parser.add_argument("--address", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--job-id", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_driver(args.address, Path(args.data_dir), args.job_id)


if __name__ == "__main__":
    raise SystemExit(main())
