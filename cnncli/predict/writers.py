"""Writing predictions: rich tables for people, JSON / JSON Lines / CSV for programs. Machine formats go to
stdout (or --output) and are written as each image finishes.

Paths and labels are data, never markup: tables show them literally (control characters and non-UTF-8 bytes of
file names as visible escapes, :mod:`cnncli.core.text`); JSON keeps the exact string (a non-UTF-8 byte as its
``\\udcXX`` escape); CSV writes it as it is (a non-UTF-8 byte as that very byte)."""

from __future__ import annotations

import csv
import io
import os
from typing import IO

from rich.table import Table

from cnncli.core.console import styled, terminal_console
from cnncli.core.text import json_text

FORMATS = ("table", "json", "jsonl", "csv")


CSV_COLUMNS = ["path", "rank", "label", "index", "prob", "error"]  # error: set (and the rest empty) for a failed image


NEXT_SHOWN = 2  # classes after the first shown in a several-image table


class PredictionWriter:
    """Streams predictions in one of FORMATS to ``stream``."""

    def __init__(self, fmt: str, stream: IO[str], top_k: int, root: str | None = None,
                 multilabel: bool = False) -> None:
        self.fmt, self.stream, self.top_k, self.root = fmt, stream, top_k, root
        self.rows: list = []
        self.first = True
        self.csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if self.csv:
            if isinstance(stream, io.TextIOWrapper):  # a file name's non-UTF-8 bytes are written back as they were
                stream.reconfigure(errors="surrogateescape")
            self.csv.writerow(CSV_COLUMNS + (["selected"] if multilabel else []))

    def write(self, pred) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json_text(pred.to_dict()) + "\n")
            self.stream.flush()
        elif self.fmt == "json":
            self.stream.write(("[\n" if self.first else ",\n") + "  " + json_text(pred.to_dict()))
        elif self.fmt == "csv":
            if pred.error is not None:
                self.csv.writerow([pred.path, "", "", "", "", pred.error])
            for rank, t in enumerate(pred.top, 1):
                # a multi-label model's rows end with selected: 1 for a class over its threshold, else 0
                selected = [] if pred.labels is None else [int(t["label"] in pred.labels)]
                self.csv.writerow([pred.path, rank, t["label"], t["index"], f"{t['prob']:.6f}", "", *selected])
            self.stream.flush()
        else:
            self.rows.append(pred)
        self.first = False

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("[]\n" if self.first else "\n]\n")
        elif self.fmt == "table":
            render_prediction_table(self.rows, self.top_k, self.stream, root=self.root)
        self.stream.flush()


def shown_path(path: str, root: str | None) -> str:
    """``path`` relative to the input folder ``root`` when it lies inside it."""
    if root:
        rel = os.path.relpath(path, root)
        if not rel.startswith(".."):
            return rel
    return path


def common_folder(paths: list[str]) -> str | None:
    """The deepest folder holding all ``paths`` (None when that is the file-system root or the current folder)."""
    try:
        folder = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    except ValueError:
        return None
    if folder in ("", os.sep) or folder == os.getcwd():
        return None
    return folder


def render_prediction_table(preds: list, top_k: int, stream: IO[str], root: str | None = None) -> None:
    """One image: its top-k as rows. Several: one row per image, paths relative to the input folder (or the
    folder they share), within the terminal's width."""
    console = terminal_console(stream)
    good = [p for p in preds if p.error is None]
    if len(preds) == 1 and good:
        pred = good[0]
        table = Table(title=pred.path, title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("label", overflow="fold")
        table.add_column("index", justify="right")
        table.add_column("prob", justify="right")
        if pred.labels is not None:  # a multi-label model: which classes are over their thresholds
            table.add_column("selected", justify="center")
        for rank, t in enumerate(pred.top, 1):
            selected = [] if pred.labels is None else ["yes" if t["label"] in pred.labels else ""]
            table.add_row(str(rank), t["label"], str(t["index"]), f"{t['prob']:.4f}", *selected)
        console.print(table)
        return
    if root is None and len(preds) > 1:
        root = common_folder([p.path for p in preds])
    elif root is not None and os.path.abspath(root) == os.getcwd():
        root = None
    multilabel = any(p.labels is not None for p in good)
    table = Table()
    table.add_column("image", overflow="fold", ratio=3)
    table.add_column("labels" if multilabel else "top-1", overflow="fold", ratio=2)
    table.add_column("prob", justify="right", no_wrap=True)
    if top_k > 1:
        table.add_column("next", overflow="fold", ratio=3)
    for pred in preds:
        name = shown_path(pred.path, root)
        if pred.error is not None:
            table.add_row(name, styled("error", "red"), "", *([pred.error] if top_k > 1 else []))
            continue
        first = pred.top[0]
        cells = [name, first["label"], f"{first['prob']:.4f}"]
        if multilabel:  # the labels over their thresholds, and the top probability
            cells[1] = ", ".join(pred.labels) or "(none)"
        if top_k > 1:
            cells.append(", ".join(f"{t['label']} {t['prob']:.3f}" for t in pred.top[1 : 1 + NEXT_SHOWN]))
        table.add_row(*cells)
    if root:
        table.title, table.title_justify = f"images in {root}", "left"
    console.print(table)
    most = max((len(p.top) for p in good), default=0)
    if most > 1 + NEXT_SHOWN:
        console.print(f"{1 + NEXT_SHOWN} of the top {most} classes shown per image; --format json, jsonl or csv "
                      "lists all of them.")

