"""Worker processes that end with their parent: a pool's workers outlive a parent killed with SIGKILL (it cannot
stop its pool, and the pool's pipes stay open), so each worker watches its parent's process id and exits when the
parent is gone. A worker whose work is done can also exit without the interpreter's teardown
(:func:`exit_without_teardown`)."""

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


def exit_without_teardown() -> None:
    """Make this (pool worker) process end at once when it exits normally, skipping the interpreter's teardown
    (freeing a model's session and arenas, every module): a replica with its onnxruntime session took 0.07-0.09 s
    to exit the usual way and 0.03 s this way (2-core AMD EPYC), time its parent's pool waits at the end of a job.
    Only for workers that send their results through pipes as they go (concurrent.futures' workers do) and keep
    nothing to flush: the process ends with status 0."""
    import atexit

    atexit.register(os._exit, 0)  # registered last, run first: before the other exit handlers and the teardown
