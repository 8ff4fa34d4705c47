"""The files a finished multi-label run ends with, for the best epoch's weights and thresholds: metrics.json (the
multi-label evaluation of the validation images plus the run's summary), curves.png, pr_curves.png and
co_occurrence.png."""

from __future__ import annotations

import torch
from torch import nn

from cnncli.evaluate.plots import plot_curves
from cnncli.train.epoch import ValStep, predict
from cnncli.train.final_outputs import FinishedRun
from cnncli.train.outputs import write_json


def write_multilabel_outputs(run: FinishedRun, model: nn.Module, val: ValStep, val_dataset, card) -> dict:
    """Load best.safetensors (weights and the card's tuned thresholds) into ``model``, score the validation
    images, write the files and return the metrics."""
    from safetensors.torch import load_file

    from cnncli.evaluate.multilabel import compute_multilabel_metrics, save_multilabel_plots
    from cnncli.models.checkpoint import read_card

    best_path = run.out / "best.safetensors"
    model.load_state_dict(load_file(str(best_path)), strict=False)
    thresholds = read_card(best_path).thresholds
    logits, targets = predict(val.module, val.loader, val.on, lambda _errors: None)
    paths = [str(s.path) for s in getattr(val_dataset, "samples", [])]
    if len(paths) != len(targets):
        paths = None
    best = run.history[run.best_epoch - 1]
    metrics = {
        "task": "multilabel", "best_epoch": run.best_epoch, "epochs_run": len(run.history), "stopped": run.stopped,
        "val_loss": best["val_loss"], "val_map": best["val_map"], "val_exact_match": best["val_acc"],
        "train_loss": best["train_loss"], "trainable": run.trainable, "trainable_params": run.trainable_params,
        "skipped_images": run.skipped.count, "skipped_examples": run.skipped.first(),
    }
    plot_curves(run.out / "curves.png", run.history, run.best_epoch)
    if len(targets):
        result = compute_multilabel_metrics(torch.sigmoid(logits).numpy(), targets.numpy(), run.classes, thresholds,
                                            paths)
        metrics["evaluation"] = result.to_dict()
        save_multilabel_plots(result, run.out)
    write_json(run.out / "metrics.json", metrics)
    return metrics
