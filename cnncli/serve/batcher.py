"""Dynamic batching: requests put decoded images (uint8 pixels) on an asyncio queue; one task gathers up to
``max_batch`` of them, waiting at most ``max_wait_ms`` after the first (and not at all when no other request is in
progress, so a lone client pays no batching delay), runs the engine on one thread off the event
loop, and resolves each image's future with its probabilities.

Admission is counted in slots (one per image, reserved by a request once its body is complete, so a client that
stalls mid-upload holds none): at most ``max_queue`` images are in the service at once, so its memory is bounded;
beyond that requests are refused (503) instead of queued.

An image is either decoded uint8 pixels (H x W x C, normalised here with the whole batch, as predict does) or, for
clients that preprocess (the Open Inference Protocol's ``pixels`` input), a float32 C x H x W array that is already
normalised and goes to the engine as it is.

Every image waiting here ends with a result or an error: an engine error or an answer with the wrong number of rows
fails that batch's images (:class:`BatchFailed`, a 500) and the next batch runs; the task itself is supervised, so
if it ever ends (a bug, a ``BaseException`` from the engine) every waiting image fails with :class:`BatcherStopped`,
later ones fail at once, and :attr:`DynamicBatcher.failure` makes the service unready. Requests bound their own
wait (``--timeout``): a cancelled image is skipped before the forward pass and its slot is released.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from cnncli.data.images import normalize


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    largest_batch: int = 0
    sizes: Counter = field(default_factory=Counter)  # batch size -> how many batches had it
    forward_ms: float = 0.0  # total engine time

    def to_dict(self) -> dict:
        return {"batches": self.batches, "images": self.images, "largest_batch": self.largest_batch,
                "mean_batch": round(self.images / self.batches, 2) if self.batches else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "forward_ms": round(self.forward_ms, 1)}


class BatchFailed(RuntimeError):
    """A batch whose images cannot be answered; the message is one sentence for the client (a 500)."""


class BatcherStopped(BatchFailed):
    """The batching task has ended: nothing queued or still to come can be answered."""


class DynamicBatcher:
    """Owns the engine: every forward pass runs on its single engine thread."""

    def __init__(self, engine, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 256,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self.engine = engine
        self.on_batch = on_batch  # (images, seconds) after every forward pass: the service's metrics
        self.pre = engine.card.preprocessing
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        self.ready = False
        self.warmup_error: str | None = None
        self.failure: str | None = None  # why the batching task ended, when it ended by itself
        self.reserved = 0  # admission slots held by requests in progress
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._batch: list = []  # (pixels, future) of the batch in the engine now
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnncli-engine")

    # ---------------------------------------------------------------- admission
    def try_reserve(self, n: int) -> bool:
        """Hold ``n`` slots; False (nothing held) when that would exceed ``max_queue``."""
        if self.reserved + n > self.max_queue:
            return False
        self.reserved += n
        return True

    def release(self, n: int) -> None:
        self.reserved = max(0, self.reserved - n)

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # ---------------------------------------------------------------- life cycle
    async def start(self) -> None:
        """Warm the engine with one forward pass, then start gathering batches (requests queue meanwhile)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._warm_then_run(), name="cnncli-batcher")
        self._task.add_done_callback(self._supervise)

    def _supervise(self, task: asyncio.Task) -> None:
        """The batching task ended. When that is not :meth:`stop`, fail every waiting image and stay unready."""
        if self._stopping:
            return
        exc = None if task.cancelled() else task.exception()
        self.failure = f"{type(exc).__name__}: {exc}" if exc is not None else "the batching task was cancelled"
        self.ready = False
        print(f"error: the batcher stopped ({self.failure}); requests get 500 and /readyz and /healthz answer "
              "503 until the service is restarted.", file=sys.stderr, flush=True)
        self._fail_waiting(self._stopped_error())

    def _stopped_error(self) -> BatcherStopped:
        return BatcherStopped(f"the batcher stopped ({self.failure}); the service must be restarted.")

    def _fail_waiting(self, exc: Exception) -> None:
        waiting = list(self._batch)
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for _, fut in waiting:
            if not fut.done():
                fut.set_exception(exc)

    async def _warm_then_run(self) -> None:
        h, w = self.pre.input_size
        blank = np.zeros((h, w, self.pre.channels), np.uint8)
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._forward, [blank])
            self.ready = True
        except Exception as exc:  # stay up, not ready; each request then gets the error as a 500
            self.warmup_error = f"{type(exc).__name__}: {exc}"
            print(f"error: the model failed its warm-up forward pass ({self.warmup_error}); /readyz answers 503.",
                  file=sys.stderr, flush=True)
        await self._run()

    async def stop(self) -> None:
        """Cancel the batching task (an earlier crash was reported by :meth:`_supervise` when it happened) and
        fail whatever still waits, so no request is left hanging; then let the engine thread finish."""
        self._stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._queue is not None:
            self._fail_waiting(BatcherStopped("the service is stopping."))
        self._executor.shutdown(wait=True)

    # ---------------------------------------------------------------- work
    async def classify(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for one image (uint8 H x W x C, or a normalised float32 C x H x W), computed in some
        batch."""
        if self.failure is not None:
            raise self._stopped_error()
        if self._stopping:
            raise BatcherStopped("the service is stopping.")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((pixels, future))
        return await future

    def _forward(self, pixels: list[np.ndarray]) -> np.ndarray:
        # the same arithmetic as predict: stack uint8, normalise the whole batch, one engine call
        decoded = [i for i, px in enumerate(pixels) if px.dtype == np.uint8]
        if len(decoded) == len(pixels):
            batch = normalize(np.stack(pixels), self.pre)
        else:  # some came normalised already (float32 C x H x W): the others are normalised together, as usual
            shape = next(px.shape for px in pixels if px.dtype != np.uint8)
            batch = np.empty((len(pixels), *shape), np.float32)
            for i, px in enumerate(pixels):
                if px.dtype != np.uint8:
                    batch[i] = px
            if decoded:
                batch[decoded] = normalize(np.stack([pixels[i] for i in decoded]), self.pre)
        probs = self.engine.predict_proba(batch)
        return self._checked(probs, len(pixels))

    def _checked(self, probs, images: int) -> np.ndarray:
        """The engine's answer as (images, classes) probabilities, or BatchFailed saying what it returned."""
        classes = len(self.engine.card.classes)
        shape = getattr(probs, "shape", None)
        if shape is None or len(shape) != 2 or shape[0] != images or shape[1] != classes:
            got = f"an array of shape {tuple(shape)}" if shape is not None else f"a {type(probs).__name__}"
            raise BatchFailed(f"the engine returned {got} for {images} image(s) and {classes} classes; these "
                              "images were not classified, the service keeps running.")
        return probs

    async def _gather(self) -> list:
        queue = self._queue
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0 or self.reserved <= len(batch):
                break  # the window is over, or no other request in progress could join: do not wait for nobody
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [(px, fut) for px, fut in batch if not fut.done()]  # a cancelled request needs no forward
            if not live:
                continue
            start = time.perf_counter()
            self._batch = live  # until answered: what the supervisor fails if the task dies in the engine
            try:
                probs = await loop.run_in_executor(self._executor, self._forward, [px for px, _ in live])
            except Exception as exc:  # answer these requests with the error, keep serving
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                self._batch = []
                continue
            seconds = time.perf_counter() - start
            self.stats.forward_ms += seconds * 1000
            self.stats.batches += 1
            self.stats.images += len(live)
            self.stats.largest_batch = max(self.stats.largest_batch, len(live))
            self.stats.sizes[len(live)] += 1
            if self.on_batch is not None:
                self.on_batch(len(live), seconds)
            for (_, fut), row in zip(live, probs, strict=True):  # _checked made the lengths equal
                if not fut.done():
                    fut.set_result(row)
            self._batch = []
