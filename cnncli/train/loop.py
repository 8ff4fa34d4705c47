"""The entry point of training: :func:`run_training` (a TrainConfig in, a TrainResult out), with the errors it
raises. The run itself is :class:`cnncli.train.run.TrainingRun`; one epoch is :mod:`cnncli.train.epoch`."""

from __future__ import annotations

from cnncli.train.config import TrainConfig
from cnncli.train.errors import TrainingDiverged, TrainingInterrupted
from cnncli.train.run import TrainingRun, TrainResult

__all__ = ["TrainResult", "TrainingDiverged", "TrainingInterrupted", "run_training"]


def run_training(cfg: TrainConfig, log=None, on_epoch_end=None) -> TrainResult:
    """Train as ``cfg`` says; returns the summary. Raises CnncliError subclasses for anything the user can fix.

    ``log`` replaces the per-epoch log printer; ``on_epoch_end(epoch, model)`` is called before the first epoch
    (with the last finished epoch, 0 for a new run) and after each epoch's files are written.
    """
    from cnncli.train.multilabel_run import run_class_for

    return run_class_for(cfg, default=TrainingRun).prepare(cfg, log).fit(on_epoch_end)
