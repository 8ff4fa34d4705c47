"""Reliability, files (issue 14 and issue 13's "files get normal permissions"): what cnncli writes and what it
opens. Each test names the item it covers; each fails on the main before this change."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

CLI = [sys.executable, "-m", "cnncli"]


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield 0o664
    os.umask(old)


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_written_files_respect_the_umask(run_cli, photos, tiny_model_file, tmp_path, monkeypatch, umask_002):
    """Issue 13 "files cnncli writes get normal permissions": the atomic writer left them 0600 (mkstemp).
    Covers predict's output, the ONNX cache (made by the exporter's writer) and a model file; fails on the old
    main."""
    from cnncli.models.checkpoint import save_model
    from cnncli.models.registry import create_model

    monkeypatch.setenv("CNNCLI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "preds.json"
    result = run_cli("predict", photos["chelsea"], "--model", tiny_model_file, "--engine", "onnx", "-f", "json",
                     "-o", out)
    assert result.code == 0, result.err
    cached = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert cached and out.is_file()
    model_file = save_model(tmp_path / "m.safetensors", create_model("simplecnn", classes=["a", "b"]).model,
                            create_model("simplecnn", classes=["a", "b"]).card)
    for path in (out, *cached, model_file):
        assert mode_of(path) == umask_002, (path, oct(mode_of(path)))


def test_predict_output_creates_missing_folders_and_replaces_atomically(run_cli, photos, tiny_model_file, tmp_path):
    """Issue 14 "predict --output: a missing parent folder is created" and "write to a temporary file beside it
    and rename at the end": on the old main a missing folder was a raw FileNotFoundError (exit 1) and a failed run
    left a truncated file."""
    out = tmp_path / "new" / "deeper" / "preds.jsonl"
    result = run_cli("predict", photos["chelsea"], "--model", tiny_model_file, "-f", "jsonl", "-o", out)
    assert result.code == 0, result.err
    assert out.read_text().count("\n") == 1
    # a run that stops with an error half-way leaves the previous file as it was, and no temporary file
    from cnncli.predict import run as predict_module

    previous = out.read_bytes()
    original = predict_module.top_k

    def explode(*args, **kwargs):
        raise RuntimeError("simulated failure after the first image")

    try:
        predict_module.top_k = explode
        result = run_cli("predict", photos["chelsea"], photos["coffee"], "--model", tiny_model_file, "-f", "jsonl",
                         "-o", out, "--engine", "torch")
    finally:
        predict_module.top_k = original
    assert result.code == 1 and "simulated failure" in result.err
    assert out.read_bytes() == previous
    assert [p.name for p in out.parent.iterdir()] == ["preds.jsonl"]


def test_predict_killed_mid_run_keeps_the_previous_output(photos, tiny_model_file, tmp_path):
    """Issue 14 "predict --output FILE killed destroys the previous FILE and leaves half JSON": SIGKILL while the
    jsonl stream is being written; the previous FILE must be intact. Fails on the old main (FILE truncated)."""
    folder = tmp_path / "many"
    folder.mkdir()
    data = photos["chelsea"].read_bytes()
    for i in range(400):
        (folder / f"img_{i:03d}.jpg").write_bytes(data)
    out = tmp_path / "preds.jsonl"
    out.write_text('{"previous": "result"}\n')
    proc = subprocess.Popen([*CLI, "predict", str(folder), "--model", str(tiny_model_file), "--engine", "torch",
                             "-f", "jsonl", "-o", str(out), "--batch-size", "1", "--workers", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            temporaries = list(tmp_path.glob(".preds.jsonl.*.tmp"))
            if temporaries and temporaries[0].stat().st_size > 0:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "predict finished before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert out.read_text() == '{"previous": "result"}\n'


@pytest.fixture
def fifo_dataset(tmp_path):
    root = tmp_path / "data"
    for name, shade in (("dark", 40), ("light", 210)):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (16, 16), shade + i).save(root / name / f"{i}.png")
    os.mkfifo(root / "dark" / "pipe.png")
    return root


def unblock(fifo: Path) -> None:
    """Let a reader stuck on ``fifo`` go (opening it read-write never blocks); closing it gives the reader EOF."""
    os.close(os.open(fifo, os.O_RDWR))


def test_fifo_in_a_dataset_does_not_hang_inspect_or_train(fifo_dataset, tmp_path, capsys):
    """Issue 14 "a FIFO in a dataset makes inspect DATA hang": only regular files are opened. inspect reports the
    FIFO (exit 1) and train skips it. On the old main both block for ever: they run in a thread with a time bound,
    and the FIFO is unblocked afterwards so nothing is left hanging."""
    import threading

    from cnncli.cli.app import main

    codes: dict[str, int] = {}

    def run(name: str, args: list[str]) -> None:
        try:
            main(args)
            codes[name] = 0
        except SystemExit as exc:
            codes[name] = exc.code

    pipe = fifo_dataset / "dark" / "pipe.png"
    jobs = {"inspect": ["inspect", str(fifo_dataset)],
            "train": ["train", str(fifo_dataset), "--arch", "lenet5", "--grayscale", "--epochs", "1", "--val-split",
                      "0.5", "--out", str(tmp_path / "run"), "--quiet", "--workers", "0"]}
    try:
        for name, args in jobs.items():
            thread = threading.Thread(target=run, args=(name, args), daemon=True)
            thread.start()
            thread.join(90)
            assert not thread.is_alive(), f"{name} hangs on a FIFO"
    finally:
        unblock(pipe)
    err = "".join(capsys.readouterr().err.split())  # the console folds long lines
    assert codes == {"inspect": 1, "train": 0}, err
    assert "pipe.png" in err and "FIFO" in err and "Traceback" not in err


SPECIAL_FILES_SCRIPT = """
import contextlib, io, json, sys
from cnncli.cli.app import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append([args, code, err.getvalue()])
print(json.dumps(results))
"""


def test_special_files_as_weights_or_model_are_refused_in_one_sentence(photos, tmp_path):
    """Issue 14 "--weights fifo.pt blocks forever; --weights /dev/zero spins forever": FIFOs and devices as
    --weights or as the model are refused by stat before open, in one sentence, in predict, inspect and evaluate.
    One bounded subprocess runs every case (on the old main it blocks and the timeout fails the test)."""
    import json

    fifo_weights, fifo_model = tmp_path / "weights.pt", tmp_path / "model.safetensors"
    os.mkfifo(fifo_weights)
    os.mkfifo(fifo_model)
    image = str(photos["chelsea"])
    cases = []
    for weights, model in ((fifo_weights, fifo_model), (Path("/dev/zero"), Path("/dev/zero"))):
        cases += [["predict", image, "--model", "resnet18", "--weights", str(weights)],
                  ["predict", image, "--model", str(model)],
                  ["evaluate", str(model), str(tmp_path)]]
    cases.append(["inspect", str(fifo_model)])
    try:
        proc = subprocess.run([sys.executable, "-c", SPECIAL_FILES_SCRIPT, json.dumps(cases)], capture_output=True,
                              text=True, timeout=120)
    finally:
        unblock(fifo_weights)
        unblock(fifo_model)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for args, code, err in json.loads(proc.stdout):
        lines = err.strip().splitlines()
        assert code in (1, 2) and len(lines) == 1 and "not a regular file" in lines[0], (args, code, err)


def test_missing_model_file_exits_2(run_cli, photos, tmp_path):
    """Issue 14 "--model missing.safetensors exits 2 as the README promises (today 1)"."""
    for name in ("missing.safetensors", "missing.onnx"):
        result = run_cli("predict", photos["chelsea"], "--model", tmp_path / name)
        assert result.code == 2 and result.err.count("\n") == 1 and "does not exist" in result.err


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` 1-bit pixels (its data is truncated)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_max_pixels_really_raises_the_limit_and_a_malformed_value_is_one_usage_error(run_cli, tmp_path, monkeypatch,
                                                                                    tiny_model_file):
    """Issue 14 "CNNCLI_MAX_PIXELS must raise the limit (today PIL's own limit still refuses); a malformed value is
    one usage error". A header claiming 196 million pixels (over PIL's own 179 million) with
    CNNCLI_MAX_PIXELS=500000000 must get past the size check (it then fails as truncated); the old main still
    called it a decompression bomb, and took 'abc' as an error per image."""
    from cnncli.core.errors import ImageError
    from cnncli.data.images import load_image

    big = png_claiming(tmp_path / "big.png", 14000, 14000)
    monkeypatch.setenv("CNNCLI_MAX_PIXELS", "500000000")
    with pytest.raises(ImageError) as info:
        load_image(big)
    assert "bomb" not in str(info.value) and "truncated" in str(info.value)
    monkeypatch.setenv("CNNCLI_MAX_PIXELS", "1000")
    with pytest.raises(ImageError, match="CNNCLI_MAX_PIXELS"):
        load_image(big)
    monkeypatch.setenv("CNNCLI_MAX_PIXELS", "abc")
    result = run_cli("predict", big, big, "--model", tiny_model_file)
    assert result.code == 2 and result.err.count("\n") == 1 and "CNNCLI_MAX_PIXELS" in result.err


# A real full disk: small tmpfs folders mounted in a private mount namespace (`unshare --mount`, as root, or with
# a user namespace otherwise), so nothing is mounted for the rest of the machine and the mounts vanish with the
# process. Inside it cnncli exports into each folder and the folder's listing is taken before the namespace ends.
FULL_DISK_EXPORTS = r"""
import contextlib, io, json, os, sys
from cnncli.cli.app import main
model, results = sys.argv[1], {}
for folder in sys.argv[2:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(["export", model, "-o", os.path.join(folder, "tiny.onnx"), "--force"])
            code = 0
        except SystemExit as exc:
            code = exc.code
    with open(os.path.join(folder, "tiny.onnx")) as previous:
        results[folder] = {"code": code, "err": err.getvalue(), "listing": sorted(os.listdir(folder)),
                           "previous": previous.read()}
print(json.dumps(results))
"""


def mount_namespace_prefix() -> list[str] | None:
    """The command prefix that runs a command in a private mount namespace where it may mount a tmpfs, or None
    where this machine allows neither (no CAP_SYS_ADMIN and no unprivileged user namespaces)."""
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        try:
            probe = subprocess.run([*prefix, "sh", "-c", 'd=$(mktemp -d) && mount -t tmpfs -o size=8k tmpfs "$d"'],
                                   capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if probe.returncode == 0:
            return prefix
    return None


def test_export_on_a_full_disk_says_so_and_leaves_the_folder_as_it_was(run_cli, tiny_model_file, tmp_path):
    """Issue 14 "an export that fails for lack of disk space says so, not 'try another --opset'", on real full
    file systems: one too small for the export's work files, one that holds the work files but not the final
    copy (the atomic writer's temporary file fills it). Each time: exit 1, one sentence about space, the previous
    tiny.onnx unchanged, and nothing else in the folder (no temporary file, no work folder)."""
    prefix = mount_namespace_prefix()
    if prefix is None:
        pytest.skip("needs a private mount namespace (unshare --mount) to mount a small tmpfs")
    reference = tmp_path / "reference.onnx"
    assert run_cli("export", tiny_model_file, "-o", reference).code == 0
    size = reference.stat().st_size
    work_too_big, final_too_big = tmp_path / "tiny-fs", tmp_path / "fs-for-work-files-only"
    mounts = {work_too_big: 16 * 1024, final_too_big: size + size // 2}  # the work copy fits, a second does not
    script = " && ".join([f'mount -t tmpfs -o size={bytes_} tmpfs "{folder}" && printf previous > "{folder}/tiny.onnx"'
                          for folder, bytes_ in mounts.items()] + ['exec "$@"'])
    for folder in mounts:
        folder.mkdir()
    done = subprocess.run([*prefix, "sh", "-c", script, "sh", sys.executable, "-c", FULL_DISK_EXPORTS,
                           str(tiny_model_file), *map(str, mounts)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, COLUMNS="400"))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for folder in mounts:
        result = results[str(folder)]
        errors = [line for line in result["err"].splitlines() if line.startswith("error: ")]
        assert result["code"] == 1 and len(errors) == 1, result
        assert "no space left on the device" in errors[0] and "opset" not in result["err"], result
        assert result["previous"] == "previous", result
        assert result["listing"] == ["tiny.onnx"], result  # a temporary .tiny.onnx.<pid>-<hex>.tmp would show here
    assert all(not list(folder.iterdir()) for folder in mounts)  # the mounts were private: outside, still empty


def test_writing_a_stream_to_a_full_device_says_so(run_cli, photos, tiny_model_file):
    """`predict -o /dev/full` (a stream written in place, not through a temporary file): the kernel's ENOSPC is
    the full-disk sentence, exit 1, not an unexpected OSError."""
    result = run_cli("predict", photos["chelsea"], "--model", tiny_model_file, "-f", "jsonl", "-o", "/dev/full")
    assert result.code == 1, result
    errors = [line for line in result.err.splitlines() if line.startswith("error")]  # after the fast path's notes
    assert errors == ["error: no space left on the device while writing /dev/full; free some space or write to "
                      "another folder (the previous file, if any, is unchanged)."], result.err
    assert result.err.strip().endswith(errors[0]) and "Errno" not in result.err
