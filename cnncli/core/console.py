"""The one console: messages, warnings and progress go to stderr through :data:`err_console`
(:func:`info`, :func:`warn`); :func:`rich_table` and :func:`to_text` render tables for people."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterable
from typing import IO

from rich.console import Console
from rich.table import Table

err_console = Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", markup=True)


def info(message: str) -> None:
    err_console.print(message, markup=False)


def terminal_console(stream: IO[str]) -> Console:
    """A console for tables on ``stream``: the terminal's width (COLUMNS), 80 when it is not a terminal."""
    return Console(file=stream, highlight=False, soft_wrap=False)


def rich_table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable],
               stream: IO[str] | None = None) -> None:
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

