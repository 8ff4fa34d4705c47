"""`cnncli data pack`: a class-folder dataset of real digits -> WebDataset tar shards + dataset.json, to a local folder
and to moto's S3 server on loopback; every image once with its bytes unchanged, read back by the webdataset
library; a kill -9 mid-pack and a re-run give the shards of an uninterrupted pack, byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scale_helpers import moto_s3_environment
from train_data import write_digits

from cnncli.data.layout import assemble_splits, scan_dataset


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def s3():
    with moto_s3_environment() as env:
        yield env


@pytest.fixture
def digits(tmp_path) -> Path:
    root = write_digits(tmp_path / "digits", per_class=8)
    (root / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))  # a truncated PNG: left out
    return root


def read_with_webdataset(folder: Path, names: list[str]) -> list[dict]:
    import webdataset as wds

    urls = [str(folder / n) for n in names]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_pack_local_keeps_every_image_once_with_its_bytes(run_cli, digits, tmp_path):
    out = tmp_path / "packed"
    result = run_cli("data", "pack", str(digits), str(out), "--shard-size", "16", "--seed", "3")
    assert result.code == 0, result.err
    said = "".join(result.err.split())  # the console wraps long lines, inside long paths too
    assert "broken.png" in said and "1unreadableimagesleftout" in said
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["classes"] == [str(i) for i in range(10)]
    assert manifest["source"]["layout"] == "class-folders" and manifest["source"]["seed"] == 3
    assert [s["path"] for s in manifest["skipped"]] == [str(digits / "3" / "broken.png")]

    splits, _ = assemble_splits(scan_dataset(digits), 0.2, 3)  # the split train would make, less the broken file
    expected = {split: {s.path.relative_to(digits).as_posix(): s.label for s in getattr(splits, split)
                        if s.path.name != "broken.png"} for split in ("train", "val")}
    for split, entry in manifest["splits"].items():
        names = [s["name"] for s in entry["shards"]]
        for shard in entry["shards"]:
            assert sha(out / shard["name"]) == shard["sha256"]
            assert (out / shard["name"]).stat().st_size == shard["bytes"]
        samples = read_with_webdataset(out, names)  # the webdataset library reads the shards as they are
        assert entry["count"] == len(samples) == sum(s["count"] for s in entry["shards"])
        seen = {}
        for sample in samples:
            meta = json.loads(sample["json"])
            assert meta["path"] not in seen, f"{meta['path']} packed twice"
            seen[meta["path"]] = int(sample["cls"])
            assert sample["png"] == (digits / meta["path"]).read_bytes()  # the original bytes, not re-encoded
            assert manifest["classes"][int(sample["cls"])] == meta["class"]
        assert seen == expected[split]
        assert entry["class_counts"] == {c: list(seen.values()).count(i) for i, c in enumerate(manifest["classes"])
                                         if i in seen.values()}
    train_shards = manifest["splits"]["train"]["shards"]
    assert len({tuple(s["class_counts"]) for s in train_shards}) > 1 or len(train_shards[0]["class_counts"]) > 2, \
        "train was not mixed before cutting: each shard would hold one or two classes"


def test_pack_refuses_what_train_refuses(run_cli, tmp_path):
    root = write_digits(tmp_path / "one", per_class=4, classes=1)
    result = run_cli("data", "pack", str(root), str(tmp_path / "out"))
    assert result.code == 2 and "single class" in result.err
    assert not (tmp_path / "out").exists()


def _pack_command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cnncli", "data", "pack", str(data), str(out), "--shard-size", "2", "-q"]


def test_kill_9_mid_pack_then_rerun_gives_the_same_shards(digits, tmp_path):
    from cnncli.data.pack import pack_dataset

    reference = tmp_path / "reference"
    pack_dataset(str(digits), str(reference), shard_size=2, quiet=True)
    total = len(list(reference.glob("*.tar")))

    out = tmp_path / "killed"
    proc = subprocess.Popen(_pack_command(digits, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(out.glob("*.tar"))) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, f"the pack ended before it was killed: {proc.stderr.read()[-500:]}"
    proc.stderr.close()
    done = len(list(out.glob("*.tar")))
    assert 3 <= done < total and not (out / "dataset.json").exists()

    result = pack_dataset(str(digits), str(out), shard_size=2, quiet=True)
    assert result.written <= total - done + 1  # the complete shards were kept (at most the last one is redone)
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(p.name for p in reference.glob("*.tar"))
    for shard in reference.glob("*.tar"):
        assert sha(out / shard.name) == sha(shard), shard.name
    assert json.loads((out / "dataset.json").read_text())["splits"] == \
        json.loads((reference / "dataset.json").read_text())["splits"]
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".pack"]  # no half-written files


def test_rerun_removes_the_temporaries_of_a_dead_writer_and_keeps_a_live_ones(digits, tmp_path):
    """A kill -9 during a write leaves ``.NAME.<pid>-<hex>.tmp``; the next pack removes it (its writer is gone) but
    leaves a temporary whose writer still runs (another pack writing there now)."""
    from cnncli.data.pack import STATE_FOLDER, pack_dataset

    out = tmp_path / "out"
    (out / STATE_FOLDER).mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [out / f".train-000001.tar.{dead.pid}-0badc0de.tmp",
                 out / STATE_FOLDER / f".train-000001.tar.json.{dead.pid}-0badc0de.tmp"]
        running = out / f".train-000002.tar.{live.pid}-00c0ffee.tmp"
        for path in [*stale, running]:
            path.write_bytes(b"half a shard")
        pack_dataset(str(digits), str(out), shard_size=2, quiet=True)
        assert [p for p in stale if p.exists()] == []
        assert running.exists()
    finally:
        live.kill()
        live.wait()


def test_pack_to_s3_writes_the_same_shards(s3, run_cli, digits, tmp_path):
    import boto3

    from cnncli.data.pack import pack_dataset

    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket="packs")
    local = tmp_path / "local"
    pack_dataset(str(digits), str(local), shard_size=16, quiet=True)
    result = run_cli("data", "pack", str(digits), "s3://packs/digits", "--shard-size", "16")
    assert result.code == 0, result.err
    keys = {o["Key"]: o["Size"] for o in client.list_objects_v2(Bucket="packs", Prefix="digits/")["Contents"]}
    for shard in local.glob("*.tar"):
        body = client.get_object(Bucket="packs", Key=f"digits/{shard.name}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sha(shard)
    assert "digits/dataset.json" in keys
    remote = json.loads(client.get_object(Bucket="packs", Key="digits/dataset.json")["Body"].read())
    assert remote["splits"] == json.loads((local / "dataset.json").read_text())["splits"]

    again = run_cli("data", "pack", str(digits), "s3://packs/digits", "--shard-size", "16")
    assert again.code == 0 and "(0written" in "".join(again.err.split())  # complete shards are skipped on a store too
