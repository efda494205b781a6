"""The training worker's job-level errors, shared by the trainer and its data modules (vision, preview).

``TrainingError`` is a :class:`~learning_mcp.tools.errors.LearningMCPError` whose ``code``/``message``/``param`` become
the failed job's error object; ``TrainingCancelled`` ends a run that was asked to stop. ``param`` names are the API's
(``training_file_id``, ``validation_file``, ``hyperparameters.<key>``, ``model``).
"""

from __future__ import annotations

from learning_mcp.tools.errors import LearningMCPError

TRAINING_FILE_PARAM = "training_file_id"
VALIDATION_FILE_PARAM = "validation_file"


class TrainingError(LearningMCPError):
    """A job-level failure with an API error object's fields."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(code, message, param=param)


class TrainingCancelled(Exception):
    """Raised when ``Reporter.should_stop()`` turned True; nothing is written to ``output_dir``.

    ``step`` is the optimizer step training had reached (None when it stopped before training began).
    """

    def __init__(self, step: int | None = None) -> None:
        super().__init__("training was cancelled" + (f" at step {step}" if step is not None else ""))
        self.step = step
