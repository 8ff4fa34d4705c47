"""A run folder belongs to one run: a lock held while it trains, no silent reuse, clean replacement.

* :class:`RunLock` is an exclusive ``flock`` on ``<run>/.cnncli.lock`` (the file records the owner's process
  id): a second ``train -o SAME`` is refused while the first runs, and the lock disappears with its owner even
  after ``kill -9``.
* :func:`claim_run_folder` refuses a folder that already holds a run unless ``--exist-ok``, and then removes
  the previous run's files before anything new is written, so old and new outputs never mix.
* Temporary files of a writer that was killed are removed when the folder is taken again (fresh or resumed).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cnncli.core.atomic import sweep_stale_temporaries
from cnncli.core.errors import UsageError
from cnncli.core.locks import FileLock, LockHeld

LOCK_NAME = ".cnncli.lock"
RUN_MARKERS = ("args.json", "train_state.pt", "best.safetensors", "last.safetensors", "results.csv")
STATE_FILE = "train_state.pt"


class RunLock(FileLock):
    """Exclusive ownership of a run folder while this process trains in it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        super().__init__(self.folder / LOCK_NAME)
        self.preexisting: set[str] = set()  # entries that were in the folder before this run claimed it

    def acquire(self) -> RunLock:
        """Take the folder, or refuse at once (UsageError) while another run holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            super().acquire(wait=False)
        except LockHeld as held:
            owner = f" (process {held.owner_pid})" if held.owner_pid else ""
            raise UsageError(f"{self.folder} is in use by another cnncli run{owner}; wait for it to finish or "
                             "choose another -o/--output.") from None
        return self


def _contents(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name != LOCK_NAME)


def is_run_folder(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_MARKERS)


def claim_new_run_folder(command: str) -> Path:
    """The first free ``runs/<command>-N``, created here so two runs started at once never share it."""
    from cnncli.train.config import next_run_dir

    while True:
        folder = next_run_dir(command)
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue


def claim_run_folder(folder: Path, exist_ok: bool, created: bool | None = None) -> tuple[RunLock, bool]:
    """Take ``folder`` for a new run: lock it, refuse a previous run in it unless ``exist_ok`` (then remove that
    run's files), and sweep temporaries of dead writers. Returns (the lock, whether the folder was created)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a run folder; choose another -o/--output.")
    if created is None:
        created = not folder.exists()
    lock = RunLock(folder).acquire()
    try:
        contents = _contents(folder)
        if contents:
            _refuse_or_clear(folder, contents, exist_ok)
        sweep_stale_temporaries(folder, owned=True)
        lock.preexisting = {p.name for p in _contents(folder)}
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return lock, created


def _refuse_or_clear(folder: Path, contents: list[Path], exist_ok: bool) -> None:
    if is_run_folder(folder):
        if not exist_ok:
            if (folder / STATE_FILE).is_file():
                hint = f"continue it with --resume {folder}, choose a new -o/--output, or pass --exist-ok to replace it"
            else:
                hint = "it has no finished epoch to resume; choose a new -o/--output, or pass --exist-ok to replace it"
            raise UsageError(f"{folder} already holds a training run; {hint}.")
        for path in contents:  # the previous run goes entirely before the new one writes anything
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    elif not exist_ok:
        raise UsageError(f"{folder} exists and is not empty (it holds {contents[0].name}); choose a new or empty "
                         "-o/--output, or pass --exist-ok to write the run there.")


def lock_for_resume(folder: Path) -> RunLock:
    """Lock a run folder to continue it, and remove the temporaries a killed writer left there."""
    lock = RunLock(folder).acquire()
    sweep_stale_temporaries(folder, owned=True)
    return lock


def forget_unstarted_run(folder: Path, created: bool, lock: RunLock | None = None) -> None:
    """A new run stopped before its first epoch was saved: remove what it wrote (args.json, tracking files, and the
    folder if it made it), so running the same command again starts cleanly."""
    if (folder / STATE_FILE).exists() or not folder.is_dir():
        return
    if created:
        shutil.rmtree(folder, ignore_errors=True)
        return
    keep = lock.preexisting if lock is not None else set()
    for path in _contents(folder):
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
