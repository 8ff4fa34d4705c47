"""Experiment tracking for ``train``/``finetune --log tensorboard|mlflow`` (repeatable).

* ``tensorboard``: event files in ``RUN/tensorboard/`` through ``torch.utils.tensorboard`` (the ``tensorboard``
  package's writer): the settings as text, every per-epoch metric as a scalar, the plots as images.
* ``mlflow``: a run in the experiment ``cnncli`` (``MLFLOW_EXPERIMENT_NAME`` overrides) of the store named by
  ``MLFLOW_TRACKING_URI``, else the local file store ``./mlruns`` (mlflow 3 keeps the file store behind
  ``MLFLOW_ALLOW_FILE_STORE=true``, which cnncli sets for that default only; mlflow-skinny has no SQL store):
  the settings as params, the per-epoch metrics with their epoch as the step, and the model file, results, metrics
  and plots as artifacts. The run ends FINISHED, or FAILED / KILLED when training stops on an error or Ctrl-C.

Both libraries are imported only when asked for. Only rank 0 of a torchrun job tracks.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cnncli.core.errors import UsageError

BACKENDS = ("tensorboard", "mlflow")
TENSORBOARD_FOLDER = "tensorboard"
MLFLOW_EXPERIMENT = "cnncli"
METRICS = ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "seconds", "train_img_s")
ARTIFACTS = ("best.safetensors", "args.json", "results.csv", "metrics.json", "curves.png", "confusion_matrix.png")


def check_backends(names) -> list[str]:
    names = list(dict.fromkeys(names or ()))
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown --log {unknown[0]!r}; choose {' or '.join(BACKENDS)} (repeat --log for both).")
    return names


PROBE_SECONDS = 5.0  # how long the start-up probe of a tracking server waits


def probe_backends(names) -> None:
    """Before any work: each tracker asked for is installed and its store can be reached and written, else one
    sentence and exit 2. An MLflow server is asked once within :data:`PROBE_SECONDS` (mlflow itself retries with
    back-off for minutes); a file store's folder must be writable. MLflow's own requests get a bounded timeout
    and retry count, so a server that goes away later cannot hang the run either."""
    import importlib.util

    for name in check_backends(names):
        module = "tensorboard" if name == "tensorboard" else "mlflow"
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"--log {name} needs the {module} package: pip install 'cnncli[track]'.")
        if name == "mlflow":
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            _probe_mlflow(os.environ.get("MLFLOW_TRACKING_URI", ""))


def _probe_mlflow(uri: str) -> None:
    from urllib.parse import unquote, urlparse

    from cnncli.core.paths import output_location_problem

    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:  # any HTTP answer means a server is there; mlflow's own /health route answers "OK"
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_SECONDS):
                pass
        except urllib.error.HTTPError:
            pass
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UsageError(f"MLFLOW_TRACKING_URI {uri} does not answer ({reason}, waited up to "
                             f"{PROBE_SECONDS:.0f} s); start the tracking server, fix the variable, or drop "
                             "--log mlflow.") from None
    elif parsed.scheme in ("", "file"):  # a file store (no variable: ./mlruns); other schemes are mlflow's own
        folder = (unquote(parsed.path) if parsed.scheme == "file" else uri) or "mlruns"
        problem = output_location_problem(folder, folder=True)
        if problem is not None:
            where = f"MLFLOW_TRACKING_URI {uri}" if uri else f"./mlruns ({Path(folder).resolve()})"
            raise UsageError(f"cannot write the MLflow store {where}: {problem}; point MLFLOW_TRACKING_URI at a "
                             "folder you can write to, or drop --log mlflow.")


def epoch_metrics(row: dict) -> dict[str, float]:
    return {k: float(row[k]) for k in METRICS if isinstance(row.get(k), (int, float))}


class TensorBoardTracker:
    def __init__(self, out: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("--log tensorboard needs the tensorboard package: pip install 'cnncli[track]'.") from None
        self.folder = out / TENSORBOARD_FOLDER
        self.writer = SummaryWriter(log_dir=str(self.folder))
        self.where = str(self.folder)

    def start(self, params: dict) -> None:
        lines = [f"| {k} | {v} |" for k, v in params.items()]
        self.writer.add_text("settings", "\n".join(["| setting | value |", "|---|---|", *lines]), 0)

    def log_epoch(self, epoch: int, row: dict) -> None:
        for name, value in epoch_metrics(row).items():
            self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def finish(self, out: Path, status: str) -> None:
        import numpy as np
        from PIL import Image

        for png in ("curves.png", "confusion_matrix.png"):
            if (out / png).is_file():
                with Image.open(out / png) as img:
                    self.writer.add_image(png[:-4], np.asarray(img.convert("RGB")), dataformats="HWC")
        self.writer.add_text("status", status)
        self.writer.close()


class MlflowTracker:
    def __init__(self, out: Path, run_name: str) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (Path.cwd() / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UsageError("--log mlflow needs mlflow: pip install 'cnncli[track]'.") from None
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", MLFLOW_EXPERIMENT)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name,
                                             tags={"cnncli.run_folder": str(out.resolve())}).info.run_id
        self.where = f"{uri} (experiment {name}, run {self.run_id})"

    def start(self, params: dict) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def log_epoch(self, epoch: int, row: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in epoch_metrics(row).items()])

    def finish(self, out: Path, status: str) -> None:
        for name in ARTIFACTS:
            if (out / name).is_file():
                self.client.log_artifact(self.run_id, str(out / name))
        self.client.set_terminated(self.run_id, status)


class Trackers:
    """The trackers asked for, called together; a tracker that fails is reported once and dropped, never the run."""

    def __init__(self, names, out: Path, say, warn) -> None:
        self.say, self.warn = say, warn
        self.active = []
        for name in check_backends(names):
            tracker = TensorBoardTracker(out) if name == "tensorboard" else MlflowTracker(out, out.name)
            self.active.append((name, tracker))
            say(f"logging to {name}: {tracker.where}")

    def _each(self, method: str, *args) -> None:
        for name, tracker in list(self.active):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # noqa: BLE001 - tracking must not end a training run
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                self.warn(f"{name} logging stopped: {type(exc).__name__}: {first_line}")
                self.active.remove((name, tracker))

    def start(self, settings: dict) -> None:
        params = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in settings.items()}
        self._each("start", params)

    def log_epoch(self, epoch: int, row: dict) -> None:
        self._each("log_epoch", epoch, row)

    def finish(self, out: Path, status: str = "FINISHED") -> None:
        self._each("finish", out, status)
