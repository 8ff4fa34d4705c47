"""The one-line summary that ends a job at scale writing parquet parts; its counts come from the job's
:class:`cnncli.core.progress.JobProgress`, the bar every predict job draws."""

from __future__ import annotations

from cnncli.core.console import info
from cnncli.core.progress import JobProgress


def print_parts_summary(progress: JobProgress, location: str, parts_written: int, parts_skipped: int = 0) -> None:
    """images, failed, seconds, img/s and how many parts were written where, on stderr."""
    where = f"{parts_written} part{'s' if parts_written != 1 else ''} in {location}"
    if parts_skipped:
        where += f" ({parts_skipped} already there, skipped)"
    images = f"{progress.images:,} image{'s' if progress.images != 1 else ''}"
    info(f"{images}, {progress.failed:,} failed, {progress.seconds:.1f} s, {progress.rate:,.1f} img/s -> {where}"
         + (" (failed rows carry their reason in the error column)" if progress.failed else ""))
