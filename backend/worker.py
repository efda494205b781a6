"""The training worker: one process per job, spawned by the scheduler.

``python -m learning_mcp.backend.worker --data-dir D --job-id J`` loads the job from the database, runs the
trainer, and records everything it does as events and metrics in the same database (SQLite in WAL mode
takes writers from several processes). It ends the job itself (``succeeded`` / ``failed`` / ``cancelled``)
with the terminal event pairs both Synth clients understand (``sft.job.completed`` + ``workflow.completed``,
``sft.job.failed`` + ``workflow.failed``).

Cancellation: SIGTERM (sent by the scheduler after ``POST …/cancel``) sets a flag that the trainer polls every
step; the database's ``cancel_requested`` is polled too, so a cancel reaches a worker whose backend restarted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from learning_mcp.backend.modelref import set_torch_threads
from learning_mcp.backend.distributed import peer_failure
from learning_mcp.backend.scheduler import finish_cancelled, finish_failed
from learning_mcp.backend.store import Store
from learning_mcp.tools.settings import Settings

log = logging.getLogger("learning_mcp.worker")


class StoreReporter:
    """The trainer's ``Reporter``: writes events and metrics for one job to the store."""

    def __init__(self, store: Store, job_id: str):
        self.store = store
        self.job_id = job_id
        self._stop_flag = False
        self._last_db_check = 0.0
        self._cancelled_in_db = False

    def request_stop(self, *_: object) -> None:
        self._stop_flag = True

    def event(self, type: str, message: str, data: dict | None = None, level: str = "info") -> None:
        self.store.add_event(self.job_id, type, message, data or {}, level=level)

    def metric(self, name: str, value: float, step: int, epoch: float | None = None, phase: str = "train",
               data: dict | None = None) -> None:
        self.store.add_metric(self.job_id, name, value, step, epoch=epoch, phase=phase, data=data)

    def should_stop(self) -> bool:
        if self._stop_flag or self._cancelled_in_db:
            return True
        now = time.monotonic()
        if now - self._last_db_check > 0.5:
            self._last_db_check = now
            self._cancelled_in_db = self.store.cancel_requested(self.job_id)
        return self._cancelled_in_db


def fine_tuned_model_id(base_model: str, job_id: str) -> str:
    return f"ft:{base_model}:{job_id}"


def run_job(store: Store, job_id: str, *, reporter: StoreReporter | None = None) -> int:
    """Run one job to a terminal status. ``reporter``: a rank's reporter in a multi-process job
    (:mod:`.distributed`); only its primary rank ends the job, except on an unexpected crash."""
    from learning_mcp.backend.tracking import configure_tracking
    from learning_mcp.backend.trainer import TrainingCancelled, TrainingError, TrainRequest, run_training

    job = store.get_job(job_id)
    if job is None:
        log.error("job %s not found", job_id)
        return 2
    reporter = reporter or StoreReporter(store, job_id)
    primary = getattr(reporter, "primary", True)
    try:
        signal.signal(signal.SIGTERM, reporter.request_stop)
    except ValueError:  # not the main thread (a Ray Train worker): cancel arrives through the store
        pass
    payload = job["_payload"]
    train_file = store.get_file(job["training_file_id"])
    val_file = store.get_file(job["validation_file_id"]) if job.get("validation_file_id") else None
    if train_file is None:
        finish_failed(store, job_id, "file_not_found", f"training file {job['training_file_id']} no longer exists")
        return 1
    ft_id = fine_tuned_model_id(job["model"], job_id)
    request = TrainRequest(
        job_id=job_id,
        model=job["model"],
        train_path=store.paths.file_path(train_file["sha256"]),
        validation_path=store.paths.file_path(val_file["sha256"]) if val_file else None,
        hyperparameters=payload.get("hyperparameters") or {},
        effective_config=(payload.get("metadata") or {}).get("effective_config") or {},
        output_dir=store.paths.model_dir(job_id),
        models_dir=store.paths.models,
        fine_tuned_model_id=ft_id,
        seed=int((payload.get("hyperparameters") or {}).get("seed", 0) or 0),
    )
    configure_tracking(request.hyperparameters, store.paths.root, job_id)  # [training] report_to: log dirs
    try:
        result = run_training(request, reporter)
    except TrainingCancelled:
        if primary:
            finish_cancelled(store, job_id, "cancelled while training")
        return 0
    except TrainingError as exc:
        code, message = peer_failure(reporter, exc.code, exc.message)
        if not primary and code == exc.code:  # every rank raises the same error; rank 0 records it
            return 1
        finish_failed(store, job_id, code, message, data={"param": exc.param, "failure_kind": "training"})
        return 1
    except Exception as exc:  # anything else is a bug or an environment problem: record it, never hide it
        tb = traceback.format_exc()
        log.error("job %s crashed:\n%s", job_id, tb)
        code, message = peer_failure(reporter, "internal_error", f"training crashed: {type(exc).__name__}: {exc}")
        finish_failed(store, job_id, code, message, data={"traceback": tb[-4000:], "failure_kind": "infrastructure"})
        return 1
    if reporter.should_stop():
        if primary:
            finish_cancelled(store, job_id, "cancelled while training")
        return 0
    if not primary:
        return 0
    data = {"fine_tuned_model": ft_id, "steps": result.steps, "train_loss": result.train_loss,
            "val_loss": result.val_loss, "train_tokens": result.train_tokens, "seconds": round(result.seconds, 3),
            "skipped_examples": result.skipped_examples}
    store.set_job_status(job_id, "succeeded", fine_tuned_model=ft_id, trained_tokens=result.train_tokens, events=[
        ("sft.job.completed", f"training finished: {ft_id}", data, "info"),
        ("workflow.completed", f"training finished: {ft_id}", data, "info")])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="learning_mcp.backend.worker")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--job-id", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_torch_threads(Settings.load(environ=os.environ).torch_threads)  # the backend passes its settings' env
    store = Store(Path(args.data_dir))
    from learning_mcp.backend.distributed import run_rank, world_size

    if world_size() > 1:  # a rank under torchrun
        return run_rank(store, args.job_id)
    return run_job(store, args.job_id)


if __name__ == "__main__":
    raise SystemExit(main())
