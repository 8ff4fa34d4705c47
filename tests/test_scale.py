"""Predict at scale (issue 12) without Ray: a real S3 API (moto's server on 127.0.0.1) in and out, parquet parts
with a manifest, crash (SIGKILL) and resume, refusals in one sentence. Every test here fails on the old main,
which had no URI inputs, no --format parquet and no --resume."""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from scale_helpers import (
    assert_rows_match,
    free_port,
    jsonl_rows,
    kill_after_parts,
    moto_s3,
    read_parts,
    run_cnncli,
    tiny_onnx,  # noqa: F401 - a pytest fixture, used by name as an argument
    write_images,
)

BUCKET = "photos"


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scale-small")
    write_images(folder, 210)
    (folder / "notes.txt").write_text("not an image extension")
    return folder


@pytest.fixture(scope="module")
def local_rows(small_set, tiny_onnx) -> dict[str, dict]:
    """Plain local `cnncli predict` on the same files (jsonl), by path relative to the folder."""
    result = run_cnncli("predict", small_set, "--model", tiny_onnx, "--format", "jsonl", "--top-k", "3")
    assert result.returncode == 1, result.stderr  # the corrupt files
    return {str(Path(p).relative_to(small_set)): r for p, r in jsonl_rows(result.stdout).items()}


@pytest.fixture(scope="module")
def moto_server():
    with moto_s3() as env:
        yield env


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    for key, value in moto_server.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return moto_server


def _s3():
    import boto3

    return boto3.client("s3")


def test_s3_prefix_to_s3_parquet_equals_local_predict(run_cli, s3_env, small_set, tiny_onnx, local_rows):
    """Acceptance 1: 210 images (some corrupt) in a real S3 API, `predict s3://... --output s3://.../preds/
    --format parquet`: every object exactly once, rows equal to local predict (top-1, probs within 1e-5)."""
    s3 = _s3()
    s3.create_bucket(Bucket=BUCKET)
    for path in sorted(small_set.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=BUCKET, Key=f"imgs/{path.relative_to(small_set)}", Body=path.read_bytes())
    s3.put_object(Bucket=BUCKET, Key="imgs/.hidden/skip.jpg", Body=(small_set / "d1" / "img00001.jpg").read_bytes())

    result = run_cli("predict", f"s3://{BUCKET}/imgs/", "--model", tiny_onnx, "--output", f"s3://{BUCKET}/preds/",
                     "--format", "parquet", "--shard-size", "64", "--top-k", "3")
    assert result.code == 1, result.err  # corrupt objects are rows with an error, the job still finishes
    err = " ".join(result.err.split())
    assert "210 images, 6 failed" in err and f"4 parts in s3://{BUCKET}/preds/" in err and "Traceback" not in err

    import io

    import pyarrow.parquet as pq

    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="preds/")["Contents"])
    assert keys == ["preds/_cnncli_manifest.json"] + [f"preds/part-{i:06d}.parquet" for i in range(4)]
    rows, metadata = {}, None
    for key in keys[1:]:
        table = pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
        metadata = table.schema.metadata
        for row in table.to_pylist():
            assert row["path"] not in rows
            rows[row["path"]] = row
    prefix = f"s3://{BUCKET}/imgs/"
    assert all(p.startswith(prefix) for p in rows)
    assert_rows_match(rows, local_rows, key=lambda p: p[len(prefix):])
    from cnncli import __version__
    from cnncli.models.weights import sha256_of

    assert json.loads(metadata[b"cnncli.model"]) == ["sha256:" + sha256_of(tiny_onnx)]
    assert metadata[b"cnncli.version"].decode() == __version__ and metadata[b"cnncli.top_k"] == b"3"
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read())
    assert manifest["inputs"]["count"] == 210 and manifest["shard_size"] == 64 and manifest["shards"] == 4

    # the same command again: the manifest matches, every part is there, nothing is rewritten
    before = {k: s3.head_object(Bucket=BUCKET, Key=k)["ETag"] for k in keys}
    again = run_cli("predict", f"s3://{BUCKET}/imgs/", "--model", tiny_onnx, "--output", f"s3://{BUCKET}/preds/",
                    "--format", "parquet", "--shard-size", "64", "--top-k", "3")
    assert again.code == 0 and "nothing to do" in " ".join(again.err.split())
    assert {k: s3.head_object(Bucket=BUCKET, Key=k)["ETag"] for k in keys} == before


def test_s3_missing_bucket_and_unreachable_endpoint_exit_2_in_one_sentence(run_cli, s3_env, tiny_onnx, small_set,
                                                                           tmp_path, monkeypatch):
    result = run_cli("predict", "s3://no-such-bucket/imgs/", "--model", tiny_onnx, "--format", "parquet",
                     "--output", tmp_path / "out")
    assert result.code == 2 and "no-such-bucket" in result.err and "does not exist" in result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()

    result = run_cli("predict", small_set, "--model", tiny_onnx, "--format", "parquet",
                     "--output", "s3://no-such-bucket/preds/")
    assert result.code == 2 and "does not exist" in result.err and len(result.err.strip().splitlines()) == 1

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    start = time.monotonic()
    result = run_cli("predict", "s3://photos/imgs/", "--model", tiny_onnx, "--format", "parquet",
                     "--output", tmp_path / "out2")
    assert result.code == 2 and "cannot reach s3://photos/imgs/" in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and time.monotonic() - start < 60


def test_s3_refused_credentials_exit_2_in_one_sentence(tiny_onnx, tmp_path):
    """moto with authentication on (INITIAL_NO_AUTH_ACTION_COUNT=0): unknown keys are refused by the S3 API."""
    with moto_s3(INITIAL_NO_AUTH_ACTION_COUNT="0") as env:
        result = run_cnncli("predict", "s3://photos/imgs/", "--model", tiny_onnx, "--format", "parquet",
                            "--output", tmp_path / "out", env={**env, "AWS_ACCESS_KEY_ID": "AKIAWRONGKEY"})
    assert result.returncode == 2 and "access to s3://photos/imgs/ was refused" in result.stderr, result.stderr
    assert "AWS_ACCESS_KEY_ID" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_memory_uri_inputs_stream_jsonl_like_local(run_cli, small_set, tiny_onnx, local_rows):
    """Any installed fsspec backend works as input (memory:// here), with the plain output formats too."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for path in small_set.rglob("*.*"):
        fs.pipe_file(f"/scale-test/{path.relative_to(small_set)}", path.read_bytes())
    out = run_cli("predict", "memory://scale-test/", "--model", tiny_onnx, "--format", "jsonl", "--top-k", "3")
    assert out.code == 1
    rows = jsonl_rows(out.out)
    prefix = "memory:///scale-test/"
    assert set(rows) == {prefix + k for k in local_rows}
    for path, row in rows.items():
        ref = local_rows[path[len(prefix):]]
        assert ("error" in row) == ("error" in ref)
        if "top" in row:
            assert row["top"][0]["index"] == ref["top"][0]["index"]
            assert np.allclose([t["prob"] for t in row["top"]], [t["prob"] for t in ref["top"]], atol=1e-5)


def test_crash_and_resume_single_process(tmp_path, tiny_onnx):
    """Acceptance 3 (single process): 2,000 images, SIGKILL after some parts; the re-run writes only the missing
    parts and the union holds each input exactly once."""
    images = tmp_path / "imgs"
    paths = write_images(images, 2000, seed=1)
    out = tmp_path / "out"
    args = ["predict", images, "--model", tiny_onnx, "--format", "parquet", "--output", out, "--shard-size", "100",
            "--batch-size", "4", "--workers", "0"]
    before = kill_after_parts(args, out, parts=3, total=20)
    stat = {n: (out / n).stat() for n in os.listdir(out) if n.startswith("part-")}
    result = run_cnncli(*args)
    assert result.returncode == 1, result.stderr  # corrupt images among them
    err = " ".join(result.stderr.split())
    assert f"resuming: {before} of 20 parts" in err and f"{20 - before} parts in {out} ({before} already there" in err
    for name, st in stat.items():  # finished parts are not rewritten
        assert (out / name).stat().st_ino == st.st_ino and (out / name).stat().st_mtime_ns == st.st_mtime_ns
    names, rows = read_parts(out)
    assert names == [f"part-{i:06d}.parquet" for i in range(20)]
    assert set(rows) == {str(p) for p in paths}
    assert sum(r["error"] is not None for r in rows.values()) == len([i for i in range(2000) if i % 37 == 5])
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_other_job_in_the_output_folder_is_refused(run_cli, small_set, tiny_onnx, tmp_path):
    out = tmp_path / "out"
    first = run_cli("predict", small_set, "--model", tiny_onnx, "--format", "parquet", "--output", out,
                    "--shard-size", "100")
    assert first.code == 1 and len(read_parts(out)[0]) == 3
    for other in (["--top-k", "2"], ["--shard-size", "50"], ["--model", tiny_onnx, "--tta"]):
        result = run_cli("predict", small_set, "--model", tiny_onnx, "--format", "parquet", "--output", out,
                         "--shard-size", "100", *other)
        assert result.code == 2 and "holds the parts of another job" in result.err, result.err
        assert result.err.startswith("error:") and len(result.err.strip().splitlines()) == 1
    (out / "_cnncli_manifest.json").unlink()
    result = run_cli("predict", small_set, "--model", tiny_onnx, "--format", "parquet", "--output", out)
    assert result.code == 2 and "no cnncli manifest" in result.err


@pytest.mark.parametrize("args, message", [
    (["--format", "parquet"], "add --output FOLDER"),
    (["--ray", "--format", "jsonl"], "--ray writes parquet part files"),
    (["--format", "parquet", "--output", "{tmp}/o", "--ray", "127.0.0.1:{port}"], "cannot reach the Ray cluster"),
    (["--format", "parquet", "--output", "{tmp}/o", "--ray", "nohost.invalid:6379"], "cannot reach the Ray cluster"),
    (["--format", "parquet", "--output", "{tmp}/o", "--engine", "torch", "--ray"], "onnxruntime"),
])
def test_usage_errors_exit_2_in_one_sentence(run_cli, small_set, tiny_onnx, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, port=free_port()) for a in args]
    start = time.monotonic()
    result = run_cli("predict", small_set, "--model", tiny_onnx, *args)
    assert result.code == 2 and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and time.monotonic() - start < 30
    assert not (tmp_path / "o").exists()


def test_bytes_decoding_gives_the_file_pixels(small_set):
    """Objects are decoded from memory with the same code as files: identical pixels, identical errors."""
    from cnncli.core.errors import ImageError
    from cnncli.data.images import load_pixels, load_pixels_from_bytes
    from cnncli.models.card import Preprocessing

    pre = Preprocessing(input_size=(32, 32))
    for path in sorted(small_set.rglob("img*"))[:40]:
        try:
            expected = load_pixels(path, pre)
        except ImageError as exc:
            with pytest.raises(ImageError) as caught:
                load_pixels_from_bytes(path.read_bytes(), str(path), pre)
            assert str(caught.value) == str(exc)
            continue
        assert np.array_equal(load_pixels_from_bytes(path.read_bytes(), str(path), pre), expected)


def test_ray_takes_an_optional_address(tmp_path, monkeypatch):
    """`--ray` alone (last, or before an input or another option) is `--ray=` (RAY_ADDRESS, else a local Ray); a
    HOST:PORT after it joins; a word with a colon that is no path is taken as the address (and refused later)."""
    from cnncli.scale.uris import with_ray_address

    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd:name").mkdir()
    assert with_ray_address(["predict", "--ray", "imgs/", "-o", "p"]) == ["predict", "--ray=", "imgs/", "-o", "p"]
    assert with_ray_address(["predict", "imgs", "--ray"]) == ["predict", "imgs", "--ray="]
    assert with_ray_address(["predict", "imgs", "--ray", "--format", "parquet"])[2] == "--ray="
    assert with_ray_address(["predict", "--ray", "s3://b/in/"]) == ["predict", "--ray=", "s3://b/in/"]
    assert with_ray_address(["predict", "--ray", "odd:name"]) == ["predict", "--ray=", "odd:name"]  # it exists
    for address in ("10.0.0.5:6379", "ray://head:10001", "auto", "local", "[::1]:6379", "garbage::::"):
        assert with_ray_address(["predict", "imgs", "--ray", address]) == ["predict", "imgs", "--ray", address]


def test_ray_address_resolution_and_form():
    from cnncli.scale.ray_runner import _host_port, resolve_address

    assert resolve_address("local") == (None, "--ray")
    assert resolve_address("10.0.0.5:6379") == ("10.0.0.5:6379", "--ray")
    os.environ.pop("RAY_ADDRESS", None)
    assert resolve_address("") == (None, "RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = "head:6379"
    try:
        assert resolve_address("") == ("head:6379", "RAY_ADDRESS")
        assert resolve_address("local") == (None, "--ray")  # an explicit local Ray ignores RAY_ADDRESS
    finally:
        del os.environ["RAY_ADDRESS"]
    assert _host_port("ray://[::1]:10001") == ("::1", 10001) and _host_port("head:6379/") == ("head", 6379)
    for bad in ("garbage::::", "head:0", "head:70000", "head", ":6379", "a b:1"):
        assert _host_port(bad) is None, bad


@pytest.mark.parametrize("how, message", [
    ("env", "cannot reach the Ray cluster at 127.0.0.1:{port} (from RAY_ADDRESS"),
    ("garbage", "--ray 'garbage::::' is not a Ray address"),
])
def test_ray_addresses_are_checked_before_any_work(run_cli, small_set, tiny_onnx, tmp_path, monkeypatch, how,
                                                   message):
    """Issue 25 item 6: RAY_ADDRESS is honoured by a bare --ray (it used to start a local Ray and exit 0), and a
    malformed address is refused (it used to be read as an input path): exit 2 in seconds, nothing written."""
    port = free_port()
    if how == "env":
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        args = ["--ray"]
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        args = ["--ray", "garbage::::"]
    start = time.monotonic()
    result = run_cli("predict", small_set, "--model", tiny_onnx, "--format", "parquet", "-o", tmp_path / "o", *args)
    assert result.code == 2 and message.format(port=port) in " ".join(result.err.split()), result.err
    assert len(result.err.strip().splitlines()) == 1 and time.monotonic() - start < 20
    assert not (tmp_path / "o").exists()


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR_FRAME = re.compile(r"(\d+)/(\d+)\s.*?(-:--:--|\d+:\d\d:\d\d)")


def _bar_frames(terminal_output: str) -> list[tuple[int, str]]:
    """(images done, ETA text) of every frame the bar drew, in order, from what a terminal would have received."""
    text = ANSI_ESCAPE.sub("", terminal_output).replace("\r", "\n")
    return [(int(done), eta) for done, _, eta in BAR_FRAME.findall(text)]


def _seconds(eta: str) -> float:
    if eta == "-:--:--":
        return float("nan")
    hours, minutes, seconds = (int(part) for part in eta.split(":"))
    return hours * 3600 + minutes * 60 + seconds


@pytest.fixture
def terminal(monkeypatch):
    """The one console (cnncli.core.console.err_console, as cnncli.core.progress uses it) replaced by a terminal
    that writes into a string: the bar is drawn exactly as on a 120-column terminal."""
    import io

    from rich.console import Console

    import cnncli.core.progress as progress_module

    sink = io.StringIO()
    monkeypatch.setattr(progress_module, "err_console", Console(file=sink, force_terminal=True, width=120))
    return sink


def test_progress_bar_eta_is_unknown_then_estimated_then_counts_down(terminal):
    """ETA = images left / measured rate: unknown before there is a rate; 1 image in 0.5 s with 98 left is at least
    49 s; after 97 more in a moment, about a second; 0 when done. An elapsed clock or a missing column fails."""
    from cnncli.core.progress import progress_bar

    etas = []
    with progress_bar("predict", 100, fields={"rate": ""}) as bar:
        bar.refresh()
        etas.append(_bar_frames(terminal.getvalue())[-1])
        bar.advance(1)
        time.sleep(0.5)
        bar.advance(1)
        bar.refresh()
        etas.append(_bar_frames(terminal.getvalue())[-1])
        bar.advance(97)
        bar.refresh()
        etas.append(_bar_frames(terminal.getvalue())[-1])
        bar.advance(1)
    etas.append(_bar_frames(terminal.getvalue())[-1])  # the last frame, drawn as the bar stops
    (done0, eta0), (done1, eta1), (done2, eta2), (done3, eta3) = etas
    assert (done0, eta0) == (0, "-:--:--"), etas
    assert done1 == 2 and _seconds(eta1) >= 49, etas
    assert done2 == 99 and 1 <= _seconds(eta2) <= 2, etas
    assert (done3, eta3) == (100, "0:00:00"), etas


def test_job_progress_shows_done_rate_failures_and_eta(terminal):
    """The predict job's bar (JobProgress): done/total, img/s, failures and the ETA, in its last frame."""
    from cnncli.core.progress import JobProgress

    with JobProgress(20) as progress:
        started = time.monotonic()
        progress.advance(4)
        time.sleep(0.2)
        progress.advance(6, failed=2)
        between = time.monotonic() - started  # at least the time between the two advances rich measured
    frame = ANSI_ESCAPE.sub("", terminal.getvalue()).replace("\r", "\n").strip().splitlines()[-1]
    assert re.search(r"\b10/20\s+[\d.]+ img/s\s+2 failed\s+\d+:\d\d:\d\d", frame), frame
    eta = _seconds(_bar_frames(frame)[-1][1])
    assert 1 <= eta <= math.ceil(10 * between / 6), (frame, between)  # 10 left at 6 images per `between` s
    assert progress.images == 10 and progress.failed == 2
