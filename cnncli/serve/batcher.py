"""Dynamic batching: requests put decoded images (uint8 pixels) on an asyncio queue; one task gathers up to
``max_batch`` of them, waiting at most ``max_wait_ms`` after the first (and not at all when no other request is in
progress, so a lone client pays no batching delay), runs the engine on one thread off the event
loop, and resolves each image's future with its probabilities.

Admission is counted in slots (one per image, reserved by a request before it reads its body): at most
``max_queue`` images are in the service at once, so its memory is bounded; beyond that requests are refused
(503) instead of queued.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
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


class DynamicBatcher:
    """Owns the engine: every forward pass runs on its single engine thread."""

    def __init__(self, engine, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 256) -> None:
        self.engine = engine
        self.pre = engine.card.preprocessing
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        self.ready = False
        self.warmup_error: str | None = None
        self.reserved = 0  # admission slots held by requests in progress
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
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
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # stopping anyway: how the task ended no longer matters
                pass
        self._executor.shutdown(wait=True)

    # ---------------------------------------------------------------- work
    async def classify(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for one preprocessed image (uint8 H x W x C), computed in some batch."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((pixels, future))
        return await future

    def _forward(self, pixels: list[np.ndarray]) -> np.ndarray:
        # the same arithmetic as predict: stack uint8, normalise the whole batch, one engine call
        return self.engine.predict_proba(normalize(np.stack(pixels), self.pre))

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
            try:
                probs = await loop.run_in_executor(self._executor, self._forward, [px for px, _ in live])
            except Exception as exc:  # answer these requests with the error, keep serving
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.stats.forward_ms += (time.perf_counter() - start) * 1000
            self.stats.batches += 1
            self.stats.images += len(live)
            self.stats.largest_batch = max(self.stats.largest_batch, len(live))
            self.stats.sizes[len(live)] += 1
            for (_, fut), row in zip(live, probs):
                if not fut.done():
                    fut.set_result(row)
