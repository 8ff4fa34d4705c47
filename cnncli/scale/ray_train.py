"""``train``/``finetune --ray [ADDRESS]``: the same training run as DDP workers under Ray Train (``TorchTrainer``).

The driver checks everything it can before Ray starts (the options, the Ray address, the run location: a local
folder is claimed, a prefix checked and claimed, a --resume's settings and state), then starts a local Ray on this
machine's cores or joins ADDRESS (:mod:`cnncli.scale.ray_runner`), and runs ``--ray-workers`` workers (one CPU
each and gloo; one GPU each and NCCL under ``--device cuda``). Ray Train sets up the process group and the torchrun
environment, so each worker is a :class:`cnncli.train.run.TrainingRun` exactly as under torchrun: it streams its
own shards (or reads its share of the local folder), and rank 0 writes the run folder (or its staging folder,
uploaded after each epoch, :mod:`cnncli.scale.run_store`).

After each epoch rank 0 hands the epoch's resumable files (train_state, args, results, best and last weights) to
``ray.train.report`` as a ``Checkpoint``. When a worker or node is lost, Ray restarts the group (up to
``--max-failures`` times, ``FailureConfig``); each restarted worker finds that checkpoint with
``ray.train.get_checkpoint()`` and resumes from it as ``--resume`` would, so results.csv holds each epoch once.

Rank 0's per-epoch lines and its progress bar go to the driver through a small Ray actor (:class:`Board`), which
the driver polls and prints. Only the Ray Train API common to Train v1 (Ray >= 2.9) and Train v2 is used
(``TorchTrainer``, ``ScalingConfig``, ``RunConfig``, ``FailureConfig``, ``Checkpoint``, ``report``,
``get_checkpoint``, ``get_context``); the error a failed run raises differs and is read from either.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from cnncli.core.console import info, warn
from cnncli.core.errors import CnncliError, UsageError
from cnncli.scale.ray_runner import FORWARDED_ENV, check_reachable, connect, disconnect, resolve_address
from cnncli.scale.run_store import StoreRun, is_store_run

CHECKPOINT_FILES = ("args.json", "train_state.pt", "results.csv", "best.safetensors", "last.safetensors")
POLL_SECONDS = 0.3
BAR_POST_SECONDS = 0.5  # a worker's bar is relayed at most this often


@dataclass(frozen=True)
class RayTraining:
    address: str | None  # "" (a bare --ray: RAY_ADDRESS or a local Ray), "local", or HOST:PORT / ray://... / auto
    workers: int = 2
    max_failures: int = 3


class Board:
    """A Ray actor between the workers and the driver: rank 0 posts lines, bar updates and its summary."""

    def __init__(self) -> None:
        self.messages: list[tuple] = []

    def post(self, *message) -> None:
        self.messages.append(message)

    def take(self) -> list[tuple]:
        taken, self.messages = self.messages, []
        return taken


# ---------------------------------------------------------------- the driver


def _settled(cfg):
    """The run's configuration with every local path absolute (workers may run elsewhere) and the run location
    checked and claimed; returns (cfg, location, claimed_new_folder)."""
    from cnncli.data.stores import is_uri
    from cnncli.train import run_folder
    from cnncli.train.resume import resume_config

    if cfg.cache_features or cfg.balance == "sampler":
        raise UsageError("--cache-features and --balance sampler are single-process options; drop them with --ray.")
    if cfg.data and not is_uri(cfg.data):
        cfg = replace(cfg, data=str(Path(cfg.data).expanduser().resolve()))
    location = cfg.resume or cfg.out
    if is_store_run(location):
        store = StoreRun(location)
        try:
            if cfg.resume:
                store.check_writable()
                store.download_for_resume()  # the settings are checked here, once, before Ray starts
                resume_config(replace(cfg, resume=str(store.staging), out=None))
            else:
                store.claim(cfg.exist_ok)
        finally:
            store.close()
        return cfg.validate() if not cfg.resume else cfg, location.rstrip("/"), False
    if cfg.resume:
        cfg = replace(cfg, resume=str(Path(cfg.resume).expanduser().resolve()))
        resume_config(cfg)
        return cfg, cfg.resume, False
    cfg = cfg.validate()
    created = False
    if cfg.out is None:
        folder, created = run_folder.claim_new_run_folder(cfg.command), True
    else:
        folder = Path(cfg.out).expanduser().resolve()
    lock, made = run_folder.claim_run_folder(folder, cfg.exist_ok, created=created or None)
    lock.release()  # the folder is checked (a previous run refused or cleared); rank 0 takes it for the run
    return replace(cfg, out=str(folder)), str(folder), created or made


def _check_resources(ray, workers: int, gpu: bool) -> None:
    have = int(ray.cluster_resources().get("GPU" if gpu else "CPU", 0))
    if have < workers:
        kind = "GPUs" if gpu else "CPUs"
        raise UsageError(f"--ray-workers {workers} needs {workers} {kind} (one per worker) and the Ray cluster has "
                         f"{have}; lower --ray-workers" + ("." if gpu else " or join a larger cluster."))


def _storage(location: str, local_ray: bool):
    """(storage_path, storage_filesystem or None, a local folder to remove afterwards or None) for Ray's
    checkpoints: a temporary folder on this machine for a local Ray; beside a run in object storage (through
    fsspec) for a cluster, whose nodes all reach it."""
    if local_ray or not is_store_run(location):
        folder = tempfile.mkdtemp(prefix="cnncli-ray-checkpoints-")
        return folder, None, folder
    import pyarrow.fs

    store = StoreRun(location)
    store.close()
    return f"{store.root}/.ray", pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(store.fs)), None


def _failure(exc: BaseException) -> BaseException:
    """The error to show for a failed Ray Train run: a worker's cnncli error as it is (a UsageError stays exit 2),
    anything else in one sentence."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        if isinstance(e, CnncliError):
            return e
        todo += list((getattr(e, "worker_failures", None) or {}).values())  # Train v2
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]  # RayTaskError, chained errors (v1)
    failures = list((getattr(exc, "worker_failures", None) or {}).values()) or [exc]
    lines = [line.strip() for line in str(failures[0]).splitlines() if line.strip()]
    last = (lines[-1] if lines else type(exc).__name__)[:300]  # a traceback's last line: the error itself
    return CnncliError(f"training on Ray failed ({type(exc).__name__}: {last}); the Ray logs hold the workers' "
                       "tracebacks.")


def train_on_ray(cfg, opts: RayTraining):
    """Train as ``cfg`` says on Ray (see the module docstring); returns the run's TrainResult."""
    if opts.workers < 1:
        raise UsageError(f"--ray-workers must be at least 1, not {opts.workers}.")
    if opts.max_failures < 0:
        raise UsageError(f"--max-failures must be 0 or more, not {opts.max_failures}.")
    from dataclasses import fields

    known = {f.name for f in fields(cfg)}  # the options of this module (--ray...) are not the run's settings
    cfg = replace(cfg, explicit=frozenset(n for n in cfg.explicit if n in known))
    address, source = resolve_address(opts.address)
    if address is not None:
        check_reachable(address, source)
    gpu = str(cfg.device).startswith("cuda")
    cfg, location, created = _settled(cfg)
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # Train v1: workers keep the driver's working folder
    ray = connect(address)
    storage_path, storage_fs, scratch = None, None, None
    try:
        _check_resources(ray, opts.workers, gpu)
        storage_path, storage_fs, scratch = _storage(location, address is None)
        result = _fit(ray, cfg, opts, location, gpu, storage_path, storage_fs)
    except BaseException:
        if created and not (Path(location) / "train_state.pt").exists():
            shutil.rmtree(location, ignore_errors=True)  # a new run that saved nothing leaves nothing
        raise
    finally:
        disconnect(ray)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return result


def _fit(ray, cfg, opts: RayTraining, location: str, gpu: bool, storage_path: str, storage_fs):
    import uuid

    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    board = ray.remote(num_cpus=0)(Board).remote()
    config = {"cfg": cfg.to_dict(), "explicit": sorted(cfg.explicit), "location": location, "board": board,
              "env": {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}}
    run_config = {"name": f"cnncli-{cfg.command}-{uuid.uuid4().hex[:8]}", "storage_path": storage_path,
                  "failure_config": FailureConfig(max_failures=opts.max_failures)}
    if storage_fs is not None:
        run_config["storage_filesystem"] = storage_fs
    if not _train_v2():
        run_config["verbose"] = 0  # Train v1 prints Tune's status table to the driver; v2 has no such option
    trainer = TorchTrainer(worker_main, train_loop_config=config,
                           scaling_config=ScalingConfig(num_workers=opts.workers, use_gpu=gpu),
                           run_config=RunConfig(**run_config),
                           torch_config=TorchConfig(backend="nccl" if gpu else "gloo"))
    if not cfg.quiet:
        info(f"{cfg.command} on Ray: {opts.workers} DDP worker(s) ({'one GPU each, nccl' if gpu else 'gloo'}), "
             f"up to {opts.max_failures} restart(s) from the last epoch; out {location}")
    relay = DriverRelay(ray, board, quiet=cfg.quiet)
    relay.start()
    try:
        trainer.fit()
    except Exception as exc:  # TrainingFailedError (v1 and v2), WorkerGroupError, RayTaskError
        relay.stop()
        raise _failure(exc) from None
    relay.stop()
    if relay.summary is None:
        raise CnncliError("training on Ray ended without rank 0's summary; see the Ray logs.")
    return _result(relay.summary)


def _train_v2() -> bool:
    """Whether Ray Train v2 runs (the default from Ray 2.5x; RAY_TRAIN_V2_ENABLED=0 turns it off)."""
    try:
        from ray.train.v2._internal.constants import is_v2_enabled
    except ImportError:  # Ray before Train v2
        return False
    return is_v2_enabled()


def _result(summary: dict):
    from cnncli.train.run import TrainResult

    out = summary.pop("out_dir")
    return TrainResult(out_dir=out if is_store_run(out) else Path(out), **summary)


class DriverRelay:
    """The driver's side of :class:`Board`: a thread that prints rank 0's lines and draws its bar here."""

    def __init__(self, ray, board, quiet: bool) -> None:
        self.ray, self.board, self.quiet = ray, board, quiet
        self.summary: dict | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cnncli-ray-relay")
        self._bar = None
        self._bar_cm = None
        self._seen_start = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._drain()
        self._close_bar()

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._drain()

    def _drain(self) -> None:
        try:
            messages = self.ray.get(self.board.take.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - the board is gone with the cluster: nothing more to show
            return
        for kind, *rest in messages:
            if kind == "line":
                self._close_bar()
                if not self.quiet:
                    info(rest[0])
            elif kind == "warn":
                self._close_bar()
                warn(rest[0])
            elif kind == "started":
                if self._seen_start:
                    self.restarts += 1
                    where = (f"it continues after epoch {rest[0]}, the last checkpoint" if rest[0] else
                             "no epoch had been checkpointed, so it starts again from epoch 1")
                    warn(f"the Ray worker group was restarted (restart {self.restarts}); {where}.")
                self._seen_start = True
            elif kind == "bar" and not self.quiet:
                self._show_bar(*rest)
            elif kind == "bar-end":
                self._close_bar()
            elif kind == "summary":
                self.summary = rest[0]

    def _show_bar(self, label: str, total: int, done: int, text: str) -> None:
        from cnncli.core.progress import progress_bar

        if self._bar is None or self._bar[0] != label:
            self._close_bar()
            self._bar_cm = progress_bar(label, total, fields={"info": ""})
            self._bar = (label, self._bar_cm.__enter__(), 0)
        label, bar, shown = self._bar
        bar.advance(max(0, done - shown), info=text)
        self._bar = (label, bar, max(done, shown))

    def _close_bar(self) -> None:
        if self._bar_cm is not None:
            self._bar_cm.__exit__(None, None, None)
        self._bar, self._bar_cm = None, None


# ---------------------------------------------------------------- a worker


def _relayed_progress_bar(board):
    """A stand-in for :func:`cnncli.core.progress.progress_bar` in rank 0 that sends the bar to the driver."""

    @contextmanager
    def progress_bar(label, total, fields=None, enabled=True):
        class Relay:
            done, last, text = 0, 0.0, ""

            def advance(self, n=1, **values):
                self.done += n
                self.text = values.get("info", self.text)
                now = time.monotonic()
                if enabled and (now - self.last >= BAR_POST_SECONDS or self.done >= total):
                    self.last = now
                    board.post.remote("bar", label, total, self.done, self.text)

            def update(self, **values):
                self.text = values.get("info", self.text)

            def refresh(self):
                pass

        try:
            yield Relay()
        finally:
            if enabled:
                board.post.remote("bar-end")

    return progress_bar


def _copy_into(files_from: Path, folder: Path) -> None:
    """The checkpoint's files into a run folder, each through the atomic writer."""
    from cnncli.core.atomic import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        source = files_from / name
        if source.is_file():
            with atomic_path(folder / name) as tmp:
                shutil.copyfile(source, tmp)


def _checkpoint_folder(run: Path) -> Path:
    """A temporary folder holding the run's resumable files (hard links where it can), for ray.train.report."""
    folder = Path(tempfile.mkdtemp(prefix="cnncli-ray-report-"))
    for name in CHECKPOINT_FILES:
        if (run / name).is_file():
            try:
                os.link(run / name, folder / name)
            except OSError:
                shutil.copyfile(run / name, folder / name)
    return folder


def worker_main(config: dict) -> None:
    """One Ray Train worker: a TrainingRun in the process group Ray set up (see the module docstring)."""
    import json

    import ray.train
    from ray.train import Checkpoint

    from cnncli.train.config import TrainConfig
    from cnncli.train.loop import run_training

    os.environ.update(config["env"])
    rank = ray.train.get_context().get_world_rank()
    board = config["board"]
    cfg = replace(TrainConfig.from_dict(config["cfg"]), explicit=frozenset(config["explicit"]))
    location = config["location"]
    checkpoint = ray.train.get_checkpoint()
    restored = None
    if checkpoint is not None:  # a restarted group: continue from the last reported epoch
        restored = Path(tempfile.mkdtemp(prefix="cnncli-ray-restore-"))
        checkpoint.to_directory(str(restored))
    store = StoreRun(location) if is_store_run(location) else None
    try:
        if store is not None:
            store.exist_ok = cfg.exist_ok
            if restored is not None:
                _copy_into(restored, store.staging)
                args = store.staging / "args.json"
                args.write_text(json.dumps({**json.loads(args.read_text()), "out": str(store.staging)}))
                cfg = replace(cfg, resume=str(store.staging), out=None)
            elif cfg.resume:
                store.download_for_resume()
                cfg = replace(cfg, resume=str(store.staging), out=None)
            else:
                cfg = replace(cfg, out=str(store.staging), exist_ok=True)
            run = store.staging
        elif restored is not None:
            if rank == 0:
                _copy_into(restored, Path(location))
            cfg = replace(cfg, resume=location if rank == 0 else str(restored), out=None)
            run = Path(location)
        else:
            cfg = replace(cfg, exist_ok=True) if not cfg.resume else cfg  # the driver claimed the folder
            run = Path(location)
        if restored is not None and cfg.resume:
            cfg = replace(cfg, explicit=frozenset(n for n in cfg.explicit if n not in ("out", "exist_ok")))
        named = store.named if store is not None else (lambda text: text)
        if rank == 0:  # this worker's bar and warnings (skipped images...) are shown by the driver
            import cnncli.train.epoch
            import cnncli.train.run

            cnncli.train.run.warn = lambda message: board.post.remote("warn", named(message))
            if not cfg.quiet:
                cnncli.train.epoch.progress_bar = _relayed_progress_bar(board)
        first: list[int] = []

        def after_epoch(epoch: int, model) -> None:
            if not first:  # called once before the first epoch, with the last finished one
                first.append(epoch)
                if rank == 0:
                    board.post.remote("started", epoch)
                return
            report_dir = None
            if rank == 0:
                if store is not None:
                    store.upload()
                report_dir = _checkpoint_folder(run)
            try:
                ray.train.report({"epoch": epoch},
                                 checkpoint=Checkpoint.from_directory(str(report_dir)) if report_dir else None)
            finally:
                if report_dir is not None:
                    shutil.rmtree(report_dir, ignore_errors=True)

        def say(message: str) -> None:
            board.post.remote("line", named(message))

        result = run_training(cfg, say, after_epoch)
        if rank == 0:
            if store is not None:
                store.upload()  # metrics.json and the plots
            board.post.remote("summary", {
                "out_dir": location, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                "best_val_acc": result.best_val_acc, "best_val_loss": result.best_val_loss, "stopped": result.stopped,
                "skipped_images": result.skipped_images, "trainable_params": result.trainable_params,
                "history": result.history, "metrics": result.metrics})
    finally:
        if store is not None:
            store.close()
        if restored is not None:
            shutil.rmtree(restored, ignore_errors=True)
