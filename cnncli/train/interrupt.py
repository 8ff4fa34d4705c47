"""Ctrl-C during training: the first one sets a flag that the epoch loop checks after each step (so the epoch
stops cleanly and the last finished epoch's files stay resumable); a second one gives up at once."""

from __future__ import annotations

import signal
import threading


class StopFlag:
    """A context manager that owns SIGINT while training; ``stop`` turns true on the first Ctrl-C."""

    def __init__(self) -> None:
        self.stop = False
        self.previous = None

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_) -> None:
        if self.stop:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
