"""The one progress bar: a rich bar on stderr when it is a terminal (and nothing otherwise), used by predict,
predict at scale and training alike, so every long command looks and behaves the same. :class:`JobProgress` is
that bar with a job's counts and clock (images done and failed, seconds, img/s) for the summary that ends it."""

from __future__ import annotations

import time
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

    def refresh(self) -> None:
        """Draw the bar now rather than at its next tick."""
        if self._bar is not None:
            self._bar.refresh()


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


class JobProgress:
    """A job's images done and failed against a clock, drawn while the block runs as
    ``label [=====] done/total  12.3 img/s  2 failed  ETA`` (see :func:`progress_bar`); after it, the counts,
    ``seconds`` and ``rate`` for the job's summary."""

    def __init__(self, total: int, label: str = "predict", enabled: bool = True) -> None:
        self.total, self.label, self.enabled = total, label, enabled
        self.images, self.failed = 0, 0
        self.started = time.perf_counter()
        self.finished: float | None = None
        self._bar = ProgressBar(None, None)
        self._drawing = None

    def __enter__(self) -> JobProgress:
        self.started, self.finished = time.perf_counter(), None
        self._drawing = progress_bar(self.label, self.total, fields={"rate": "", "failed": "0 failed"},
                                     enabled=self.enabled)
        self._bar = self._drawing.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.finished = time.perf_counter()  # the summary's seconds end here (not after, say, Ray has shut down)
        drawing, self._drawing = self._drawing, None
        if drawing is not None:
            drawing.__exit__(*exc)

    def restart(self) -> None:
        """Start the clock again (after workers have loaded the model)."""
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def advance(self, images: int, failed: int = 0) -> None:
        self.images += images
        self.failed += failed
        self._bar.advance(images, rate=f"{self.rate:,.1f} img/s", failed=f"{self.failed:,} failed")
