"""Checks on the files a user names before cnncli opens them: only regular files are read, and every output
location is checked for writability before the work.

A FIFO blocks ``open()`` forever and ``/dev/zero`` never ends, so every path that comes from the user (model and
weights files, images, dataset files) is checked with ``stat`` first and refused in one sentence otherwise. Every
command that writes (``predict -o``, ``export -o``, ``evaluate --plots``, ``inspect -o``, ``train -o`` and
``RUN/tensorboard``) calls :func:`check_output_location` first, so a location that cannot be written is refused
in one sentence naming the user's path (exit 2), never as an OSError about a temporary file after the work.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from cnncli.core.errors import MissingFileError, ModelFileError, UsageError


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


def _creation_problem(folder: Path) -> str | None:
    """None when a file can be created in the existing folder ``folder`` (tried: a hidden probe file is made and
    removed at once); else why not."""
    probe = folder / f".cnncli-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        return f"no file can be created in {folder} ({exc.strerror or exc})"
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return None


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def output_location_problem(path: str | Path, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written as a file (or, with ``folder``, be the folder that outputs go into), or None.
    Missing folders on the way are fine (writers create them) as long as the nearest existing one takes new files.
    Nothing is left behind."""
    target = Path(os.path.abspath(Path(path).expanduser()))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except NotADirectoryError:  # a file on the way: found below
        mode = None
    except OSError as exc:
        return f"it cannot be looked up ({exc.strerror or exc})"
    if mode is not None:
        if folder:
            return _creation_problem(target) if stat.S_ISDIR(mode) else f"it is {_a_file(mode)}, not a folder"
        if stat.S_ISDIR(mode):
            return "it is a folder; give a file name in it"
        if not stat.S_ISREG(mode) or written_in_place(target):  # a FIFO or device (/dev/stdout): written in place
            return None if os.access(target, os.W_OK) else "it is not writable"
        return _creation_problem(target.parent)  # a file is replaced by a renamed temporary beside it
    existing = _nearest_existing(target.parent)
    if not existing.is_dir():
        what = _a_file(os.stat(existing).st_mode) if existing.exists() else "a broken link"
        return f"{existing} is {what}, not a folder"
    return _creation_problem(existing)


def _a_file(mode: int) -> str:
    return "a file" if stat.S_ISREG(mode) else kind_of(mode)


def check_output_location(path: str | Path, option: str = "--output", folder: bool = False) -> Path:
    """``path`` when it can be written (see :func:`output_location_problem`); else UsageError (exit 2) in one
    sentence naming ``option`` and the user's path. Call it before the work."""
    problem = output_location_problem(path, folder=folder)
    if problem is not None:
        raise UsageError(f"cannot write {option} {path}: {problem}; choose a location you can write to.")
    return Path(path)


def check_run_outputs(run: str | Path | None, subfolders: Iterable[str] = (), default_parent: str = "runs") -> None:
    """A training run's folder (``--output``, or the default ``runs/`` it is made in when None) and the
    sub-folders the run will write into (``tensorboard``), checked like every other output location."""
    if run is None:
        check_output_location(default_parent, "the run folder's parent", folder=True)
        return
    check_output_location(run, "--output", folder=True)
    for name in subfolders:
        check_output_location(Path(run) / name, f"--output's {name} folder", folder=True)
