"""One signal handling for every long command: SIGINT (Ctrl-C) and SIGTERM (a service manager, ``kill``) stop a
command at any moment, during imports and set-up too, with exit code 128 + the signal's number (130, 143).

:func:`install` runs first thing at the entry point: both signals then raise :class:`Interrupted`, a
``KeyboardInterrupt``, so every ``finally`` and every library's Ctrl-C clean-up runs the same for both, and batch
jobs write the rows they finished. A signal the caller chose to ignore (``SIG_IGN``, as a shell does for a
background job's SIGINT) stays ignored. Training defers the stop with :class:`DeferredStop`: the first signal asks
the epoch to end after its current batch (so the last finished epoch stays resumable), a second one stops at once.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the stop signals this process got, in order


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; ``exit_code`` is the shell's 128 + its number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, _frame) -> None:
    _received.append(signum)
    raise Interrupted(signum)


def install() -> None:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (not where the caller ignores them)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _raise)


def received() -> int | None:
    """The last stop signal this process got (the one that ended it), or None."""
    return _received[-1] if _received else None


def exit_code(default: int = 130) -> int:
    """128 + the last stop signal received (130 for Ctrl-C, 143 for SIGTERM); ``default`` when none came."""
    return 128 + _received[-1] if _received else default


class DeferredStop:
    """While entered, the first stop signal only sets ``stop`` (the caller checks it at safe points); a second
    raises :class:`Interrupted` at once. Signals the caller ignores stay ignored; outside the main thread
    (where signals cannot be caught) it never stops."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> DeferredStop:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) != signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        _received.append(signum)
        if self.stop:
            raise Interrupted(signum)
        self.stop = True

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
