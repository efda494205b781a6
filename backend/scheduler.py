"""Runs queued jobs, one worker process each, outside the HTTP server's process.

A daemon thread in the backend process polls the database: it picks started ``queued`` jobs in the order
their ``/start`` arrived, waits for their files to finish processing (``validating_files``), then spawns
``python -m learning_mcp.backend.worker`` for the job (``running``). At most ``max_concurrent`` workers run at
once (default 1): the rest wait in the queue.

Failure handling:

* **cancel** — the API sets ``cancel_requested``; a queued job is cancelled at once, a running one gets
  SIGTERM (the trainer stops at the next step) and SIGKILL if it has not exited after ``kill_after_s``.
* **worker crash** (killed -9, OOM-killed, segfault) — the worker's exit is noticed; a job left in a
  non-terminal state is marked ``failed`` with an event naming the exit code or signal, and the next job runs.
* **backend restart** — :meth:`Scheduler.recover` runs first: a job whose worker is still alive (the worker
  outlives the HTTP server) is adopted and watched; a job whose worker is gone is marked ``failed`` with an
  event that says the backend restarted while it ran.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from learning_mcp.backend.distributed import LaunchPlan, launcher_env, plan_launch, worker_command
from learning_mcp.backend.store import Store

log = logging.getLogger(__name__)


@dataclass
class _Running:
    job_id: str
    pid: int
    popen: subprocess.Popen | None  # None for a worker adopted after a restart
    sigterm_at: float | None = None
    log_file: object | None = field(default=None, repr=False)

    def exit_code(self) -> int | None:
        if self.popen is not None:
            return self.popen.poll()
        return None if _pid_alive(self.pid) else -1


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def _is_our_worker(pid: int, job_id: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return _pid_alive(pid)
    return ("learning_mcp.backend.worker" in cmdline or "learning_mcp.backend.ray_backend" in cmdline) \
        and job_id in cmdline


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed: out of memory or kill -9)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


def finish_failed(store: Store, job_id: str, code: str, message: str, *, data: dict | None = None) -> None:
    """Mark a job failed with Synth's terminal event pair."""
    error = {"code": code, "message": message, "param": None}
    store.set_job_status(job_id, "failed", error=error, events=[
        ("sft.job.failed", message, {"error": error, **(data or {})}, "error"),
        ("workflow.failed", message, {"error": error}, "error")])


def finish_cancelled(store: Store, job_id: str, message: str = "job cancelled") -> None:
    store.set_job_status(job_id, "cancelled", error={"code": "cancelled", "message": message, "param": None},
                         events=[("sft.job.cancelled", message, {}, "warning"),
                                 ("workflow.cancelled", message, {}, "warning")])


class Scheduler:
    def __init__(self, store: Store, *, max_concurrent: int = 1, poll_s: float = 0.25, kill_after_s: float = 15.0,
                 file_wait_s: float = 600.0, worker_env: Mapping[str, str] | None = None,
                 ray_address: str | None = None):
        self.store = store
        self.worker_env = dict(worker_env) if worker_env is not None else None  # None: this process's environment
        # a Ray cluster (Settings.ray_address / LEARNING_MCP_RAY_ADDRESS): jobs run as Ray Train jobs
        self.ray_address = ray_address
        self.max_concurrent = max(1, max_concurrent)
        self.poll_s = poll_s
        self.kill_after_s = kill_after_s
        self.file_wait_s = file_wait_s
        self._running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._run, name="learning-mcp-scheduler", daemon=True)
        self._thread.start()

    def stop(self, *, terminate_workers: bool = False) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if terminate_workers:
            for run in list(self._running.values()):
                self._signal(run, signal.SIGTERM)

    def wake(self) -> None:
        self._wake.set()

    def recover(self) -> None:
        """After a (re)start: adopt live workers, fail jobs whose worker is gone."""
        for job in self.store.active_jobs():
            pid = job.get("_worker_pid")
            if pid and _pid_alive(pid) and _is_our_worker(pid, job["id"]):
                log.info("adopting running worker pid=%s for job %s", pid, job["id"])
                self._running[job["id"]] = _Running(job["id"], pid, None)
                self.store.add_event(job["id"], "sft.worker.alive",
                                     f"backend restarted; adopted the running worker (pid {pid})", {"pid": pid})
                continue
            if job["status"] == "validating_files" and not pid:
                continue  # nothing ran yet: the loop picks it up again
            finish_failed(
                self.store, job["id"], "backend_restarted",
                "The learning backend restarted while this job was running and its worker process is gone; "
                "the job was interrupted. Create and start the job again.",
            )

    # -- main loop -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # keep scheduling whatever happened
                log.exception("scheduler tick failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _tick(self) -> None:
        self._reap()
        self._handle_cancels()
        while len(self._running) < self.max_concurrent:
            job = self._next_job()
            if job is None:
                return
            self._launch(job)

    def _next_job(self) -> dict | None:
        for job in self.store.list_jobs(status="validating_files", limit=100)[::-1]:
            if job["id"] not in self._running and self._files_ready(job):
                return job
        job = self.store.next_startable_job()
        if job is None:
            return None
        self.store.set_job_status(job["id"], "validating_files")
        self.store.add_event(job["id"], "sft.stage", "validating files", {"stage": "validating_files"})
        return job if self._files_ready(job) else None

    def _files_ready(self, job: dict) -> bool:
        """True when every file is ready; fails the job on a file error. False while files still process."""
        for param in ("training_file_id", "validation_file_id"):
            file_id = job.get(param)
            if not file_id:
                continue
            record = self.store.get_file(file_id)
            if record is None:
                finish_failed(self.store, job["id"], "file_not_found", f"{param} {file_id!r} no longer exists")
                return False
            if record["status"] == "error":
                details = record.get("status_details") or {}
                message = f"{param} {file_id} failed validation: {details.get('summary') or 'invalid dataset'}"
                finish_failed(self.store, job["id"], "invalid_training_file", message,
                              data={"failure_kind": "validation", "file": record})
                return False
            if record["status"] != "ready":
                return False
        return True

    def _launch(self, job: dict) -> None:
        job_id = job["id"]
        if self.store.cancel_requested(job_id):
            finish_cancelled(self.store, job_id, "cancelled before it started")
            return
        log_path = self.store.paths.logs / f"worker-{job_id}.log"
        log_file = open(log_path, "ab")
        plan = plan_launch(job.get("_payload") or {})  # several processes under torchrun: backend/distributed.py
        cmd = worker_command(plan, self.store.paths.root, job_id)
        base_env = dict(os.environ if self.worker_env is None else self.worker_env)
        env = {**base_env, **launcher_env(plan)}
        if self.ray_address:  # a Ray Train job: backend/ray_backend.py
            from learning_mcp.backend.ray_backend import driver_command, scaling_for

            cmd, env = driver_command(self.ray_address, self.store.paths.root, job_id), base_env
            plan = LaunchPlan(scaling_for(job.get("_payload") or {})["num_workers"], "ray", "ray", "ray", plan.requested)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=plan.world_size > 1)  # a group: SIGKILL reaches every rank
        self._running[job_id] = _Running(job_id, popen.pid, popen, log_file=log_file)
        self.store.set_job_status(job_id, "running", worker_pid=popen.pid)
        launcher = "ray" if self.ray_address else plan.launcher
        launched = f" via {launcher}, {plan.world_size} processes" if launcher else ""
        self.store.add_event(job_id, "sft.running", f"training worker started (pid {popen.pid}){launched}",
                             {"pid": popen.pid, "log": str(log_path), **plan.as_event_data(), "launcher": launcher},
                             level="warning" if plan.note else "info")

    def _handle_cancels(self) -> None:
        for job in self.store.list_jobs(status="queued", limit=1000):
            if job["cancel_requested"]:
                finish_cancelled(self.store, job["id"], "cancelled before it started")
        for job in self.store.list_jobs(status="validating_files", limit=1000):
            if job["cancel_requested"] and job["id"] not in self._running:
                finish_cancelled(self.store, job["id"], "cancelled before it started")
        now = time.monotonic()
        for run in list(self._running.values()):
            if not self.store.cancel_requested(run.job_id):
                continue
            if run.sigterm_at is None:
                run.sigterm_at = now
                self._signal(run, signal.SIGTERM)
            elif now - run.sigterm_at > self.kill_after_s:
                self._signal(run, signal.SIGKILL)

    def _signal(self, run: _Running, sig: int) -> None:
        try:
            if sig == signal.SIGKILL and os.getpgid(run.pid) == run.pid:  # a launcher and its ranks
                os.killpg(run.pid, sig)
            else:
                os.kill(run.pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        for job_id, run in list(self._running.items()):
            code = run.exit_code()
            if code is None:
                continue
            del self._running[job_id]
            if run.log_file is not None:
                run.log_file.close()
            job = self.store.get_job(job_id)
            if job is None or job["status"] in {"succeeded", "failed", "cancelled"}:
                continue
            if job["cancel_requested"]:
                finish_cancelled(self.store, job_id, "cancelled while training")
                continue
            how = describe_exit(code) if run.popen is not None else "its process is gone"
            finish_failed(
                self.store, job_id, "worker_crashed",
                f"The training worker process ended unexpectedly ({how}) before the job finished. "
                f"See the worker log in {self.store.paths.logs}; the next queued job will run.",
                data={"exit_code": code, "failure_kind": "infrastructure"},
            )

    @property
    def running_job_ids(self) -> list[str]:
        return list(self._running)

    def worker_pid(self, job_id: str) -> int | None:
        run = self._running.get(job_id)
        return run.pid if run else None
