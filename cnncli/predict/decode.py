"""Decoding images for an engine: worker processes decode and preprocess batches while the engine runs, in
input order, with a bounded number of batches in flight. Workers import only PIL, numpy and cnncli.data.images
(never torch), so the same pool serves every engine."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cnncli.core.cpus import usable_cores
from cnncli.core.errors import ImageError
from cnncli.core.processes import exit_with_parent, exit_without_teardown
from cnncli.data.images import load_pixels, normalize
from cnncli.data.inputs import InputItem
from cnncli.models.card import Preprocessing


@dataclass
class DecodedBatch:
    paths: list[str]
    array: np.ndarray | None  # (n_ok, C, H, W) float32 model input for the images that decoded, in order
    ok: list[bool]  # one per path
    errors: dict[str, str]  # path -> message, for the ones that did not


@dataclass
class _Pixels:
    """What a decoder process sends back: uint8 (n_ok, H, W, C), a quarter of the float32 input's bytes."""

    paths: list[str]
    pixels: np.ndarray | None
    ok: list[bool]
    errors: dict[str, str]

    def normalized(self, pre: Preprocessing) -> DecodedBatch:
        array = normalize(self.pixels, pre) if self.pixels is not None else None
        return DecodedBatch(paths=self.paths, array=array, ok=self.ok, errors=self.errors)


def decode_batch(paths: list[str], pre: Preprocessing, preset_errors: dict[str, str] | None = None) -> DecodedBatch:
    """Decode and preprocess ``paths``; bad files are recorded in ``errors``, never raised."""
    return decode_pixels(paths, pre, preset_errors).normalized(pre)


def decode_pixels(paths: list[str], pre: Preprocessing, preset_errors: dict[str, str] | None = None) -> _Pixels:
    arrays, ok, errors = [], [], dict(preset_errors or {})
    for path in paths:
        if path in errors:
            ok.append(False)
            continue
        try:
            arrays.append(load_pixels(path, pre))
            ok.append(True)
        except ImageError as exc:
            errors[path] = str(exc)
            ok.append(False)
        except Exception as exc:  # a decoder bug must not take the whole batch down
            errors[path] = f"{path}: cannot read the image ({type(exc).__name__}: {exc})."
            ok.append(False)
    return _Pixels(paths=paths, pixels=np.stack(arrays) if arrays else None, ok=ok, errors=errors)


DECODER_NICENESS = 10


def _lower_priority() -> None:
    """Decoder processes yield to the engine's threads: an engine thread preempted inside a parallel section
    stalls its siblings at the barrier, so decoding fills the gaps instead of competing."""
    try:
        os.nice(DECODER_NICENESS)
    except OSError:
        pass


def _decoder_init(parent_pid: int) -> None:
    """Set up a decoder process: lower its priority, and make it exit when its parent is gone."""
    _lower_priority()
    exit_with_parent(parent_pid)
    exit_without_teardown()


def default_workers() -> int:
    return min(4, usable_cores())


def decoded_batches(
    items: list[InputItem], pre: Preprocessing, batch_size: int = 32, workers: int | None = None, prefetch: int = 2
) -> Iterator[DecodedBatch]:
    """Decode ``items`` in batches, in order. With workers > 0, decoding runs in a process pool (spawned, so it
    never inherits an engine's threads) with at most ``workers + prefetch`` batches in flight; workers send uint8
    pixels and this process normalises them (a quarter of the bytes through the pipe)."""
    workers = default_workers() if workers is None else workers
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    jobs = [([it.path for it in chunk], {it.path: it.error for it in chunk if it.error}) for chunk in chunks]
    if workers <= 0 or len(items) <= max(4, batch_size // 4):
        for paths, errors in jobs:
            yield decode_batch(paths, pre, errors)
        return
    ctx = mp.get_context("spawn")
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    limit = workers + prefetch
    pending: deque = deque()
    done = 0  # batches already yielded, in order
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_decoder_init,
                             initargs=(os.getpid(),)) as pool:
        try:
            for paths, errors in jobs[:limit]:
                pending.append(pool.submit(decode_pixels, paths, pre, errors))
            while pending:
                result = pending.popleft().result().normalized(pre)
                nxt = done + len(pending) + 1
                if nxt < len(jobs):
                    pending.append(pool.submit(decode_pixels, jobs[nxt][0], pre, jobs[nxt][1]))
                done += 1
                yield result
        except BrokenProcessPool:
            # a decoder process died (out of memory, or a host that cannot spawn): finish in this process
            from cnncli.core.console import warn

            warn("the image decoder processes stopped; decoding the remaining images in this process.")
            for paths, errors in jobs[done:]:
                yield decode_batch(paths, pre, errors)

