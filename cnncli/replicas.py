"""Data-parallel prediction on CPU: one worker process per share of the cores, each with its own copy of the
engine, decoding its own batches and running them, so no core waits for another.

Why: with separate decoder processes and a multi-threaded engine on the same cores, a decoder preempts an engine
thread inside a parallel section and its sibling threads wait at the barrier; predict reached 0.57-0.83 of the
CPU-time cap ``cores / (decode core-s per image + cores / forward img/s)``. A replica alternates decode and
forward on its own core(s): nothing to share, nothing to pickle but file paths in and probabilities out
(4 bytes x classes per image), and a single-threaded onnxruntime session wastes no time synchronising.

Replicas return the same numbers as the engine in the parent: onnxruntime's CPU kernels give bit-identical
logits for any intra-op thread count and batch split here (tests/test_replicas.py checks it on the engines that
replicate). Engines that cannot be re-opened from a recipe (PyTorch, ensembles, flip TTA, CUDA) keep the decoder
pipeline (:func:`cnncli.pipeline.decoded_batches`).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from cnncli.pipeline import InputItem, _decode_pixels

MAX_REPLICAS = 8  # past this, more threads per replica instead of more copies of the model in memory


@dataclass
class ScoredBatch:
    """What a replica sends back for one batch: probabilities of the images that decoded, in order."""

    paths: list[str]
    probs: np.ndarray | None  # (n_ok, classes) float32
    ok: list[bool]
    errors: dict[str, str]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def replica_plan(workers: int | None, threads: int | None, cores: int | None = None) -> tuple[int, int]:
    """(replicas, intra-op threads each). ``threads`` is the engine's total (default: the usable cores), shared
    out as one single-threaded replica per thread, at most MAX_REPLICAS (more threads each beyond that);
    ``workers`` fixes the number of replicas."""
    total = threads or cores or usable_cores()
    replicas = workers or min(total, MAX_REPLICAS)
    return replicas, max(1, total // replicas)


_ENGINE = None  # the engine of this replica process


def _start_replica(recipe: tuple, threads: int, parent_pid: int) -> None:
    global _ENGINE
    _watch_parent(parent_pid)
    _ENGINE = open_recipe(recipe, threads)


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent is gone (a SIGKILLed parent cannot stop its pool)."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, name="cnncli-parent-watch", daemon=True).start()


def open_recipe(recipe: tuple, threads: int):
    """Re-open an engine from its :meth:`replica_recipe` with ``threads`` intra-op threads."""
    kind, path, precision = recipe
    if kind == "onnx":
        from cnncli.engines.onnx_engine import OnnxEngine

        return OnnxEngine(path, device="cpu", threads=threads, allow_spinning=False, verbose=False)
    from cnncli.engines.openvino_engine import OpenVinoEngine

    return OpenVinoEngine(path, threads=threads, precision=precision)


def _score(paths: list[str], errors: dict[str, str]) -> ScoredBatch:
    from cnncli.images import normalize

    pre = _ENGINE.card.preprocessing
    decoded = _decode_pixels(paths, pre, errors)
    probs = _ENGINE.predict_proba(normalize(decoded.pixels, pre)) if decoded.pixels is not None else None
    return ScoredBatch(paths=decoded.paths, probs=probs, ok=decoded.ok, errors=decoded.errors)


def replicable(engine) -> bool:
    return getattr(engine, "replica_recipe", lambda: None)() is not None


def scored_batches(engine, items: list[InputItem], batch_size: int = 32, workers: int | None = None,
                   threads: int | None = None, prefetch: int = 1) -> Iterator[ScoredBatch]:
    """Probabilities for ``items`` in batches, in input order, from replicas of ``engine`` (which must be
    :func:`replicable`); at most ``replicas + prefetch`` batches in flight. Falls back to ``engine`` in this
    process if the replicas cannot start or die."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    jobs = [([it.path for it in chunk], {it.path: it.error for it in chunk if it.error}) for chunk in chunks]
    replicas, per = replica_plan(workers, threads)
    replicas = min(replicas, len(jobs))
    done = 0
    pending: deque = deque()
    try:
        with ProcessPoolExecutor(max_workers=replicas, mp_context=mp.get_context("spawn"), initializer=_start_replica,
                                 initargs=(engine.replica_recipe(), per, os.getpid())) as pool:
            for paths, errors in jobs[: replicas + prefetch]:
                pending.append(pool.submit(_score, paths, errors))
            while pending:
                result = pending.popleft().result()
                nxt = done + len(pending) + 1
                if nxt < len(jobs):
                    pending.append(pool.submit(_score, *jobs[nxt]))
                done += 1
                yield result
    except BrokenProcessPool:
        from cnncli.report import warn

        warn("the predict worker processes stopped; running the remaining images in this process.")
        global _ENGINE
        _ENGINE = engine
        for paths, errors in jobs[done:]:
            yield _score(paths, errors)
