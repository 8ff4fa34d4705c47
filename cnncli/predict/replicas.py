"""Data-parallel prediction on CPU: one replica of the engine per share of the cores (this process and worker
processes), each decoding its own batches and running them, so no core waits for another.

Why: with separate decoder processes and a multi-threaded engine on the same cores, a decoder preempts an engine
thread inside a parallel section and its sibling threads wait at the barrier; predict reached 0.57-0.83 of the
CPU-time cap ``cores / (decode core-s per image + cores / forward img/s)``. A replica alternates decode and
forward on its own core(s): nothing to share, nothing to pickle but file paths in and probabilities out
(4 bytes x classes per image), and a single-threaded onnxruntime session wastes no time synchronising.

Replicas return the same numbers as the engine in the parent: onnxruntime's CPU kernels give bit-identical
logits for any intra-op thread count and batch split here (tests/test_replicas.py checks it on the engines that
replicate). Engines that cannot be re-opened from a recipe (PyTorch, ensembles, flip TTA, CUDA) keep the decoder
pipeline (:func:`cnncli.predict.decode.decoded_batches`).

A replica runs at most :data:`REPLICA_BATCH` (16) images per forward, whatever ``--batch-size`` (when larger): a
single-threaded forward is no faster per image at 32 (one process alone, AMD EPYC: 10.9 ms per image at 16, 11.9 at
32; Intel Xeon: 9.06 at 8, 10.16 at 32), while the larger batch makes each replica fault in more memory on its
first forwards (onnxruntime's arena: 68k + 17k page faults at 32, 35k + 9k at 16), holds more of it (peak 521 MB
against 332 MB a process) and leaves a core idle for up to a whole batch at the end of a job. Whole `cnncli predict
FOLDER` of 512 JPEGs, 2-core AMD EPYC, 48 interleaved runs: median 101.9 img/s at 16 against 99.3 at 32, CPU 17.86
against 18.42 ms per image (system time 1.15 against 1.48).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cnncli.core.cpus import usable_cores
from cnncli.core.processes import exit_with_parent, exit_without_teardown
from cnncli.data.inputs import InputItem
from cnncli.predict.decode import decode_pixels

MAX_REPLICAS = 8  # past this, more threads per replica instead of more copies of the model in memory
REPLICA_BATCH = 16  # images per forward in a replica, at most (--batch-size when smaller); see the docstring


@dataclass
class ScoredBatch:
    """What a replica sends back for one batch: probabilities of the images that decoded, in order."""

    paths: list[str]
    probs: np.ndarray | None  # (n_ok, classes) float32
    ok: list[bool]
    errors: dict[str, str]


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
    exit_with_parent(parent_pid)  # a SIGKILLed parent cannot stop its pool
    _ENGINE = open_recipe(recipe, threads)
    exit_without_teardown()  # the pool waits for its workers at the end of a job


def open_recipe(recipe: tuple, threads: int):
    """Re-open an engine from its :meth:`replica_recipe` with ``threads`` intra-op threads."""
    kind, path, precision = recipe
    if kind == "onnx":
        from cnncli.engines.onnx_engine import OnnxEngine

        return OnnxEngine(path, device="cpu", threads=threads, allow_spinning=False, verbose=False)
    from cnncli.engines.openvino_engine import OpenVinoEngine

    return OpenVinoEngine(path, threads=threads, precision=precision)


def _score(paths: list[str], errors: dict[str, str], engine=None) -> ScoredBatch:
    from cnncli.data.images import normalize

    engine = engine or _ENGINE
    pre = engine.card.preprocessing
    decoded = decode_pixels(paths, pre, errors)
    probs = engine.predict_proba(normalize(decoded.pixels, pre)) if decoded.pixels is not None else None
    return ScoredBatch(paths=decoded.paths, probs=probs, ok=decoded.ok, errors=decoded.errors)


def replica_jobs(items: list[InputItem], batch_size: int) -> list[tuple[list[str], dict[str, str]]]:
    """The jobs a replica takes: (paths, errors known already) of at most ``min(batch_size, REPLICA_BATCH)``
    images, in order."""
    step = max(1, min(batch_size, REPLICA_BATCH))
    chunks = [items[i : i + step] for i in range(0, len(items), step)]
    return [([it.path for it in chunk], {it.path: it.error for it in chunk if it.error}) for chunk in chunks]


def replicable(engine) -> bool:
    return getattr(engine, "replica_recipe", lambda: None)() is not None


def scored_batches(engine, items: list[InputItem], batch_size: int = 32, workers: int | None = None,
                   threads: int | None = None, prefetch: int = 1) -> Iterator[ScoredBatch]:
    """Probabilities for ``items`` in batches, in input order, from replicas of ``engine`` (which must be
    :func:`replicable`). This process is one of the replicas: it takes the next batch itself whenever the batch due
    next is not ready yet (so it works while the worker processes start, and never idles); the other
    ``replicas - 1`` are worker processes with at most ``replicas + prefetch`` batches in flight. If the workers
    cannot start or die, this process finishes their batches."""
    import multiprocessing as mp
    from concurrent.futures import Future, ProcessPoolExecutor

    replicas, per = replica_plan(workers, threads)
    jobs = replica_jobs(items, batch_size)
    replicas = max(1, min(replicas, len(jobs)))
    recipe = engine.replica_recipe()
    opened: list = [engine] if getattr(engine, "threads", None) == per else []

    def local():  # this process's replica, opened once the workers' start is under way (they start meanwhile)
        if not opened:
            opened.append(open_recipe(recipe, per))
        return opened[0]

    pool = None
    if replicas > 1:
        pool = ProcessPoolExecutor(max_workers=replicas - 1, mp_context=mp.get_context("spawn"),
                                   initializer=_start_replica, initargs=(recipe, per, os.getpid()))
    pending: deque = deque()  # (job index, Future or ScoredBatch), in job order
    next_job, broken = 0, False
    try:
        while pending or next_job < len(jobs):
            in_pool = sum(isinstance(entry, Future) for _, entry in pending)
            while pool is not None and not broken and next_job < len(jobs) and in_pool < replicas - 1 + prefetch:
                pending.append((next_job, pool.submit(_score, *jobs[next_job])))
                next_job, in_pool = next_job + 1, in_pool + 1
            index, head = pending[0] if pending else (None, None)
            ready = head is not None and (not isinstance(head, Future) or head.done())
            if not ready and next_job < len(jobs):  # work instead of waiting
                pending.append((next_job, _score(*jobs[next_job], engine=local())))
                next_job += 1
                continue
            pending.popleft()
            if isinstance(head, Future):
                try:
                    head = head.result()
                except Exception:  # noqa: BLE001 - a worker died (BrokenProcessPool) or could not start
                    if not broken:
                        from cnncli.core.console import warn

                        warn("the predict worker processes stopped; running the remaining images in this process.")
                    broken = True
                    head = _score(*jobs[index], engine=local())
            yield head
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
