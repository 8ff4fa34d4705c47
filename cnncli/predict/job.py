"""One predict job, the same for local files and for inputs at scale that are not written as parquet parts: a
stream of predictions is written to its target (stdout; a file, which appears complete with its missing folders
created; or whatever ``open_output`` opens, e.g. an object-store key uploaded whole), tallied in one
:class:`~cnncli.predict.summary.PredictionSummary` under one progress bar, and reported on stderr the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import IO

from cnncli.core.atomic import atomic_open
from cnncli.core.console import err_console, info, warn
from cnncli.core.progress import JobProgress
from cnncli.predict.run import Prediction
from cnncli.predict.summary import PredictionSummary
from cnncli.predict.writers import PredictionWriter

BAR_FROM_IMAGES = 9  # fewer images are done before a bar would tell anything


@dataclass
class PredictJobResult:
    """What a finished job reports: the summary, and what was asked of it."""

    summary: PredictionSummary
    total: int
    fmt: str
    output: str | None
    summary_only: bool

    def report(self) -> int:
        """Print where the results went and the summary on stderr; returns the exit code (1 if any image failed)."""
        if self.output:
            info(f"wrote {self.summary.images} predictions ({self.fmt}) to {self.output}.")
        if self.total > 1 or self.summary_only:
            for line in self.summary.lines():
                info(line)
        if self.summary.failed:
            err_console.print(f"{self.summary.failed} of {self.total} images failed.", highlight=False)
            return 1
        return 0


def run_predict_job(predictions: Iterable[Prediction], total: int, fmt: str, top_k: int, output: str | None = None,
                    summary_only: bool = False, root: str | None = None, multilabel: bool = False,
                    open_output: Callable[[str], AbstractContextManager[IO[str]]] = atomic_open) -> PredictJobResult:
    """Write ``predictions`` (``total`` of them, consumed lazily) in ``fmt`` to ``output`` (stdout when None,
    nothing with ``summary_only``); each failure is warned about as it comes. ``root``: the folder table paths
    are shown relative to.

    Whatever stops the job part-way (an exception, Ctrl-C) leaves every finished prediction written: the output
    is closed as a complete file of the rows done so far (a JSON array ends with ``]``, a table is drawn) and put
    in place under its name, a warning says how many of ``total`` it holds, and the exception goes on to the
    caller (exit 1, or 130 for Ctrl-C). Only when not one row was finished does an earlier file of that name stay
    as it was. A kill -9 or a power cut leaves the earlier file (the write goes through a temporary file)."""
    progress = JobProgress(total, enabled=total >= BAR_FROM_IMAGES)
    summary = PredictionSummary(progress)
    # a file is written beside the target and renamed at the end: a kill or a full disk leaves the previous one
    target = nullcontext(None) if summary_only else open_output(output) if output else nullcontext(sys.stdout)
    written, stopped = 0, None
    with target as stream:
        writer = PredictionWriter(fmt, stream, top_k, root=root, multilabel=multilabel) if stream is not None else None
        try:
            with progress:
                for pred in predictions:
                    if pred.error is not None:
                        warn(pred.error)
                    summary.add(pred)
                    if writer is not None:
                        writer.write(pred)
                        written += 1
        except BaseException as exc:  # an exception or Ctrl-C: keep what is done, then let it go on
            if writer is None or not written:
                raise  # nothing finished to keep: an earlier output file stays as it was
            stopped = exc
        if writer is not None:
            writer.close()  # a table is drawn here, once the bar is gone; a JSON array is closed
    if stopped is not None:
        where = output if output else "stdout"
        warn(f"the job stopped after {written} of {total} images; the {written} finished predictions are written "
             f"to {where}.")
        raise stopped
    return PredictJobResult(summary=summary, total=total, fmt=fmt, output=output, summary_only=summary_only)
