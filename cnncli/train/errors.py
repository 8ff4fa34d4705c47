"""The two ways a training run stops with an error of its own: the loss diverged, or Ctrl-C."""

from __future__ import annotations

from cnncli.core.errors import CnncliError


class TrainingDiverged(CnncliError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(CnncliError):
    """Ctrl-C: the resumable state is on disk."""

    exit_code = 130
