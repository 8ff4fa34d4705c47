"""Issue 25 (items 7 and 9): every output location is checked before the work, by one check
(cnncli.core.paths.check_output_location): a place where no file can be made (/proc, /sys), a file where a folder
must be (``image.jpg/x.jsonl``, a file named ``RUN/tensorboard``), a folder where a file must be. Each refusal is
one sentence naming the user's path (never a temporary file), exit 2, before the model is loaded. And an
unwritable cache (CNNCLI_CACHE=/proc/x, or a file) falls back to a temporary cache for the run, with a warning."""

# ruff: noqa: F811 - the tiny_onnx fixture imported from scale_helpers is used by name as an argument, which
# pyflakes reads as a redefinition (as for tests/test_scale*.py in pyproject.toml)
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from scale_helpers import (
    jsonl_rows,
    tiny_onnx,  # noqa: F401 - a pytest fixture, used by name as an argument
    write_images,
)
from train_data import write_digits


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("out-loc")
    write_images(folder, 4)
    return folder


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "image.jpg"
    path.write_bytes(b"not a folder")
    return path


def _refused(result, path) -> None:
    err = " ".join(result.err.split())
    assert result.code == 2, result.err
    assert err.startswith("error: cannot write") and str(path) in err and ".tmp" not in err, result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_predict_output_in_proc_or_under_a_file_is_refused_before_the_work(run_cli, images, tiny_onnx, a_file, fmt):
    for target in ("/proc/x.jsonl", a_file / "x.jsonl"):
        result = run_cli("predict", images, "--model", tiny_onnx, "-f", fmt, "-o", target)
        _refused(result, target)
        assert "predictions" not in result.err and result.out == ""  # nothing was predicted
    result = run_cli("predict", images, "--model", tiny_onnx, "-f", fmt, "-o", a_file.parent)
    if fmt == "parquet":  # a folder is what parquet parts need
        assert result.code == 0 and any(n.startswith("part-") for n in os.listdir(a_file.parent)), result.err
    else:
        _refused(result, a_file.parent)
        assert "is a folder" in result.err
    assert not [n for n in os.listdir(a_file.parent) if n.startswith(".")]  # no probe file left behind


def test_a_good_output_still_works_and_leaves_no_probe(run_cli, images, tiny_onnx, tmp_path):
    target = tmp_path / "new" / "p.jsonl"
    result = run_cli("predict", images, "--model", tiny_onnx, "-f", "jsonl", "-o", target)
    assert result.code == 0, result.err
    assert len(jsonl_rows(target.read_text())) == 4 and os.listdir(target.parent) == ["p.jsonl"]
    assert os.listdir(tmp_path) == ["new"]


def test_export_evaluate_inspect_refuse_unwritable_outputs_before_the_work(run_cli, tiny_onnx, a_file, tmp_path):
    _refused(run_cli("export", "lenet5", "--weights", "none", "-o", "/proc/lenet.onnx"), "/proc/lenet.onnx")
    data = write_digits(tmp_path / "digits", per_class=2)
    result = run_cli("evaluate", tiny_onnx, data, "--plots", a_file)
    _refused(result, a_file)
    assert "not a folder" in result.err
    result = run_cli("inspect", "lenet5", "--what", "filters", "-o", "/sys/pictures")
    _refused(result, "/sys/pictures")
    assert not Path("/sys/pictures").exists()


def test_train_refuses_an_unwritable_run_folder_and_a_file_as_its_tensorboard_folder(run_cli, tmp_path, a_file):
    data = write_digits(tmp_path / "digits", per_class=2)
    common = ["--arch", "lenet5", "--grayscale", "--image-size", "32", "--epochs", "1", "--weights", "none"]
    _refused(run_cli("train", data, *common, "-o", a_file / "run"), a_file / "run")
    run = tmp_path / "run"
    run.mkdir()
    (run / "tensorboard").write_text("a file where the event files should go")
    result = run_cli("train", data, *common, "-o", run, "--log", "tensorboard")
    _refused(result, run / "tensorboard")
    assert sorted(os.listdir(run)) == ["tensorboard"]  # nothing trained, nothing written


@pytest.mark.parametrize("cache", ["/proc/x", pytest.param("file", marks=pytest.mark.slow)])  # an export each
def test_an_unwritable_cache_falls_back_to_a_temporary_one(tmp_path, a_file, images, cache):
    from cnncli.models.checkpoint import save_model
    from cnncli.models.registry import create_model

    built = create_model("lenet5", classes=["brick", "grass", "gravel"])
    model = tmp_path / "lenet.safetensors"
    save_model(model, built.model, built.card)
    location = str(a_file) if cache == "file" else cache
    result = subprocess.run([sys.executable, "-m", "cnncli", "predict", str(images), "--model", str(model), "-f",
                             "jsonl"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CNNCLI_CACHE": location})
    assert result.returncode == 0, result.stderr
    assert len(jsonl_rows(result.stdout)) == 4
    err = "".join(result.stderr.split())  # rich wraps long paths anywhere
    assert f"CNNCLI_CACHE={location}cannotbewritten" in err and "--enginetorch" in err, result.stderr
    made = re.search(r"fastpathreadyin[\d.]+s:(\S+?\.onnx)", err)
    assert made, result.stderr  # the export went to the temporary cache ...
    temporary = Path(made.group(1)).parent.parent
    assert temporary.name.startswith(".cnncli-work-") and not temporary.exists()  # ... removed at exit
    assert a_file.read_bytes() == b"not a folder"
