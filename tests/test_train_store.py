"""A training run folder in object storage (moto's S3 server on loopback): ``-o s3://...`` writes the run there
file by file, ``--resume s3://...`` continues it to the same numbers as an uninterrupted local run, and a missing
bucket or a previous run at the prefix is refused in one sentence (exit 2) before training."""

from __future__ import annotations

import csv
import io
import json

import pytest
from scale_helpers import moto_s3_environment
from train_data import write_digits

MEASURED = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5")  # not the timings


@pytest.fixture(scope="module")
def s3():
    import boto3

    with moto_s3_environment() as env:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        client.create_bucket(Bucket="runs")
        yield client


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("store-run") / "digits", per_class=10)


def train(run_cli, data, *extra):
    return run_cli("train", str(data), "--arch", "lenet5", "--image-size", "32", "--grayscale", "--batch-size", "16",
                   "--workers", "0", "--schedule", "constant", "-q", *extra)


def rows(text: str) -> list[dict]:
    return [{k: row[k] for k in MEASURED} for row in csv.DictReader(io.StringIO(text))]


def objects(client, prefix: str) -> dict[str, bytes]:
    listing = client.list_objects_v2(Bucket="runs", Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: client.get_object(Bucket="runs", Key=o["Key"])["Body"].read() for o in listing}


def test_a_run_in_s3_resumes_from_s3_to_the_numbers_of_an_uninterrupted_local_run(s3, digits, run_cli, tmp_path):
    first = train(run_cli, digits, "--epochs", "2", "-o", "s3://runs/exp/a")
    assert first.code == 0, first.err
    stored = objects(s3, "exp/a/")
    for name in ("args.json", "train_state.pt", "best.safetensors", "last.safetensors", "results.csv",
                 "metrics.json"):
        assert name in stored, sorted(stored)
    assert not any(name.startswith(".") for name in stored)  # no lock, probe or temporary file was uploaded
    assert json.loads(stored["args.json"])["out"] == "s3://runs/exp/a"  # the URI, not the staging folder
    assert [r["epoch"] for r in rows(stored["results.csv"].decode())] == ["1", "2"]
    assert "s3://runs/exp/a/best.safetensors" in first.err.split()  # the summary names the URI

    resumed = train(run_cli, digits, "--epochs", "3", "--resume", "s3://runs/exp/a")
    assert resumed.code == 0, resumed.err
    after = rows(objects(s3, "exp/a/")["results.csv"].decode())
    assert [r["epoch"] for r in after] == ["1", "2", "3"]  # each epoch once

    local = train(run_cli, digits, "--epochs", "3", "-o", str(tmp_path / "local"))
    assert local.code == 0, local.err
    # resumed from the downloaded state (weights, optimiser, generators; a constant rate, so extending --epochs
    # re-plans nothing), the run reaches what one uninterrupted 3-epoch run reaches
    uninterrupted = rows((tmp_path / "local" / "results.csv").read_text())
    assert after[2] == uninterrupted[2]


@pytest.mark.parametrize("case", ["missing-bucket", "previous-run", "resume-nothing"])
def test_store_run_problems_are_one_sentence_and_exit_2_before_training(case, s3, digits, run_cli):
    if case == "missing-bucket":
        result = train(run_cli, digits, "--epochs", "1", "-o", "s3://no-such-bucket/runs/x")
        expected = "no-such-bucket"
    elif case == "previous-run":
        s3.put_object(Bucket="runs", Key="taken/run/args.json", Body=b"{}")
        result = train(run_cli, digits, "--epochs", "1", "-o", "s3://runs/taken/run")
        expected = "already holds a training run"
    else:
        result = train(run_cli, digits, "--epochs", "1", "--resume", "s3://runs/nothing/here")
        expected = "has no train_state.pt"
    assert result.code == 2, (result.out, result.err)
    assert expected in result.err
    assert "epoch 1/" not in result.out + result.err and "Traceback" not in result.err
    if case == "previous-run":  # nothing of the previous run was touched
        assert objects(s3, "taken/run/") == {"args.json": b"{}"}


def test_each_epochs_files_reach_the_store_when_the_epoch_ends(s3, digits):
    from cnncli.scale.run_store import train_to_store
    from cnncli.train.config import TrainConfig

    seen: dict[int, list[str]] = {}

    def after(epoch, model):  # called once the epoch's files are written (and, for a store run, uploaded)
        stored = objects(s3, "live/b/")
        seen[epoch] = [r["epoch"] for r in rows(stored["results.csv"].decode())] if "results.csv" in stored else []
        if epoch:
            assert "train_state.pt" in stored and "last.safetensors" in stored

    cfg = TrainConfig(data=str(digits), arch="lenet5", image_size=32, grayscale=True, batch_size=16, workers=0,
                      epochs=2, out="s3://runs/live/b", quiet=True)
    result = train_to_store(cfg, on_epoch_end=after)
    assert seen == {0: [], 1: ["1"], 2: ["1", "2"]}  # a run killed after epoch 1 resumes from epoch 1's state
    assert result.out_dir == "s3://runs/live/b"
