"""The two ways a training run stops with an error of its own: the loss diverged, or Ctrl-C / SIGTERM."""

from __future__ import annotations

from cnncli.core import signals
from cnncli.core.errors import CnncliError


class TrainingDiverged(CnncliError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(CnncliError):
    """Ctrl-C or SIGTERM: the resumable state is on disk. Exit 128 + the signal (130, 143)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.exit_code = signals.exit_code()
