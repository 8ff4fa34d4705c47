"""Rendering results: rich tables for people, JSON / JSON Lines / CSV for programs, and the stderr console.

Machine formats go to stdout (or --output) and are written incrementally; messages and progress go to stderr.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import IO, Iterable

from rich.console import Console
from rich.table import Table

FORMATS = ("table", "json", "jsonl", "csv")

err_console = Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", markup=True)


def info(message: str) -> None:
    err_console.print(message, markup=False)


class PredictionWriter:
    """Streams predictions in one of FORMATS to ``stream``."""

    def __init__(self, fmt: str, stream: IO[str], top_k: int) -> None:
        self.fmt, self.stream, self.top_k = fmt, stream, top_k
        self.rows: list = []
        self.first = True
        self.csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if self.csv:
            self.csv.writerow(["path", "rank", "label", "index", "prob"])

    def write(self, pred) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(pred.to_dict(), ensure_ascii=False) + "\n")
            self.stream.flush()
        elif self.fmt == "json":
            self.stream.write(("[\n" if self.first else ",\n") + "  " + json.dumps(pred.to_dict(), ensure_ascii=False))
        elif self.fmt == "csv":
            if pred.error is not None:
                self.csv.writerow([pred.path, "", "", "", ""])
            for rank, t in enumerate(pred.top, 1):
                self.csv.writerow([pred.path, rank, t["label"], t["index"], f"{t['prob']:.6f}"])
            self.stream.flush()
        else:
            self.rows.append(pred)
        self.first = False

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("[]\n" if self.first else "\n]\n")
        elif self.fmt == "table":
            render_prediction_table(self.rows, self.top_k, self.stream)
        self.stream.flush()


def render_prediction_table(preds: list, top_k: int, stream: IO[str]) -> None:
    console = Console(file=stream, highlight=False, soft_wrap=False, width=max(100, Console(file=stream).width))
    good = [p for p in preds if p.error is None]
    if len(preds) == 1 and good:
        pred = good[0]
        table = Table(title=pred.path, title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("label")
        table.add_column("index", justify="right")
        table.add_column("prob", justify="right")
        for rank, t in enumerate(pred.top, 1):
            table.add_row(str(rank), t["label"], str(t["index"]), f"{t['prob']:.4f}")
        console.print(table)
        return
    table = Table()
    table.add_column("image", overflow="fold")
    table.add_column("top-1")
    table.add_column("prob", justify="right")
    if top_k > 1:
        table.add_column("next")
    for pred in preds:
        if pred.error is not None:
            table.add_row(pred.path, "[red]error[/]", "", *([pred.error] if top_k > 1 else []))
            continue
        first = pred.top[0]
        cells = [pred.path, first["label"], f"{first['prob']:.4f}"]
        if top_k > 1:
            cells.append(", ".join(f"{t['label']} {t['prob']:.3f}" for t in pred.top[1:3]))
        table.add_row(*cells)
    console.print(table)


def rich_table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable], stream: IO[str] | None = None) -> None:
    """A plain rich table to stdout (or ``stream``)."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[str(c) for c in row])
    Console(file=stream or sys.stdout, highlight=False).print(table)


def to_text(obj) -> str:
    buf = io.StringIO()
    json.dump(obj, buf, indent=2, ensure_ascii=False)
    return buf.getvalue()
