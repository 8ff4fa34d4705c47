"""``train --ray``: LeNet-5 on real digits as 2 DDP workers on a real local Ray (Ray Train's TorchTrainer, gloo).

The default suite checks what is refused before Ray starts (the options, an unreachable RAY_ADDRESS: one sentence,
exit 2, within seconds). The slow tests start a real local Ray: 2 workers reach the accuracy of one process within
one point, and a worker killed with SIGKILL after epoch 1 is restarted by Ray from the last epoch's checkpoint, the
run ends with exit 0 and results.csv holds every epoch once."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scale_helpers import free_port
from train_data import write_digits

RAY_POLL_S = 2.0  # Ray Train v2's controller polls its workers this often


def train_args(data, out, *extra):
    return ["train", str(data), "--arch", "lenet5", "--image-size", "32", "--grayscale", "--workers", "0",
            "-o", str(out), *extra]


def epochs_in(run: Path) -> list[int]:
    if not (run / "results.csv").is_file():
        return []
    with open(run / "results.csv", newline="") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


@pytest.mark.parametrize("case", ["workers", "failures", "address", "single-process"])
def test_ray_options_and_an_unreachable_address_are_refused_before_training(case, run_cli, tmp_path, monkeypatch):
    digits = write_digits(tmp_path / "digits", per_class=3)
    extra = {"workers": ["--ray", "--ray-workers", "0"], "failures": ["--ray", "--max-failures", "-1"],
             "address": ["--ray"], "single-process": ["--ray", "--balance", "sampler"]}[case]
    if case == "address":
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")  # nothing listens there
    t0 = time.monotonic()
    result = run_cli(*train_args(digits, tmp_path / "run", "--epochs", "1", *extra))
    assert result.code == 2, (result.out, result.err)
    said = " ".join(result.err.split())
    expected = {"workers": "--ray-workers", "failures": "--max-failures",
                "address": "cannot reach the Ray cluster at 127.0.0.1:",
                "single-process": "--balance sampler are single-process options"}[case]
    assert expected in said and "Traceback" not in said
    assert "from RAY_ADDRESS" in said or case != "address"
    assert time.monotonic() - t0 < 30  # refused up front, not after Ray's minute-long wait
    assert not (tmp_path / "run").exists()  # nothing was claimed


@pytest.mark.slow
def test_two_ray_workers_reach_the_accuracy_of_one_process_within_one_point(run_cli, tmp_path):
    """The whole digits set, half held out; 2 workers of batch 16 (a global batch of 32) against one process of
    batch 32: different steps, the same accuracy."""
    digits = write_digits(tmp_path / "digits", per_class=None)
    common = ["--epochs", "8", "--augment", "none", "--val-split", "0.5", "-q"]
    one = run_cli(*train_args(digits, tmp_path / "one", *common, "--batch-size", "32"))
    assert one.code == 0, one.err
    two = run_cli(*train_args(digits, tmp_path / "two", *common, "--batch-size", "16", "--ray", "local",
                              "--ray-workers", "2"))
    assert two.code == 0, two.err
    assert epochs_in(tmp_path / "two") == list(range(1, 9))

    def last_acc(run):
        with open(run / "results.csv", newline="") as fh:
            return float(list(csv.DictReader(fh))[-1]["val_acc"])

    single, ray = last_acc(tmp_path / "one"), last_acc(tmp_path / "two")
    assert single > 0.9
    assert abs(single - ray) <= 0.01, (single, ray)


def _train_workers(driver: int) -> list[int]:
    """The Ray Train worker processes under the driver (their process title is ray::RayTrainWorker...)."""
    from cnncli.scale.ray_reaper import descendants

    found = []
    for pid in descendants(driver, 0):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::RayTrainWorker"):
            found.append(pid)
    return sorted(found)


def _checkpoints_since(t: float) -> list[Path]:
    """Ray's checkpoints of a local --ray run (in cnncli's temporary checkpoint folder) made after ``t``."""
    import glob
    import tempfile

    found = glob.glob(f"{tempfile.gettempdir()}/cnncli-ray-checkpoints-*/*/checkpoint*")
    return [Path(p) for p in found if os.path.getmtime(p) >= t]


@pytest.mark.slow
def test_a_train_worker_killed_after_epoch_1_is_restarted_and_every_epoch_is_run_once(tmp_path):
    digits = write_digits(tmp_path / "digits", per_class=None)
    run = tmp_path / "run"
    launched = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", *train_args(digits, run, "--epochs", "8",
                                                                          "--batch-size", "16", "--ray", "local",
                                                                          "--ray-workers", "2")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 400
        while not epochs_in(run) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        # epoch 1's files are written, then handed to Ray as a checkpoint; Ray's controller registers a reported
        # checkpoint when it next polls the workers (every 2 s): a kill before that restarts from the beginning
        while not _checkpoints_since(launched) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(RAY_POLL_S + 1)
        workers = _train_workers(proc.pid)
        assert proc.poll() is None and len(workers) == 2 and epochs_in(run)[-1] < 8, (epochs_in(run), workers)
        os.kill(workers[-1], signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = " ".join((out + err).split())
    assert proc.returncode == 0, said[-2000:]
    assert "worker group was restarted" in said
    assert epochs_in(run) == list(range(1, 9))  # each epoch once
    resumed = re.search(r"it continues after epoch (\d+), the last checkpoint", said)
    assert resumed and int(resumed[1]) >= 1, said[-3000:]
    assert said.count("epoch 1/8 train loss") == 1  # the restarted group went on from its checkpoint, not from 0


@pytest.mark.slow
def test_ray_trains_into_s3_and_resumes_from_it(tmp_path):
    """--ray with -o s3://... (moto on loopback): rank 0 uploads the run; --ray --resume s3://... continues it."""
    import boto3
    from scale_helpers import moto_s3

    digits = write_digits(tmp_path / "digits", per_class=10)
    with moto_s3() as env:
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
        s3.create_bucket(Bucket="runs")
        base = [sys.executable, "-m", "cnncli", "train", str(digits), "--arch", "lenet5", "--image-size", "32",
                "--grayscale", "--batch-size", "16", "--workers", "0", "--ray", "local", "--ray-workers", "2", "-q"]
        for extra in (["--epochs", "2", "-o", "s3://runs/ray/a"], ["--epochs", "3", "--resume", "s3://runs/ray/a"]):
            done = subprocess.run(base + extra, env={**os.environ, **env}, capture_output=True, text=True,
                                  timeout=600)
            assert done.returncode == 0, done.stderr[-2000:]
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="runs")["Contents"]}
        assert {"ray/a/train_state.pt", "ray/a/best.safetensors", "ray/a/metrics.json"} <= keys, keys
        text = s3.get_object(Bucket="runs", Key="ray/a/results.csv")["Body"].read().decode()
        assert [line.split(",")[0] for line in text.splitlines()[1:]] == ["1", "2", "3"]
