"""Issue 25 (items 5, 7, 8) against a real S3 API (moto's server on 127.0.0.1): object keys are literal where they
name an object (``in/[bold]y.jpg`` is that object, not a pattern), an empty or missing prefix is "no images
found" (exit 2, nothing written), and an --output URI is checked before the work: a missing bucket, a prefix
where a file is meant and an object where the parts' prefix is meant are refused in one sentence, exit 2."""

from __future__ import annotations

import time

import pytest
from scale_helpers import (
    jsonl_rows,
    moto_s3,
    tiny_onnx,  # noqa: F401 - a pytest fixture, used by name as an argument
    write_images,
)

BUCKET = "odd-keys"
KEYS = ["in/[brackets].jpg", "in/[bold]y.jpg", "in/plain.jpg"]


@pytest.fixture(scope="module")
def s3_server():
    with moto_s3() as env:
        yield env


@pytest.fixture(scope="module")
def bucket(s3_server, tmp_path_factory):
    import boto3

    images = write_images(tmp_path_factory.mktemp("odd"), 5)  # index 5 would be corrupt
    s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=BUCKET)
    for key, image in zip(KEYS, [images[1], images[2], images[4]]):  # three readable images
        s3.put_object(Bucket=BUCKET, Key=key, Body=image.read_bytes())
    return s3


@pytest.fixture
def s3_env(s3_server, bucket, monkeypatch):
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return bucket


def _keys(s3) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_keys_with_brackets_are_read_literally(run_cli, s3_env, tiny_onnx):
    listed = run_cli("predict", f"s3://{BUCKET}/in/", "--model", tiny_onnx, "-f", "jsonl")
    assert listed.code == 0, listed.err
    rows = jsonl_rows(listed.out)
    assert set(rows) == {f"s3://{BUCKET}/{k}" for k in KEYS} and all("error" not in r for r in rows.values())

    for key in KEYS[:2]:  # the key itself, given directly: that object, not a character class
        direct = run_cli("predict", f"s3://{BUCKET}/{key}", "--model", tiny_onnx, "-f", "jsonl")
        assert direct.code == 0, direct.err
        assert list(jsonl_rows(direct.out)) == [f"s3://{BUCKET}/{key}"]

    pattern = run_cli("predict", f"s3://{BUCKET}/in/*.jpg", "--model", tiny_onnx, "-f", "jsonl")  # a real pattern
    assert pattern.code == 0 and len(jsonl_rows(pattern.out)) == 3


def test_empty_prefix_and_missing_object_exit_2_before_any_work(run_cli, s3_env, tiny_onnx, tmp_path):
    for args in (["-f", "jsonl"], ["-f", "parquet", "-o", tmp_path / "out"]):
        result = run_cli("predict", f"s3://{BUCKET}/empty/", "--model", tiny_onnx, *args)
        assert result.code == 2 and "no images found in s3://odd-keys/empty/" in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1 and result.out == ""
    assert not (tmp_path / "out").exists()
    missing = run_cli("predict", f"s3://{BUCKET}/in/nope.jpg", "--model", tiny_onnx, "-f", "jsonl")
    assert missing.code == 2 and "no such object: s3://odd-keys/in/nope.jpg" in missing.err, missing.err
    beside = run_cli("predict", f"s3://{BUCKET}/in/nope.jpg", f"s3://{BUCKET}/in/plain.jpg", "--model", tiny_onnx,
                     "-f", "jsonl")  # beside an object that exists, a missing one is a row with its error
    assert beside.code == 1 and "error" in jsonl_rows(beside.out)[f"s3://{BUCKET}/in/nope.jpg"]


@pytest.mark.parametrize("fmt, output, message", [
    ("jsonl", "s3://no-such-bucket/p.jsonl", "does not exist"),
    ("jsonl", f"s3://{BUCKET}/same/", "names a prefix (a folder), not an object"),
    ("csv", f"s3://{BUCKET}/in", "is a prefix holding objects"),
    ("parquet", f"s3://{BUCKET}/in/plain.jpg", "is an object, not a prefix"),
])
def test_output_uris_are_checked_before_the_work(run_cli, s3_env, tiny_onnx, fmt, output, message):
    before = _keys(s3_env)
    start = time.monotonic()
    result = run_cli("predict", f"s3://{BUCKET}/in/", "--model", tiny_onnx, "-f", fmt, "-o", output)
    assert result.code == 2 and message in result.err and output in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and "wrote" not in result.err and time.monotonic() - start < 30
    assert _keys(s3_env) == before  # nothing written, not even the probe


def test_a_good_output_uri_is_written_and_leaves_no_probe(run_cli, s3_env, tiny_onnx):
    result = run_cli("predict", f"s3://{BUCKET}/in/", "--model", tiny_onnx, "-f", "jsonl",
                     "-o", f"s3://{BUCKET}/results/p.jsonl")
    assert result.code == 0, result.err
    assert [k for k in _keys(s3_env) if k.startswith("results/")] == ["results/p.jsonl"]
    body = s3_env.get_object(Bucket=BUCKET, Key="results/p.jsonl")["Body"].read().decode()
    assert len(jsonl_rows(body)) == 3


def test_local_names_with_brackets_are_literal(run_cli, tiny_onnx, tmp_path):
    """The same rule for local files, on the plain path and at scale: an existing name is that file."""
    images = write_images(tmp_path / "src", 3)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, image in zip(["[bold]y.jpg", "[brackets].jpg"], images[1:3]):
        (folder / name).write_bytes(image.read_bytes())
    for extra in ([], ["-o", tmp_path / "p.jsonl"], ["-f", "parquet", "-o", tmp_path / "parts"]):
        result = run_cli("predict", folder / "[bold]y.jpg", "--model", tiny_onnx, "-f", "jsonl", *extra)
        assert result.code == 0, result.err
    assert list(jsonl_rows((tmp_path / "p.jsonl").read_text())) == [str(folder / "[bold]y.jpg")]
