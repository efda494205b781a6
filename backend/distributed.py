"""Multi-process training on one node through ``torchrun``: DDP by default, FSDP when the config asks.

Which jobs
    ``metadata.effective_config.compute.gpu_count`` (``[compute] gpu_count`` in Synth's TOML, learning-api.md
    §3.3) is the number of training processes. :func:`plan_launch` turns it into a :class:`LaunchPlan`:

    * ``gpu_count`` absent or 1 → one worker process, as before (no launcher);
    * ``gpu_type = "cpu"`` and ``gpu_count = N`` → N CPU processes with the ``gloo`` backend (how the tests and
      ``tests/bench/bench_scaling.py`` exercise this path on a machine without GPUs);
    * any other ``gpu_type`` and ``gpu_count = N`` → ``min(N, visible CUDA devices)`` processes with ``nccl``;
      with fewer than 2 visible GPUs the job runs in one process and the plan's ``note`` says why.

    ``hyperparameters.parallelism.fsdp = true`` selects FSDP (``full_shard auto_wrap``, through the Trainer's
    ``fsdp`` argument and accelerate); otherwise the Trainer wraps the model in DDP. ``use_deepspeed`` is not
    supported and is named in the plan's note.

How it runs
    The scheduler spawns ``python -m torch.distributed.run --standalone --nproc-per-node N -m
    learning_mcp.backend.worker …`` (the standard launcher; ``--standalone`` picks a free rendezvous port on
    loopback) in its own session. Every rank runs the ordinary worker; :func:`run_rank` initialises the process
    group, gathers each rank's device, and runs the same :func:`~.worker.run_job` with a :class:`RankReporter`:

    * only rank 0 writes events, metrics, the terminal status and the model (``save_on_this_rank``);
    * a rank that crashes with an unexpected exception records the failure itself (terminal states are final
      in the store, so the first failure wins), and torchrun then stops the other ranks;
    * cancel: the scheduler sends SIGTERM to torchrun, which forwards it to every rank; the ranks agree on
      stopping through an ``all_reduce(MAX)`` of their stop flags at every step, so they leave the training
      loop at the same step instead of one waiting forever in a collective. The scheduler's SIGKILL fallback
      kills the whole process group (launcher and ranks).

    The loss the Trainer logs is already the mean over ranks. ``global_batch``/``batch_size`` keep their
    meaning (examples per optimizer step over all ranks): :func:`scale_for_world` divides the gradient
    accumulation by the world size.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LAUNCHER = "torchrun"


@dataclass
class LaunchPlan:
    world_size: int  # training processes (1: no launcher)
    device: str  # "cpu" | "cuda"
    backend: str  # torch.distributed backend: "gloo" | "nccl"
    strategy: str  # "single" | "ddp" | "fsdp"
    requested: int  # [compute] gpu_count as asked
    note: str | None = None  # why the plan differs from the request, when it does

    @property
    def launcher(self) -> str | None:
        return LAUNCHER if self.world_size > 1 else None

    def as_event_data(self) -> dict[str, Any]:
        return {**asdict(self), "launcher": self.launcher}


def _int(value: Any, default: int = 1) -> int:
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return default


def cuda_device_count() -> int:
    """Visible CUDA devices (imports torch; 0 when torch or CUDA is missing)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no torch, broken driver: no GPU
        return 0


def plan_launch(payload: dict, *, gpus_available: int | None = None) -> LaunchPlan:
    """The process layout for a job payload (see the module docstring for the rules).

    ``gpus_available`` overrides the CUDA device count (for tests); torch is imported only when the job asks
    for more than one GPU.
    """
    effective = (payload.get("metadata") or {}).get("effective_config") or {}
    compute = effective.get("compute") if isinstance(effective.get("compute"), dict) else {}
    requested = _int(compute.get("gpu_count"), 1)
    gpu_type = str(compute.get("gpu_type") or "").strip().lower()
    hparams = payload.get("hyperparameters") or {}
    parallelism = hparams.get("parallelism") if isinstance(hparams.get("parallelism"), dict) else {}
    fsdp = str(parallelism.get("fsdp")).lower() in ("true", "1", "yes") or parallelism.get("fsdp") is True
    notes = []
    if parallelism.get("use_deepspeed"):
        notes.append("DeepSpeed is not supported by the embedded backend; using "
                     + ("FSDP" if fsdp else "DDP"))
    if requested <= 1:
        return LaunchPlan(1, "cpu" if gpu_type == "cpu" else "auto", "none", "single", requested,
                          "; ".join(notes) or None)
    if gpu_type == "cpu":
        return LaunchPlan(requested, "cpu", "gloo", "fsdp" if fsdp else "ddp", requested, "; ".join(notes) or None)
    available = cuda_device_count() if gpus_available is None else gpus_available
    if available < 2:
        notes.append(f"[compute] gpu_count = {requested} but this machine has {available} CUDA device(s); "
                     "training in one process (set gpu_type = \"cpu\" to run several CPU processes)")
        return LaunchPlan(1, "auto", "none", "single", requested, "; ".join(notes))
    world = min(requested, available)
    if world < requested:
        notes.append(f"[compute] gpu_count = {requested} but only {available} CUDA devices are visible; "
                     f"training on {world}")
    return LaunchPlan(world, "cuda", "nccl", "fsdp" if fsdp else "ddp", requested, "; ".join(notes) or None)


def worker_command(plan: LaunchPlan, data_dir: Path, job_id: str) -> list[str]:
    """The command the scheduler spawns for a job: the worker, under torchrun when ``world_size > 1``."""
    worker = ["-m", "learning_mcp.backend.worker", "--data-dir", str(data_dir), "--job-id", job_id]
    if plan.world_size <= 1:
        return [sys.executable, *worker]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(plan.world_size), "--max-restarts", "0", *worker]


def launcher_env(plan: LaunchPlan) -> dict[str, str]:
    """Environment additions for the launched ranks (``LEARNING_MCP_DIST_*`` tell a rank its plan)."""
    if plan.world_size <= 1:
        return {}
    env = {"LEARNING_MCP_DIST_DEVICE": plan.device, "LEARNING_MCP_DIST_BACKEND": plan.backend,
           "LEARNING_MCP_DIST_STRATEGY": plan.strategy, "LEARNING_MCP_DIST_LAUNCHER": LAUNCHER}
    if plan.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
        env["CUDA_VISIBLE_DEVICES"] = ""  # every rank on the CPU, even on a machine with GPUs
    return env


# --------------------------------------------------------------------------------------------------
# inside a rank
# --------------------------------------------------------------------------------------------------


def world_size() -> int:
    """Processes in this job (``WORLD_SIZE`` set by torchrun or Ray Train; 1 otherwise)."""
    return _int(os.environ.get("WORLD_SIZE"), 1)


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_primary() -> bool:
    """True in the process that writes events and the model (rank 0, or the only process)."""
    return rank() == 0


def scale_for_world(sft_kwargs: dict[str, Any], hparams: dict, world: int) -> dict[str, Any]:
    """Keep ``global_batch``/``batch_size`` global across ``world`` processes, set the process-group backend.

    ``per_device_train_batch_size`` stays per process; gradient accumulation becomes
    ``round(global / (per_device * world))`` (at least 1; per_device shrinks when ``per_device * world`` alone
    exceeds the global batch). Without a global batch the per-device batch and accumulation are kept (so the
    global batch grows with the world size, as in any DDP script).
    """
    if world <= 1:
        return sft_kwargs
    kwargs = dict(sft_kwargs)
    global_batch = hparams.get("global_batch") or hparams.get("batch_size")
    try:
        global_batch = int(global_batch) if global_batch is not None else None
    except (TypeError, ValueError):
        global_batch = None
    if global_batch:
        per_device = kwargs["per_device_train_batch_size"]
        if per_device * world > global_batch and not hparams.get("per_device_batch"):
            per_device = max(1, global_batch // world)
        kwargs["per_device_train_batch_size"] = per_device
        kwargs["per_device_eval_batch_size"] = per_device
        kwargs["gradient_accumulation_steps"] = max(1, round(global_batch / (per_device * world)))
    if kwargs.get("use_cpu"):
        kwargs["ddp_backend"] = "gloo"
    kwargs["ddp_find_unused_parameters"] = False
    if os.environ.get("LEARNING_MCP_DIST_STRATEGY") == "fsdp" or _truthy_fsdp(hparams):
        kwargs["fsdp"] = "full_shard auto_wrap"
    return kwargs


def _truthy_fsdp(hparams: dict) -> bool:
    parallelism = hparams.get("parallelism") if isinstance(hparams.get("parallelism"), dict) else {}
    return str(parallelism.get("fsdp")).lower() in ("true", "1", "yes")


def model_for_saving(trainer) -> Any | None:
    """The model to ``save_pretrained`` on this rank, or None on ranks that do not save.

    One process: ``trainer.model``. DDP: rank 0's ``trainer.model`` (the Trainer keeps the unwrapped module
    there). FSDP: the full state dict is gathered (a collective: every rank calls this) and loaded into rank
    0's unwrapped model. Unexecuted on GPUs here: FSDP is exercised only where a test can run it.
    """
    if world_size() <= 1:
        return trainer.model
    if getattr(trainer, "is_fsdp_enabled", False):
        state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        if not is_primary():
            return None
        model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
        model.load_state_dict(state)
        return model
    return trainer.model if is_primary() else None


def _rank_device(device: str) -> str:
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device == "cuda":
        return f"cuda:{local}"
    return "cpu"


def init_process_group() -> dict[str, Any]:
    """Initialise torch.distributed for this rank (if the launcher has not) and describe every rank.

    Returns ``{"launcher", "world_size", "backend", "strategy", "ranks": [{"rank", "device", "host", "pid"}]}``
    (gathered from all ranks: a collective).
    """
    import torch
    import torch.distributed as dist

    device = os.environ.get("LEARNING_MCP_DIST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    backend = os.environ.get("LEARNING_MCP_DIST_BACKEND") or ("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0") or 0))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    me = {"rank": dist.get_rank(), "device": _rank_device(device), "host": socket.gethostname(), "pid": os.getpid()}
    if os.environ.get("LEARNING_MCP_DIST_LAUNCHER") == "ray":
        import ray

        me["ray_node_id"] = ray.get_runtime_context().get_node_id()
    ranks: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, me)
    return {"launcher": os.environ.get("LEARNING_MCP_DIST_LAUNCHER") or LAUNCHER,
            "world_size": dist.get_world_size(), "backend": dist.get_backend(),
            "strategy": os.environ.get("LEARNING_MCP_DIST_STRATEGY") or "ddp", "ranks": ranks}


def make_rank_reporter(store, job_id: str):
    """A :class:`~.worker.StoreReporter` for one rank of a multi-process job (see :class:`RankReporter`)."""
    from learning_mcp.backend.worker import StoreReporter

    class RankReporter(StoreReporter):
        """Writes only on rank 0; ``should_stop`` is agreed by all ranks (``all_reduce(MAX)``) once the
        process group exists, so every rank stops at the same step."""

        primary = is_primary()
        rank_index = rank()

        def event(self, type: str, message: str, data: dict | None = None, level: str = "info") -> None:
            if self.primary:
                super().event(type, message, data, level)

        def metric(self, name: str, value: float, step: int, epoch: float | None = None, phase: str = "train",
                   data: dict | None = None) -> None:
            if self.primary:
                super().metric(name, value, step, epoch=epoch, phase=phase, data=data)

        def should_stop(self) -> bool:
            local = super().should_stop()
            import torch
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
                return local
            flag = torch.tensor([1 if local else 0], dtype=torch.int32)
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return bool(flag.item())

    return RankReporter(store, job_id)


def run_rank(store, job_id: str) -> int:
    """Entry point of one rank (``worker.main`` calls it when ``WORLD_SIZE > 1``)."""
    import torch.distributed as dist

    from learning_mcp.backend.scheduler import finish_failed
    from learning_mcp.backend.worker import run_job

    try:
        described = init_process_group()
    except Exception as exc:
        log.exception("rank %s could not join the process group", rank())
        finish_failed(store, job_id, "distributed_init_failed",
                      f"rank {rank()} could not join the process group: {type(exc).__name__}: {exc}",
                      data={"failure_kind": "infrastructure", "rank": rank()})
        return 1
    if is_primary():
        devices = ", ".join(f"rank {r['rank']}: {r['device']}" for r in described["ranks"])
        store.add_event(job_id, "sft.distributed.started",
                        f"{described['world_size']} processes via {described['launcher']} "
                        f"({described['strategy']}, {described['backend']}; {devices})", described)
    try:
        return run_job(store, job_id, reporter=make_rank_reporter(store, job_id))
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # already torn down by a failing peer
            pass


_COLLECTIVE_FAILURE_WORDS = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe", "timed out")


def peer_failure(reporter: Any, code: str, message: str) -> tuple[str, str]:
    """``(code, message)`` for a rank's failure: a collective that failed because another process of the job
    died becomes ``peer_process_died`` with a message that says so; anything else is returned unchanged.
    ``reporter`` is the rank's reporter (a plain one outside multi-process jobs)."""
    index = getattr(reporter, "rank_index", None)
    if index is None:
        return code, message
    if any(word in message.lower() for word in _COLLECTIVE_FAILURE_WORDS):
        return ("peer_process_died",
                f"another process of this {world_size()}-process job died (killed, out of memory, or its node was "
                f"lost), so rank {index}'s collective failed; see the other ranks' logs. Rank {index} saw: "
                f"{message[:300]}")
    return code, f"{message} (on rank {index})"


def examples_per_rank(n_examples: int) -> int:
    """How many examples one rank sees per epoch (the distributed sampler pads to a multiple of the world)."""
    return math.ceil(n_examples / world_size())
