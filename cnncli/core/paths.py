"""Checks on the files a user names before cnncli opens them: only regular files are read.

A FIFO blocks ``open()`` forever and ``/dev/zero`` never ends, so every path that comes from the user (model and
weights files, images, dataset files) is checked with ``stat`` first and refused in one sentence otherwise.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cnncli.core.errors import MissingFileError, ModelFileError


def kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def is_regular_file(path: str | Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def special_file_problem(path: str | Path) -> str | None:
    """None for a regular file (or a path that does not exist); else what it is, e.g. "a FIFO (named pipe)"."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else kind_of(mode)


STREAM_FOLDERS = ("/dev/", "/proc/")


def written_in_place(path: str | Path) -> bool:
    """Whether an output path must be written directly rather than replaced by a renamed temporary file: a FIFO,
    a device or a socket, or any path in /dev or /proc (``/dev/stdout`` is a link to a regular file when stdout is
    redirected to one, and replacing it would replace the link)."""
    if special_file_problem(path) not in (None, "a folder"):
        return True
    return os.path.abspath(path).startswith(STREAM_FOLDERS)


def require_regular_file(path: str | Path, what: str = "model file") -> Path:
    """``path`` if it is a regular file; MissingFileError (exit 2) when it does not exist, ModelFileError when it
    is a folder, FIFO, device or socket."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MissingFileError(f"{what} {path} does not exist; check the path.") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {what} {path} ({exc.strerror or exc}).") from None
    if not stat.S_ISREG(mode):
        raise ModelFileError(f"{what} {path} is {kind_of(mode)}, not a regular file; pass a {what} saved on disk.")
    return path
