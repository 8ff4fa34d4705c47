"""The one progress bar: a rich bar on stderr when it is a terminal (and nothing otherwise), used by predict,
predict at scale and training alike, so every long command looks and behaves the same."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cnncli.core.console import err_console


class ProgressBar:
    """A started bar with one task: ``advance(n, **fields)`` moves it and updates the extra text columns."""

    def __init__(self, bar, task) -> None:
        self._bar, self._task = bar, task

    def advance(self, n: int = 1, **fields) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=n, **fields)

    def update(self, **fields) -> None:
        if self._bar is not None:
            self._bar.update(self._task, **fields)


@contextmanager
def progress_bar(label: str, total: int, fields: dict[str, str] | None = None,
                 enabled: bool = True) -> Iterator[ProgressBar]:
    """A transient bar ``label [=====] done/total <fields...> ETA`` on stderr while the block runs. ``fields``
    names the extra text columns and their first values (``{"rate": ""}``); the bar is drawn only when
    ``enabled``, ``total`` is positive and stderr is a terminal; otherwise the returned bar does nothing."""
    fields = dict(fields or {})
    if not (enabled and total and err_console.is_terminal):
        yield ProgressBar(None, None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn("{task.fields[" + name + "]}") for name in fields]
    columns.append(TimeRemainingColumn())
    bar = Progress(*columns, console=err_console, transient=True)
    task = bar.add_task(label, total=total, **fields)
    bar.start()
    try:
        yield ProgressBar(bar, task)
    finally:
        bar.stop()
