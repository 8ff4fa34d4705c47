"""Training, evaluating and inspecting streamed data: LeNet-5 on real digits from packed shards in a local folder and
in moto's S3 on loopback, an S3 prefix of class folders, and every bad input (an unreachable store, a missing
prefix or dataset.json, a shard whose sha256 or size differs, a corrupt member, a label outside the classes).

The stream's order is its own (the shards in an order drawn from (seed, epoch), then a shuffle buffer), not the
permutation a map-style loader draws over a local folder, so training from shards matches training from the folder
in accuracy (the slow test), and matches itself exactly wherever the shards live: the same seed gives the same
results.csv from a local folder of shards and from S3."""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from scale_helpers import free_port, moto_s3_environment, upload_folder
from train_data import write_digits

from cnncli.data.pack import pack_dataset

MEASURED = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5")  # not the timings


@pytest.fixture(scope="module")
def s3():
    with moto_s3_environment() as env:
        yield env


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stream")
    digits = write_digits(root / "digits", per_class=12)
    pack_dataset(str(digits), str(root / "packed"), shard_size=20, quiet=True)
    return digits, root / "packed"


def train(data, out: Path, *extra: str, run_cli):
    return run_cli("train", str(data), "--arch", "lenet5", "--image-size", "32", "--grayscale", "--epochs", "2",
                   "--batch-size", "16", "--workers", "0", "--shuffle-buffer", "50", "-o", str(out), "-q", *extra)


def results(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as fh:
        return [{k: row[k] for k in MEASURED} for row in csv.DictReader(fh)]


def test_s3_shards_train_exactly_as_local_shards_and_evaluate_scores_the_held_out_split(s3, packed, run_cli,
                                                                                      tmp_path):
    digits, local = packed
    upload_folder(s3, "train-bucket", local, "digits/")
    a = train(local, tmp_path / "local", run_cli=run_cli)
    assert a.code == 0, a.err
    b = train("s3://train-bucket/digits", tmp_path / "s3", "--cache-size", "1MB", run_cli=run_cli)
    assert b.code == 0, b.err
    assert results(tmp_path / "local") == results(tmp_path / "s3")
    rows = results(tmp_path / "local")
    assert len(rows) == 2 and rows[0]["train_loss"] != rows[1]["train_loss"]

    manifest = json.loads((local / "dataset.json").read_text())
    card = run_cli("evaluate", str(tmp_path / "s3" / "best.safetensors"), "s3://train-bucket/digits", "-f", "json")
    assert card.code == 0, card.err
    report = json.loads(card.out)
    assert report["split"]["name"] == "val" and report["n_images"] == manifest["splits"]["val"]["count"]
    cached = list((Path(os.environ["CNNCLI_CACHE"]) / "shards").glob("*.tar"))
    assert cached and sum(p.stat().st_size for p in cached) <= 1_000_000  # bounded by --cache-size


def test_a_store_prefix_of_class_folders_trains_and_inspects(s3, packed, run_cli, tmp_path):
    digits, _ = packed
    upload_folder(s3, "folders", digits, "digits/")
    result = train("s3://folders/digits", tmp_path / "run", run_cli=run_cli)
    assert result.code == 0, result.err
    card = json.loads((tmp_path / "run" / "metrics.json").read_text())
    from cnncli.data.layout import load_dataset

    held_out = load_dataset(digits)  # the seeded 20% a local folder gives: 2 of each class's 12
    assert card["evaluation"]["n_images"] == len(held_out.val) == 20
    scored = run_cli("evaluate", str(tmp_path / "run" / "best.safetensors"), "s3://folders/digits", "-f", "json")
    assert scored.code == 0, scored.err
    assert json.loads(scored.out)["n_images"] == 20  # the recorded hold-out, rebuilt from the listing
    looked = run_cli("inspect", "s3://folders/digits", "-f", "json")
    assert looked.code == 0, looked.err
    assert sum(json.loads(looked.out)["counts"]["train"].values()) == len(held_out.train) == 100


@pytest.mark.parametrize("case", ["unreachable", "missing-bucket", "empty-prefix", "no-manifest"])
def test_store_problems_are_one_sentence_and_exit_2(case, s3, packed, run_cli, tmp_path, monkeypatch):
    _, local = packed
    import boto3

    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket="probs")
    target = {"unreachable": "s3://probs/x", "missing-bucket": "s3://no-such-bucket/x", "empty-prefix": "s3://probs/none",
              "no-manifest": "s3://probs/shards"}[case]
    if case == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    if case == "no-manifest":
        for shard in local.glob("*.tar"):
            client.put_object(Bucket="probs", Key=f"shards/{shard.name}", Body=shard.read_bytes())
    result = train(target, tmp_path / "run", run_cli=run_cli)
    said = " ".join(result.err.split())
    assert result.code == 2, said
    assert said.count("error:") == 1 and "Traceback" not in said
    assert {"unreachable": "cannot reach", "missing-bucket": "does not exist", "empty-prefix": "nothing under this",
            "no-manifest": "no dataset.json"}[case] in said
    assert not (tmp_path / "run").exists()


def copy_pack(local: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(local, to)
    return to


def test_a_shard_of_another_size_or_a_missing_one_is_refused_up_front(packed, run_cli, tmp_path):
    _, local = packed
    bad = copy_pack(local, tmp_path / "longer")
    shard = sorted(bad.glob("train-*.tar"))[1]
    shard.write_bytes(shard.read_bytes() + bytes(512))
    result = train(bad, tmp_path / "run", run_cli=run_cli)
    assert result.code == 2 and "not the shard that was packed" in " ".join(result.err.split())
    shard.unlink()
    result = train(bad, tmp_path / "run", run_cli=run_cli)
    assert result.code == 2 and "is missing" in " ".join(result.err.split())
    (bad / "dataset.json").unlink()
    result = train(bad, tmp_path / "run", run_cli=run_cli)
    assert result.code == 2 and not (tmp_path / "run").exists()


def test_labels_outside_the_class_list_in_dataset_json_are_refused(packed, run_cli, tmp_path):
    _, local = packed
    bad = copy_pack(local, tmp_path / "labels")
    manifest = json.loads((bad / "dataset.json").read_text())
    manifest["classes"] = manifest["classes"][:-1]  # class "9" is counted but no longer in the list
    (bad / "dataset.json").write_text(json.dumps(manifest))
    result = train(bad, tmp_path / "run", run_cli=run_cli)
    assert result.code == 2 and "outside the class list" in " ".join(result.err.split())


def test_a_shard_whose_sha256_differs_is_skipped_counted_and_reported(packed, run_cli, tmp_path):
    _, local = packed
    bad = copy_pack(local, tmp_path / "flipped")
    manifest = json.loads((bad / "dataset.json").read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    data = bytearray((bad / entry["name"]).read_bytes())
    data[2000] ^= 0xFF  # same size, other bytes
    (bad / entry["name"]).write_bytes(bytes(data))
    result = train(bad, tmp_path / "run", run_cli=run_cli)
    assert result.code == 0, result.err
    said = "".join(result.err.split())
    assert "sha256differs" in said
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_images"] == entry["count"]  # each of the shard's images, not one
    assert "sha256 differs" in metrics["skipped_examples"][0]


def _member(name: str, payload: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, io.BytesIO(payload)


def test_a_corrupt_member_and_an_unknown_label_are_skipped_and_counted(packed, run_cli, tmp_path):
    """A third-party shard with a sound sha256: one PNG member is garbage, one label is past the class list."""
    import hashlib

    _, local = packed
    bad = copy_pack(local, tmp_path / "members")
    manifest = json.loads((bad / "dataset.json").read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    samples = []
    with tarfile.open(bad / entry["name"]) as tar:
        for member in tar.getmembers():
            samples.append((member.name, tar.extractfile(member).read()))
    rewritten = io.BytesIO()
    with tarfile.open(fileobj=rewritten, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (name, payload) in enumerate(samples):
            if name.endswith(".png") and i < 3:
                payload = b"\x89PNG\r\n\x1a\n" + bytes(40)  # the first image: corrupt
            if name.endswith(".cls") and 3 <= i < 6:
                payload = b"42"  # the second sample: a label outside the 10 classes
            tar.addfile(*_member(name, payload))
    data = rewritten.getvalue()
    (bad / entry["name"]).write_bytes(data)
    entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (bad / "dataset.json").write_text(json.dumps(manifest))
    result = train(bad, tmp_path / "run", run_cli=run_cli)
    assert result.code == 0, result.err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_images"] == 2
    said = " ".join(metrics["skipped_examples"])
    assert "label 42 is outside the 10 classes" in said and "not an image file" in said
    assert said.count(f"{bad / entry['name']}/") == 2  # each names its shard and key


@pytest.mark.slow
def test_shards_reach_the_accuracy_of_the_folder_within_one_point(tmp_path):
    """The whole digits set, half held out (the same 899 val images either way): a stream's order differs from a
    map-style permutation, so the runs differ step by step, but converge to the same accuracy."""
    from cnncli.train.config import TrainConfig
    from cnncli.train.loop import run_training

    digits = write_digits(tmp_path / "digits", per_class=None)
    pack_dataset(str(digits), str(tmp_path / "packed"), shard_size=100, val_split=0.5, quiet=True)
    accuracy = {}
    for name, source in (("folder", digits), ("shards", tmp_path / "packed")):
        run = run_training(TrainConfig(data=str(source), arch="lenet5", epochs=8, image_size=32, grayscale=True,
                                       augment="none", val_split=0.5, out=str(tmp_path / name), quiet=True, workers=0,
                                       shuffle_buffer=500))
        accuracy[name] = run.history[-1]["val_acc"]
    assert accuracy["folder"] > 0.9
    assert abs(accuracy["folder"] - accuracy["shards"]) <= 0.01, accuracy


def test_shards_are_split_disjointly_across_ranks_and_workers_in_a_seeded_epoch_order(packed):
    """Every train image once per epoch over 2 ranks x 2 workers (equal shares per rank, whole batches per worker),
    the order fixed by the seed and different each epoch; a real 2-worker DataLoader yields len(loader) batches."""
    from torch.utils.data import DataLoader

    from cnncli.data.stream_source import ShardCache, open_stream_source, unit_samples
    from cnncli.models.card import Preprocessing
    from cnncli.train.datasets import collate
    from cnncli.train.streaming import StreamDataset

    _, local = packed
    source = open_stream_source(str(local))
    total = source.count("train")
    pre = Preprocessing(input_size=(32, 32), channels=1, mean=(0.5,), std=(0.5,))
    base = StreamDataset(source, "train", pre, seed=5, train=True, shuffle_buffer=10)

    def epoch_paths(dataset, epoch):
        dataset.set_epoch(epoch)
        per_rank = []
        for rank in range(2):
            mine = dataset.for_loader(rank, 2, 2, 16)
            paths = [s.path for w in range(2) for unit, lo, hi in mine.segments(w, 2)
                     for s in unit_samples(unit, 10, ShardCache(0), lo, hi)]
            assert len(paths) == len(mine) == total // 2
            per_rank.append(paths)
        return per_rank

    first = epoch_paths(base, 1)
    everything = first[0] + first[1]
    assert len(set(everything)) == len(everything) == total // 2 * 2  # disjoint; at most world-1 left out
    assert epoch_paths(StreamDataset(source, "train", pre, seed=5, train=True), 1) == first  # same seed, same order
    assert epoch_paths(base, 2) != first  # another epoch, another order

    one = base.for_loader(0, 1, 2, 16)
    loader = DataLoader(one, batch_size=16, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == len(loader) and sum(len(b) for b in batches) == total
