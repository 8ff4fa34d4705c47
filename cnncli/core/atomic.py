"""Atomic file writes, shared by every command that writes a file (model files, run outputs, plots, exports,
the ONNX cache, ``predict --output``).

A write goes to a temporary file beside the target (``.<name>.<pid>-<random>.tmp``), is fsynced, and replaces
the target in one rename, so a kill at any moment leaves either the previous file or the complete new one.
Temporary files are created with mode 0666 and the kernel applies the umask, so results get the same
permissions as any other file the user makes (``mkstemp`` would leave them 0600). The writer's process id in
the name lets a later run remove the temporaries of a writer that died (:func:`sweep_stale_temporaries`).
A full disk is reported in one sentence (:class:`DiskFullError`).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from cnncli.core.errors import CnncliError
from cnncli.core.paths import written_in_place

TMP_SUFFIX = ".tmp"
_TMP_PATTERN = re.compile(r"^\..+\.(\d+)-[0-9a-f]+\.tmp$")


class DiskFullError(CnncliError):
    """No space left on the device while writing a file."""


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or an exceeded quota."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def disk_full_error(path: str | Path) -> DiskFullError:
    return DiskFullError(f"no space left on the device while writing {path}; free some space or write to "
                         "another folder (the previous file, if any, is unchanged).")


def temporary_name(path: Path) -> Path:
    """A fresh temporary path beside ``path`` that names this process."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


def _create(tmp: Path) -> int:
    # 0o666: the kernel applies the umask, as for any file the user makes
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)


def _commit(tmp: Path, path: Path, mode: int, replace: bool = True) -> bool:
    """fsync ``tmp`` and put it in place as ``path``, then fsync the folder. With ``replace=False`` an existing
    ``path`` is kept (a hard link never replaces) and False is returned."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
        if stat.S_IMODE(os.fstat(fh.fileno()).st_mode) != mode:  # a library replaced our file with its own 0600 one
            os.fchmod(fh.fileno(), mode)
    if replace:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)  # atomic and never replaces: the file is written once
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            if path.exists():
                return False
            os.replace(tmp, path)
    _sync_folder(path.parent)
    return True


def _sync_folder(folder: Path) -> None:
    """The rename itself survives a power cut once the folder is synced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


@contextmanager
def _temporary_beside(path: Path) -> Iterator[tuple[Path, int, int]]:
    """Create an empty temporary file beside ``path`` and yield (its path, an open descriptor, its mode: 0666 less
    the umask). A full disk anywhere in the block becomes one sentence; the temporary is always removed at the
    end (once committed it has been renamed away)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        fd = _create(tmp)
        yield tmp, fd, stat.S_IMODE(os.fstat(fd).st_mode)
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(path) from None
        raise
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (already created, empty); on success it replaces ``path`` in one
    rename. On any exception the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    with _temporary_beside(path) as (tmp, fd, mode):
        os.close(fd)
        yield tmp
        _commit(tmp, path, mode)


def write_bytes_atomic(path: str | Path, data: bytes, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`). With ``replace=False`` an existing file is
    kept and never replaced, so concurrent writers of the same file write it exactly once; returns whether this
    call wrote it."""
    path = Path(path)
    with _temporary_beside(path) as (tmp, fd, mode):
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return _commit(tmp, path, mode, replace)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8",
                newline: str | None = "") -> Iterator[IO]:
    """Open ``path`` for writing through a temporary file beside it (see :func:`atomic_path`); the target appears,
    complete, when the block ends without an exception. Missing parent folders are created. A device or FIFO
    (``-o /dev/stdout``) is written directly, since it cannot be replaced."""
    path = Path(path)
    if path.is_dir():
        from cnncli.core.errors import UsageError

        raise UsageError(f"{path} is a folder; pass a file name to write to (e.g. {path / 'predictions.json'}).")
    sweep_stale_temporaries(path.parent, target=path.name)  # a killed earlier run's half-written file
    if written_in_place(path):  # a FIFO or device (-o /dev/stdout)
        binary = "b" in mode
        try:
            with open(path, mode, encoding=None if binary else encoding, newline=None if binary else newline) as fh:
                yield fh
        except OSError as exc:  # -o /dev/full, or a full disk behind a FIFO's reader: one sentence, as below
            if is_disk_full(exc):
                raise disk_full_error(path) from None
            raise
        return
    with atomic_path(path) as tmp:
        if "b" in mode:
            with open(tmp, mode) as fh:
                yield fh
        else:
            with open(tmp, mode, encoding=encoding, newline=newline) as fh:
                yield fh


WORK_FOLDER_PATTERN = re.compile(r"^\.cnncli-work-(\d+)-")


def work_folder_prefix() -> str:
    """Prefix of a temporary work folder (``tempfile.TemporaryDirectory(prefix=...)``) that names this process,
    so :func:`sweep_stale_work_folders` can remove it once the process is gone."""
    return f".cnncli-work-{os.getpid()}-"


def sweep_stale_work_folders(folder: str | Path) -> list[Path]:
    """Remove work folders made with :func:`work_folder_prefix` by processes that no longer exist."""
    import shutil

    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = WORK_FOLDER_PATTERN.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def writer_pid(name: str) -> int | None:
    """The process id in a temporary file's name made by :func:`temporary_name`, else None."""
    match = _TMP_PATTERN.match(name)
    return int(match.group(1)) if match else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temporaries(folder: str | Path, owned: bool = False, target: str | None = None) -> list[Path]:
    """Remove the temporary files in ``folder`` left by writers that died (killed mid-write).

    With ``owned`` (the caller holds the folder's lock, e.g. a run folder) every ``.*.tmp`` file is stale except
    this process's own; otherwise only those whose writer process no longer exists. ``target`` limits the sweep
    to the temporaries of that file name. Returns what was removed.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    me = os.getpid()
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(TMP_SUFFIX)) or not entry.is_file(follow_symlinks=False):
            continue
        if target is not None and not name.startswith(f".{target}."):
            continue
        pid = writer_pid(name)
        stale = (pid != me) if owned else (pid is not None and pid != me and not _alive(pid))
        if stale:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed
