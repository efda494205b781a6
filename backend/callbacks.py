"""The trainer's callback: Trainer logs → the job's events and metrics, cancellation, best-model snapshot.

:func:`_make_callback` builds a ``transformers.TrainerCallback`` bound to a :class:`~.trainer.Reporter` (the worker's
store, or a rank's): ``train.loss`` / ``train.learning_rate`` / ``val.loss`` metrics and ``sft.progress`` events per
logged step, ``sft.checkpoint.saved`` per checkpoint, ``reporter.should_stop()`` polled at every step and sub-step
(cancel within one step: :class:`_CancelRequested`), and the best validation state kept in memory when
``save_best_model_at_end`` asks for it. Split out of ``trainer.py`` along its section header (issue 7).
"""

from __future__ import annotations

from typing import Any

class _CancelRequested(Exception):
    pass


def _make_callback(reporter, *, keep_best: bool):
    from transformers import TrainerCallback

    class ReporterCallback(TrainerCallback):
        """Forwards Trainer logs to the job store and polls ``reporter.should_stop()``."""

        def __init__(self) -> None:
            self.total_steps = 0
            self.first_loss: float | None = None
            self.last_loss: float | None = None
            self.last_val_loss: float | None = None
            self.last_eval_step: int | None = None
            self.best_val_loss: float | None = None
            self.best_step: int | None = None
            self.best_state: dict[str, Any] | None = None
            self.last_reported_step = -1

        def _check_stop(self) -> None:
            if reporter.should_stop():
                raise _CancelRequested()

        def on_train_begin(self, args, state, control, **kwargs):
            self.total_steps = state.max_steps
            self._check_stop()

        def on_substep_end(self, args, state, control, **kwargs):
            self._check_stop()

        def on_step_end(self, args, state, control, **kwargs):
            self._check_stop()

        def on_prediction_step(self, args, state, control, **kwargs):
            self._check_stop()

        def on_save(self, args, state, control, **kwargs):
            step = int(state.global_step)
            reporter.event("sft.checkpoint.saved", f"checkpoint saved at step {step}",
                           {"step": step, "checkpoint": f"{args.output_dir}/checkpoint-{step}"})

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:
                return
            step = int(state.global_step)
            loss = float(logs["loss"])
            epoch = float(logs["epoch"]) if logs.get("epoch") is not None else (state.epoch or 0.0)
            self.first_loss = loss if self.first_loss is None else self.first_loss
            self.last_loss = loss
            self.last_reported_step = step
            learning_rate = logs.get("learning_rate")
            reporter.metric("train.loss", loss, step, epoch=epoch, phase="train")
            data = {"step": step, "epoch": epoch, "loss": loss, "total_steps": self.total_steps}
            if learning_rate is not None:
                reporter.metric("train.learning_rate", float(learning_rate), step, epoch=epoch, phase="train")
                data["learning_rate"] = float(learning_rate)
            reporter.event("sft.progress", f"step {step}/{self.total_steps} loss {loss:.4f}", data)

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            metrics = metrics or {}
            if "eval_loss" not in metrics:
                return
            step = int(state.global_step)
            val_loss = float(metrics["eval_loss"])
            self.last_val_loss, self.last_eval_step = val_loss, step
            reporter.metric("val.loss", val_loss, step, epoch=state.epoch, phase="eval")
            improved = self.best_val_loss is None or val_loss < self.best_val_loss
            if improved:
                self.best_val_loss, self.best_step = val_loss, step
                if keep_best and model is not None:
                    self.best_state = {name: p.detach().to("cpu", copy=True)
                                       for name, p in model.named_parameters() if p.requires_grad}
            data = {"val_loss": val_loss, "step": step, "best_val_loss": self.best_val_loss,
                    "best_step": self.best_step}
            reporter.event("sft.validation.summary", f"validation loss {val_loss:.4f} at step {step}", data)

        def restore_best(self, model) -> bool:
            if not self.best_state or self.best_step == self.last_eval_step:
                return False
            import torch

            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in self.best_state:
                        param.copy_(self.best_state[name].to(param.device, param.dtype))
            return True

    return ReporterCallback()
