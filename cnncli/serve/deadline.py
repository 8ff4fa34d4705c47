"""Every request ends, bounded in time: :meth:`Deadlines.run` runs a request's work (reading its body, waiting
for its batch, the engine) as its own task and answers for it when ``--timeout`` passes: 408 when the client had
not finished sending its body, 503 (with Retry-After) when the service had not finished answering. The work is
cancelled, so its ``finally`` blocks give back what it held (queue slots, body bytes, spooled files).

When the service starts to stop (SIGTERM, Ctrl-C), :meth:`Deadlines.begin_stopping` shortens every deadline to at
most ``stop_grace`` seconds from then: requests in flight are still answered, a stalled upload cannot hold the
shutdown beyond that, and no task is left for uvicorn to cancel (whose tracebacks the old shutdown printed).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from typing import Any

from cnncli.serve.errors import RETRY_AFTER_S, ServiceError

STOP_GRACE_S = 5.0  # after SIGTERM, the longest a request in flight still has


class DeadlinePassed(ServiceError):
    """A request's deadline passed before its answer: 408 (its body had not arrived) or 503."""


class Deadlines:
    def __init__(self, timeout: float, stop_grace: float = STOP_GRACE_S) -> None:
        self.timeout, self.stop_grace = timeout, stop_grace
        self.stop_at = math.inf  # loop time after which nothing runs on
        self._stopping: asyncio.Event | None = None

    @property
    def stopping(self) -> bool:
        return self.stop_at != math.inf

    def _event(self) -> asyncio.Event:
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    def begin_stopping(self) -> None:
        """From now on, every request has at most ``stop_grace`` seconds left (call it on the event loop)."""
        if not self.stopping:
            self.stop_at = asyncio.get_running_loop().time() + self.stop_grace
            self._event().set()

    async def run(self, work: Coroutine[Any, Any, Any], body_complete: Callable[[], bool]) -> Any:
        """The result of ``work``, or DeadlinePassed (408/503) when its deadline passes first (``work`` cancelled)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._event().wait())
        try:
            while True:
                end = min(deadline, self.stop_at)
                waiting = {task} if stopping.done() else {task, stopping}
                await asyncio.wait(waiting, timeout=max(0.0, end - loop.time()), return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    return task.result()
                if loop.time() >= min(deadline, self.stop_at):
                    break
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if self.stop_at <= deadline:
            raise DeadlinePassed(503, "the service is stopping; this request was not finished in time, retry it.",
                               {"Retry-After": str(RETRY_AFTER_S)})
        if not body_complete():
            raise DeadlinePassed(408, f"the request body did not arrive within {self.timeout:g} s (--timeout).")
        raise DeadlinePassed(503, f"no answer within {self.timeout:g} s (--timeout): the model is busy; retry in "
                                f"{RETRY_AFTER_S} s.", {"Retry-After": str(RETRY_AFTER_S)})
