"""Run outputs: results.csv (one row per epoch) and metrics.json, written atomically; the figures (curves.png,
confusion_matrix.png) are drawn by :mod:`cnncli.evaluate.plots`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from cnncli.core.atomic import write_bytes_atomic
from cnncli.core.text import json_text

RESULT_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "seconds")
EXTRA_COLUMNS = ("val_map",  # a multi-label run's validation mAP
                 "kept", "val_acc_raw", "val_acc_ema", "val_loss_raw", "val_loss_ema")  # --ema: which weights


def write_results_csv(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    extra = [c for c in EXTRA_COLUMNS if history and c in history[0]]  # only runs that have them (multi-label)
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS + tuple(extra), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_bytes_atomic(path, buf.getvalue().encode())


def read_results_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_json(path: Path, obj) -> None:
    write_bytes_atomic(path, (json_text(obj, indent=2) + "\n").encode())  # a non-UTF-8 file name: its JSON escape
