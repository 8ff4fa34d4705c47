"""The driver's view of a job at scale: a rich progress bar (images done / total, img/s, ETA, failed count) on
a terminal, and the one-line summary at the end."""

from __future__ import annotations

import time

from cnncli.core.console import err_console, info


class JobProgress:
    """Counts images and failures as shards or batches finish; draws a bar when stderr is a terminal."""

    def __init__(self, total: int, label: str = "predict") -> None:
        self.total, self.images, self.failed = total, 0, 0
        self.started = time.perf_counter()
        self.finished: float | None = None
        self._bar = None
        if total and err_console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[failed]} failed"), console=err_console, transient=True)
            self._task = self._bar.add_task(label, total=total, rate="", failed=0)

    def __enter__(self) -> JobProgress:
        self.started = time.perf_counter()
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.finished = time.perf_counter()  # the summary's seconds end here, not after Ray has shut down
        if self._bar is not None:
            self._bar.stop()

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
        if self._bar is not None:
            self._bar.update(self._task, advance=images, rate=f"{self.rate:,.1f} img/s", failed=self.failed)


def print_summary(progress: JobProgress, location: str, parts_written: int | None = None,
                  parts_skipped: int = 0) -> None:
    """images, failed, seconds, img/s and where the results are, on stderr."""
    where = location
    if parts_written is not None:
        where = f"{parts_written} part{'s' if parts_written != 1 else ''} in {location}"
        if parts_skipped:
            where += f" ({parts_skipped} already there, skipped)"
    info(f"{progress.images:,} image{'s' if progress.images != 1 else ''}, {progress.failed:,} failed, {progress.seconds:.1f} s, "
         f"{progress.rate:,.1f} img/s -> {where}"
         + (" (failed rows carry their reason in the error column)" if progress.failed and parts_written is not None
            else ""))
