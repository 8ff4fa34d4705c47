"""A training run folder in object storage: ``train -o s3://bucket/runs/x`` and ``--resume s3://bucket/runs/x``.

The run trains into a local staging folder exactly as into a local run folder (the same atomic writes, lock and
resume logic); after each epoch's files are written, every file that changed since its last upload is put to the
prefix whole, one object per file (``put_file``: one PUT, or a multipart upload that S3 makes visible only once it
completes), so a reader of the prefix sees each file either as it was or as it is, never half written. The
epoch's weights go first, then ``train_state.pt`` (the state a resume continues from), then ``results.csv`` and
``args.json``: a run killed during an upload resumes from the last state that reached the store.

Before training the location is checked (the bucket exists and takes a probe object; a previous run there is
refused unless ``--exist-ok``, which removes it first); ``--resume`` downloads the files the run needs (its
settings, state, results, best and last weights) into a fresh staging folder and continues. Messages name the
URI, not the staging folder; args.json records the URI. The staging folder is removed when the run ends.
A prefix has no lock: two runs writing the same prefix at once are not detected.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from cnncli.core.errors import CnncliError, UsageError
from cnncli.data.stores import describe_failure, filesystem, is_uri
from cnncli.train.run_folder import RUN_MARKERS, STATE_FILE

UPLOAD_FIRST = ("best.safetensors", "last.safetensors", STATE_FILE)  # then everything else, results.csv last
RESUME_FILES = ("args.json", STATE_FILE, "results.csv", "best.safetensors", "last.safetensors")


def is_store_run(location: str | None) -> bool:
    """Whether a run folder (``-o`` / ``--resume``) names an object store rather than a local folder."""
    return bool(location) and is_uri(location) and not str(location).startswith("file://")


class StoreRun:
    """The prefix a run is written to, and the local staging folder it trains in."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = filesystem(self.uri)
        self.root = self.root.rstrip("/")
        self.staging = Path(tempfile.mkdtemp(prefix="cnncli-run-"))
        self.uploaded: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) when last put
        self.exist_ok = False  # as given: the staging folder itself is always taken with exist_ok
        self.new_run = False  # this process claimed the prefix for a new run

    # ------------------------------------------------------------ before training

    def _call(self, what, *args, **kwargs):
        try:
            return what(*args, **kwargs)
        except UsageError:
            raise
        except Exception as exc:  # botocore, aiohttp and fsspec raise many types
            raise UsageError(describe_failure(self.uri, exc)) from None

    def remote_names(self) -> list[str]:
        """The names directly under the prefix (files and sub-prefixes)."""
        self.fs.invalidate_cache()
        if not self._call(self.fs.isdir, self.root):
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in self._call(self.fs.ls, self.root, detail=False))

    def check_writable(self) -> None:
        """The bucket exists and takes an object (a hidden probe, removed at once); UsageError otherwise."""
        from cnncli.scale.destinations import check_output

        check_output(self.uri, folder=True, option="--output")

    def claim(self, exist_ok: bool) -> None:
        """A new run: the prefix must hold no run (or anything else) unless ``exist_ok``, which removes it first."""
        self.check_writable()
        names = [n for n in self.remote_names() if not n.startswith(".")]
        if not names:
            return
        if not exist_ok:
            if STATE_FILE in names:
                hint = (f"continue it with --resume {self.uri}, choose a new -o/--output, or pass --exist-ok to "
                        "replace it")
            elif any(n in RUN_MARKERS for n in names):
                hint = "it has no finished epoch to resume; choose a new -o/--output, or pass --exist-ok to replace it"
            else:
                raise UsageError(f"{self.uri} is not empty (it holds {names[0]}); choose a new or empty -o/--output, "
                                 "or pass --exist-ok to write the run there.")
            raise UsageError(f"{self.uri} already holds a training run; {hint}.")
        self._call(self.fs.rm, self.root, recursive=True)  # the previous run goes before the new one writes

    def download_for_resume(self) -> None:
        """Fetch what --resume needs into the staging folder; UsageError when the prefix holds no resumable run."""
        names = set(self.remote_names())
        if STATE_FILE not in names or "args.json" not in names:
            raise UsageError(f"{self.uri} has no {STATE_FILE} and args.json to resume from; pass a run prefix made "
                             "by cnncli train -o.")
        for name in RESUME_FILES:
            if name in names:
                self._call(self.fs.get_file, f"{self.root}/{name}", str(self.staging / name))
        args = self.staging / "args.json"
        settings = json.loads(args.read_text())
        settings.update(out=str(self.staging), resume=None)
        args.write_text(json.dumps(settings, indent=2))
        for name in RESUME_FILES:  # what is already in the store is not put back unchanged
            if (self.staging / name).is_file() and name != "args.json":
                self.uploaded[name] = self._stamp(self.staging / name)

    # ------------------------------------------------------------ while training

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns

    def _changed(self) -> list[Path]:
        files = [p for p in self.staging.rglob("*") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(self.staging).parts)]
        changed = [p for p in files if self.uploaded.get(str(p.relative_to(self.staging))) != self._stamp(p)]

        def order(p: Path) -> tuple[int, str]:
            name = str(p.relative_to(self.staging))
            last = name in ("results.csv", "args.json")
            return (UPLOAD_FIRST.index(name) if name in UPLOAD_FIRST else 10 + 10 * last, name)

        return sorted(changed, key=order)

    def upload(self) -> int:
        """Put every file that changed since its last upload, one whole object each; returns how many."""
        changed = self._changed()
        for path in changed:
            name = str(path.relative_to(self.staging))
            stamp = self._stamp(path)
            target = f"{self.root}/{name}"
            if name == "args.json":  # the run's settings name the prefix, not the staging folder
                settings = json.loads(path.read_text())
                settings.update(out=self.uri, resume=self.uri if settings.get("resume") else None,
                                exist_ok=self.exist_ok)
                self._call(self.fs.pipe_file, target, json.dumps(settings, indent=2).encode())
            else:
                self._call(self.fs.put_file, str(path), target)
            self.uploaded[name] = stamp
        return len(changed)

    def forget_unstarted(self) -> None:
        """A new run that stopped before its first epoch's state reached the store leaves nothing there (as a local
        run folder), so the same command can simply be run again."""
        if self.new_run and STATE_FILE not in self.uploaded:
            for name in list(self.uploaded):
                self._call(self.fs.rm_file, f"{self.root}/{name}")
            self.uploaded.clear()

    def named(self, text: str) -> str:
        """``text`` with the staging folder replaced by the URI (messages, hints)."""
        return text.replace(str(self.staging), self.uri)

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def prepare_store_run(cfg, main: bool = True) -> tuple[StoreRun | None, object]:
    """(the StoreRun, the configuration training in its staging folder) for a run whose -o or --resume is a URI;
    (None, cfg) otherwise. ``main``: this process claims the prefix (rank 0); the others only download."""
    location = cfg.resume or cfg.out
    if not is_store_run(location):
        return None, cfg
    if cfg.resume and cfg.out and cfg.out.rstrip("/") != cfg.resume.rstrip("/"):
        raise UsageError(f"--resume continues the run in {cfg.resume}; drop --out {cfg.out} (or start a new run "
                         "there without --resume).")
    store = StoreRun(location)
    try:
        if cfg.resume:
            store.check_writable()
            store.download_for_resume()
            cfg = replace(cfg, resume=str(store.staging), out=None)
        else:
            if main:
                store.claim(cfg.exist_ok)
                store.new_run = True
            store.exist_ok = cfg.exist_ok
            cfg = replace(cfg, out=str(store.staging), exist_ok=True)
    except BaseException:
        store.close()
        raise
    return store, cfg


@contextmanager
def renamed_errors(store: StoreRun | None):
    """cnncli's errors raised inside the run name the URI, not the staging folder."""
    try:
        yield
    except CnncliError as exc:
        if store is None or str(store.staging) not in str(exc):
            raise
        try:
            renamed = type(exc)(store.named(str(exc)))
        except Exception:  # noqa: BLE001 - an error class with other arguments keeps its own text
            raise exc from None
        raise renamed from None


def train_to_store(cfg, log=None, on_epoch_end=None):
    """:func:`cnncli.train.loop.run_training` with the run folder in object storage (see the module docstring);
    a local run folder trains as it always does."""
    from cnncli.core.console import info
    from cnncli.train.loop import run_training

    store, cfg = prepare_store_run(cfg)
    if store is None:
        return run_training(cfg, log, on_epoch_end)
    say = log or info

    def upload_after(epoch: int, model) -> None:
        store.upload()
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)

    try:
        with renamed_errors(store):
            try:
                result = run_training(cfg, lambda msg: say(store.named(msg)), upload_after)
            except BaseException:
                store.upload()  # what a stopped run finished (its files of the last epoch are there already)
                store.forget_unstarted()
                raise
            store.upload()  # the final outputs: metrics.json, the plots
        result.out_dir = store.uri
        return result
    finally:
        store.close()
