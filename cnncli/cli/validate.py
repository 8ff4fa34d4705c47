"""Option values checked where each option is declared: ``typer.Option(..., parser=number(float, gt=0))``.

Numbers refuse nan, inf, text and values outside their meaningful range; sizes and counts also refuse what this
machine cannot do (threads and workers beyond a multiple of its CPUs, images over CNNCLI_MAX_INPUT_SIZE pixels a
side as model cards (:mod:`cnncli.core.limits`), a batch of input images larger than half its memory). Each refusal is
one sentence that the entry point prints as one error line with exit code 2. Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import typer

from cnncli.core.cpus import usable_cores
from cnncli.core.limits import DEFAULT_MAX_INPUT_SIZE as DEFAULT_MAX_IMAGE_SIZE  # noqa: F401 -- re-exported for cli.common
from cnncli.core.limits import MAX_INPUT_SIZE_ENV as MAX_IMAGE_SIZE_ENV
from cnncli.core.limits import max_input_size as max_image_size

CPU_FACTOR = 4  # --threads / --workers: at most this many per CPU
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit


def memory_bytes() -> int:
    """Physical memory of this machine (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


class Number:
    """A parser for one numeric option: kind (int or float) and bounds; ``upper`` adds a machine limit, a function
    returning (limit, why) evaluated when a value is given."""

    def __init__(self, kind: type = float, *, ge: float | None = None, gt: float | None = None,
                 le: float | None = None, lt: float | None = None,
                 upper: Callable[[], tuple[float, str]] | None = None) -> None:
        self.kind, self.ge, self.gt, self.le, self.lt, self.upper = kind, ge, gt, le, lt, upper

    def describe(self) -> str:
        low = f">= {_fmt(self.ge)}" if self.ge is not None else f"> {_fmt(self.gt)}" if self.gt is not None else ""
        high = f"<= {_fmt(self.le)}" if self.le is not None else f"< {_fmt(self.lt)}" if self.lt is not None else ""
        if low and high:
            lo_b = "[" if self.ge is not None else "("
            hi_b = "]" if self.le is not None else ")"
            return f"in {lo_b}{_fmt(self.ge if self.ge is not None else self.gt)}, " \
                   f"{_fmt(self.le if self.le is not None else self.lt)}{hi_b}"
        return low or high

    def __call__(self, value):
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and not isinstance(value, str) and self._ok(value)):
            return value
        text = str(value).strip()
        whole = "a whole number" if self.kind is int else "a number"
        try:
            number = float(text) if self.kind is float else int(text.replace("_", ""), 10)
        except ValueError:
            if self.kind is int:
                try:
                    f = float(text)
                except ValueError:
                    f = None
                if f is not None and math.isfinite(f) and f == int(f) and abs(f) < 2**63:
                    number = int(f)  # 1e3 is fine for a count
                else:
                    raise typer.BadParameter(f"must be {whole}{self._range()}, not {text!r}") from None
            else:
                raise typer.BadParameter(f"must be {whole}{self._range()}, not {text!r}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise typer.BadParameter(f"must be a finite number{self._range()}, not {text}")
        if not self._in_range(number):
            raise typer.BadParameter(f"must be {self.describe()}, not {text}")
        if self.upper is not None:
            limit, why = self.upper()
            if number > limit:
                raise typer.BadParameter(f"{text} is more than {why}; use at most {_fmt(limit)}")
        return number

    def _range(self) -> str:
        d = self.describe()
        return f" {d}" if d else ""

    def _in_range(self, x: float) -> bool:
        return not ((self.ge is not None and x < self.ge) or (self.gt is not None and x <= self.gt)
                    or (self.le is not None and x > self.le) or (self.lt is not None and x >= self.lt))

    def _ok(self, x: float) -> bool:
        return (not isinstance(x, float) or math.isfinite(x)) and self._in_range(x)


def number(kind: type = float, **bounds) -> Number:
    return Number(kind, **bounds)


def _per_cpu() -> tuple[int, str]:
    n = usable_cores()
    return CPU_FACTOR * n, f"{CPU_FACTOR} per CPU on this machine ({n} CPUs)"


def _image_limit() -> tuple[int, str]:
    limit = max_image_size()
    return limit, f"the {limit}-pixel limit (set {MAX_IMAGE_SIZE_ENV} to raise it)"


# The vocabulary of numbers: one declaration per kind of option, used by every command.
POSITIVE_INT = number(int, ge=1)
NON_NEGATIVE_INT = number(int, ge=0)
COUNT_PER_CPU = number(int, ge=1, upper=_per_cpu)  # --threads
WORKERS = number(int, ge=0, upper=_per_cpu)  # --workers (processes)
IMAGE_SIZE = number(int, ge=1, upper=_image_limit)
SEED = number(int, ge=0, le=MAX_SEED)
POSITIVE_FLOAT = number(float, gt=0)
NON_NEGATIVE_FLOAT = number(float, ge=0)
FRACTION_OPEN = number(float, gt=0, lt=1)  # --val-split
PROBABILITY_HALF_OPEN = number(float, ge=0, lt=1)  # --label-smoothing, --dropout
UNIT_INTERVAL = number(float, ge=0, le=1)  # --momentum
DECAY_FACTOR = number(float, gt=0, le=1)  # --layer-decay
EMA_DECAY = number(float, gt=0, lt=1)  # --ema-decay


def learning_rate(value):
    """--lr: a positive number, or ``auto`` (the LR range test picks it)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return POSITIVE_FLOAT(value)
    except typer.BadParameter as exc:
        raise typer.BadParameter(exc.message.replace(", not ", " or auto, not ", 1)) from None


def check_batch_memory(batch_size: int, image_size: int | tuple[int, int], channels: int = 3,
                       in_flight: int = 4) -> None:
    """Refuse a --batch-size whose float32 input batches alone (``in_flight`` of them) would take more than half
    of this machine's memory; one sentence with the size and the limit."""
    from cnncli.core.errors import UsageError

    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    need = batch_size * channels * h * w * 4 * in_flight
    total = memory_bytes()
    if total and need > total / 2:
        fits = max(1, int(total / 2 / (channels * h * w * 4 * in_flight)))
        raise UsageError(
            f"--batch-size {batch_size} at {h}x{w} pixels needs about {need / 2**30:.1f} GiB for its input batches "
            f"alone, more than half of this machine's {total / 2**30:.1f} GiB of memory; use --batch-size {fits} "
            "or less.")
