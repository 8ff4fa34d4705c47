"""The files a finished run ends with, all for the best epoch's weights: metrics.json (the evaluation of the
whole validation split plus the run's summary), curves.png and confusion_matrix.png."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnncli.evaluate.plots import plot_confusion_matrix, plot_curves
from cnncli.train.datasets import SkippedImages
from cnncli.train.epoch import ValStep, predict
from cnncli.train.outputs import write_json


@dataclass(frozen=True)
class FinishedRun:
    """What the run knows at its end (rank 0)."""

    out: Path
    history: list[dict]
    best_epoch: int
    stopped: str  # completed | early-stopped
    trainable: str  # the --trainable policy
    trainable_params: int
    skipped: SkippedImages
    classes: list[str]


def write_final_outputs(run: FinishedRun, model: nn.Module, val: ValStep, val_dataset) -> dict:
    """Load best.safetensors into ``model``, evaluate it on ``val`` (the whole split, one process), write the
    three files and return the metrics. Image paths go into the evaluation when every image of ``val_dataset``
    was read (not with cached features or skipped images)."""
    from safetensors.torch import load_file

    from cnncli.evaluate.run import compute_metrics

    best_state = load_file(str(run.out / "best.safetensors"))
    model.load_state_dict(best_state, strict=False)  # tied weights dropped by safetensors stay as they are
    logits, labels = predict(val.module, val.loader, val.on, lambda _errors: None)
    paths = [str(s.path) for s in getattr(val_dataset, "samples", [])]
    if len(paths) != len(labels):  # unreadable images were skipped, or features were cached
        paths = None
    result = compute_metrics(torch.softmax(logits, 1).numpy(), labels.numpy(), run.classes, paths)
    best = run.history[run.best_epoch - 1]
    metrics = {
        "best_epoch": run.best_epoch, "epochs_run": len(run.history), "stopped": run.stopped,
        "val_loss": best["val_loss"], "val_acc": best["val_acc"], "val_top5": best["val_top5"],
        "train_loss": best["train_loss"], "train_acc": best["train_acc"], "trainable": run.trainable,
        "trainable_params": run.trainable_params, "skipped_images": run.skipped.count,
        "skipped_examples": run.skipped.first(), "evaluation": result.to_dict(),
    }
    write_json(run.out / "metrics.json", metrics)
    plot_curves(run.out / "curves.png", run.history, run.best_epoch)
    plot_confusion_matrix(run.out / "confusion_matrix.png", result.confusion_matrix, run.classes)
    return metrics
