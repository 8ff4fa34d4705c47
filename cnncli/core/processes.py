"""Worker processes that end with their parent: a pool's workers outlive a parent killed with SIGKILL (it cannot
stop its pool, and the pool's pipes stay open), so each worker watches its parent's process id and exits when the
parent is gone."""

from __future__ import annotations

import os

PARENT_CHECK_SECONDS = 0.2


def wait_for_parent_exit(parent_pid: int) -> None:
    """Return once ``parent_pid`` is no longer this process's parent (it ended, however), checked every
    :data:`PARENT_CHECK_SECONDS`."""
    import time

    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_SECONDS)


def exit_with_parent(parent_pid: int) -> None:
    """Start a daemon thread in this (worker) process that ends the process once ``parent_pid`` is no longer its
    parent (see :func:`wait_for_parent_exit`)."""
    import threading

    def watch() -> None:
        wait_for_parent_exit(parent_pid)
        os._exit(0)

    threading.Thread(target=watch, name="cnncli-parent-watch", daemon=True).start()
