"""Exclusive locks between processes: an ``flock`` on a lock file, used by the ONNX cache (a second process waits
while the first makes an entry) and by run folders (a second run in the same folder is refused).

The lock file records its owner's process id, so a refusal can name the owner. The owner removes the file while
still holding the lock, and a process that locked a file which was removed meanwhile tries again, so no two
processes ever hold "the" lock at once. The kernel drops a dead process's ``flock``, so a lock never outlives its
owner, even after ``kill -9``.
"""

from __future__ import annotations

import os
from pathlib import Path


class LockHeld(Exception):
    """Another process holds the lock (raised by :meth:`FileLock.acquire` with ``wait=False``)."""

    def __init__(self, path: Path, owner_pid: int | None) -> None:
        super().__init__(f"{path} is locked" + (f" by process {owner_pid}" if owner_pid else ""))
        self.path, self.owner_pid = path, owner_pid


class FileLock:
    """An exclusive lock on the file ``path`` (created, with its folder, when missing); a context manager that
    waits for the lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, wait: bool = True) -> FileLock:
        """Take the lock, waiting for its holder to release it; with ``wait=False`` raise :class:`LockHeld` at
        once instead."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise LockHeld(self.path, owner) from None
            except BaseException:  # interrupted while waiting
                os.close(fd)
                raise
            try:  # the file may have been removed by its previous owner between our open and our lock
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # removed while still locked, so a waiting process cannot take a stale inode
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
