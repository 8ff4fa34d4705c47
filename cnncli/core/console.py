"""The one console: messages, warnings and errors go to stderr through :data:`err_console` (:func:`info`,
:func:`warn`, :func:`error`); :func:`rich_table` and :func:`terminal_console` draw tables for people;
:func:`to_text` is JSON for programs.

Every string printed here is literal text: a :class:`LiteralConsole` never reads rich markup (``[bold]``,
``[/x]``) or emoji codes (``:smile:``) from a string, and shows control characters, ANSI escapes and the
non-UTF-8 bytes of file names as visible escapes (:func:`cnncli.core.text.visible`). Style comes only from
:class:`rich.text.Text` objects that the code builds (:func:`styled`), so a path or a class name is always
shown as it is, in every command and table.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnncli.core.text import json_text, visible


class LiteralConsole(Console):
    """A rich console on which every ``str`` (printed, a table cell, a title, a header) is shown literally:
    no markup, no emoji codes, no highlighting, control characters escaped."""

    def __init__(self, **kwargs) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs) -> Text:
        kwargs.update(markup=False, emoji=False, highlight=False)
        return super().render_str(visible(text), **kwargs)


err_console = LiteralConsole(stderr=True)


def styled(text: object, style: str = "") -> Text:
    """``text`` shown literally (see :func:`visible`) in ``style``: how code colours a word or a cell."""
    return Text(visible(text), style=style)


def info(message: object) -> None:
    err_console.print(message)


def warn(message: object) -> None:
    err_console.print(styled("warning:", "yellow"), message)


def error(message: object) -> None:
    """``error: <message>`` on stderr. On a terminal a long sentence is wrapped at word boundaries to its width;
    into a file or a pipe it stays on one line, whole for grep and logs."""
    err_console.print(styled("error:", "bold red"), message, soft_wrap=not err_console.is_terminal)


def terminal_console(stream: IO[str]) -> LiteralConsole:
    """A console for tables on ``stream``: the terminal's width (COLUMNS), 80 when it is not a terminal."""
    return LiteralConsole(file=stream, soft_wrap=False)


def cell(value: object) -> Text | object:
    """A table cell: a renderable the code made (a :class:`Text`, a table) as it is; anything else as literal
    text."""
    return value if hasattr(value, "__rich_console__") or hasattr(value, "__rich__") else styled(value)


def rich_table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable],
               stream: IO[str] | None = None) -> None:
    """A plain rich table to stdout (or ``stream``); every cell is literal text (see :func:`cell`)."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[cell(c) for c in row])
    terminal_console(stream or sys.stdout).print(table)


def to_text(obj) -> str:
    """``obj`` as indented JSON; non-ASCII text as it is, a non-UTF-8 byte of a file name as its escape."""
    return json_text(obj, indent=2)
