"""Worker processes that end with their parent: a pool's workers outlive a parent killed with SIGKILL (it cannot
stop its pool, and the pool's pipes stay open), so each worker watches its parent's process id and exits when the
parent is gone."""

from __future__ import annotations

import os

PARENT_CHECK_SECONDS = 0.2


def exit_with_parent(parent_pid: int) -> None:
    """Start a daemon thread in this (worker) process that ends the process once ``parent_pid`` is no longer its
    parent, checked every :data:`PARENT_CHECK_SECONDS`."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="cnncli-parent-watch", daemon=True).start()
