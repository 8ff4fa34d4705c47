"""Shared by the test_scale* files: a folder of small real images (some corrupt), the tiny model as an ONNX file,
running cnncli in a subprocess, reading a parquet job folder back, and free loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CORRUPT_EVERY = 37  # every 37th image is a truncated or non-image file


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """A LeNet-5 with three texture classes (random weights, fixed seed) as the ONNX file cnncli's fast path caches
    (with its cnncli metadata): thousands of 32x32 images per second, so 2,000-image jobs stay quick."""
    import torch

    from cnncli.engines.cache import prepare_cached_onnx
    from cnncli.models.checkpoint import save_model
    from cnncli.models.registry import create_model

    torch.manual_seed(0)
    built = create_model("lenet5", classes=["brick", "grass", "gravel"])
    path = tmp_path_factory.mktemp("scale-model") / "lenet.safetensors"
    save_model(path, built.model, built.card)
    return prepare_cached_onnx(str(path), quiet=True)


@contextlib.contextmanager
def moto_s3(**server_env):
    """moto's S3 server (a real S3 API over HTTP) on a free 127.0.0.1 port, stopped afterwards; yields the
    environment that points AWS clients at it with dummy keys."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **server_env})
    endpoint = f"http://127.0.0.1:{port}"
    # a loopback server is asked directly: urllib's module-wide opener keeps the proxies of the first urlopen() in
    # this process (a test that sets a dead proxy would otherwise make every later wait here time out)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 180  # first start compiles moto and flask; slow on a loaded 2-core machine
        while True:
            try:
                direct.open(endpoint + "/moto-api/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        yield {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def moto_s3_environment(**server_env):
    """:func:`moto_s3` with its environment set in this process (``os.environ``) while it runs, and the previous
    values put back afterwards."""
    with moto_s3(**server_env) as env:
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def upload_folder(env: dict, bucket: str, folder: Path, prefix: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])
    s3.create_bucket(Bucket=bucket)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=f"{prefix}{path.relative_to(folder)}", Body=path.read_bytes())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` small images (crops of scikit-image's textures, with noise, JPEG and PNG, in sub-folders);
    every CORRUPT_EVERY-th one is corrupt. Returns their paths."""
    from skimage import data

    rng = np.random.default_rng(seed)
    textures = [data.brick(), data.grass(), data.gravel()]
    paths = []
    for i in range(count):
        sub = folder / f"d{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        ext = ".png" if i % 3 == 0 else ".jpg"
        path = sub / f"img{i:05d}{ext}"
        if i % CORRUPT_EVERY == 5:
            path.write_bytes(b"not an image" if i % 2 else b"\xff\xd8\xff\xe0" + bytes(40))
        else:
            tex = textures[i % 3]
            y, x = rng.integers(0, tex.shape[0] - 40), rng.integers(0, tex.shape[1] - 40)
            crop = tex[y : y + 40, x : x + 40].astype(np.int16) + rng.integers(-20, 20, (40, 40))
            Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "cnncli", *[str(a) for a in args]]


def run_cnncli(*args, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def read_parts(folder) -> tuple[list[str], dict[str, dict]]:
    """(every part file name, rows by path) of a local job folder; asserts no path appears twice."""
    import pyarrow.parquet as pq

    names = sorted(n for n in os.listdir(folder) if n.startswith("part-"))
    rows: dict[str, dict] = {}
    for name in names:
        for row in pq.read_table(Path(folder) / name).to_pylist():
            assert row["path"] not in rows, f"{row['path']} appears twice"
            rows[row["path"]] = row
    return names, rows


def jsonl_rows(text: str) -> dict[str, dict]:
    import json

    return {r["path"]: r for r in map(json.loads, text.splitlines())}


def assert_rows_match(parts: dict[str, dict], local: dict[str, dict], key=lambda p: p) -> None:
    """Parquet rows equal local predict's rows: same error-or-not, same top-1, probabilities within 1e-5."""
    assert {key(p) for p in parts} == set(local)
    for path, row in parts.items():
        ref = local[key(path)]
        if "error" in ref:
            assert row["error"] and row["labels"] is None, path
            continue
        assert row["error"] is None, row["error"]
        assert row["indices"][0] == ref["top"][0]["index"], path
        assert row["labels"] == [t["label"] for t in ref["top"]]
        assert np.allclose(row["probs"], [t["prob"] for t in ref["top"]], atol=1e-5), path


def kill_after_parts(args: list, folder: Path, parts: int, total: int, env: dict | None = None,
                     timeout: float = 180) -> int:
    """Start cnncli, SIGKILL it as soon as ``parts`` part files exist; returns how many existed then.
    Fails the test if the job finished before it could be killed."""
    proc = subprocess.Popen(cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            done = [n for n in os.listdir(folder) if n.startswith("part-")] if folder.is_dir() else []
            if len(done) >= parts:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                break
            if proc.poll() is not None:
                raise AssertionError(f"cnncli ended (exit {proc.returncode}) before it could be killed: "
                                     f"{proc.stderr.read()[-2000:]}")
            time.sleep(0.02)
        else:
            raise AssertionError("no parts appeared in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()
    found = len([n for n in os.listdir(folder) if n.startswith("part-")])
    assert found < total, "the job finished before the kill: nothing to resume"
    return found


def _stat(pid: int) -> tuple[str, int, int, str] | None:
    """(state, parent id, start time, name) of a live process from /proc, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            head, _, rest = fh.read().rpartition(b")")
    except OSError:
        return None
    fields = rest.split()
    return fields[0].decode(), int(fields[1]), int(fields[19]), head.split(b"(", 1)[1].decode(errors="replace")


def descendants(pid: int) -> dict[tuple[int, int], str]:
    """The live descendants of ``pid``: (id, start time) -> name."""
    table = {int(n): s for n in os.listdir("/proc") if n.isdigit() and (s := _stat(int(n))) is not None}
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (_, ppid, started, name) in table.items():
            if ppid == parent:
                found[(child, started)] = name
                todo.append(child)
    return found


def still_running(process: tuple[int, int]) -> bool:
    """Whether the process (id, start time) is alive and not a zombie (the same process, not a reused id)."""
    now = _stat(process[0])
    return now is not None and now[2] == process[1] and now[0] != "Z"
