"""The default CPU engine: PyTorch models run on onnxruntime from a cached, verified export; the cached hot
path never imports torch; the cache survives deletion, truncation and concurrent preparation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnncli.data.images import load_and_preprocess
from cnncli.engines.base import open_engine
from cnncli.engines.cache import cached_path, calibration_images, files_fingerprint, prepare_cached_onnx
from cnncli.engines.onnx_engine import OnnxEngine
from cnncli.engines.torch_engine import TorchEngine


def test_auto_engine_on_cpu_is_onnxruntime_from_the_cache(tiny_model_file, photos):
    engine = open_engine(str(tiny_model_file), device="cpu")
    assert isinstance(engine, OnnxEngine)
    path = cached_path(str(tiny_model_file), None)
    assert engine.path == path and path.is_file()
    assert path.is_relative_to(Path(os.environ["CNNCLI_CACHE"]))
    torch_engine = open_engine(str(tiny_model_file), device="cpu", engine="torch")
    assert isinstance(torch_engine, TorchEngine)
    x = np.stack([load_and_preprocess(p, engine.card.preprocessing) for p in photos.values()])
    assert np.abs(engine.predict_proba(x) - torch_engine.predict_proba(x)).max() < 1e-4


def test_cache_key_follows_the_model_content(tiny_model_file, tmp_path):
    copy = tmp_path / "tiny.safetensors"
    copy.write_bytes(tiny_model_file.read_bytes())
    assert cached_path(str(copy), None) == cached_path(str(tiny_model_file), None)  # same bytes, same entry
    import torch

    from cnncli.models.checkpoint import load_model, save_model

    model, card = load_model(copy)
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    save_model(copy, model, card)
    assert cached_path(str(copy), None) != cached_path(str(tiny_model_file), None)
    assert cached_path(str(copy), None, precision="int8") != cached_path(str(copy), None)


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_damaged_cache_entry_is_made_again(tiny_model_file, photos, damage):
    path = prepare_cached_onnx(str(tiny_model_file), quiet=True)
    good = path.read_bytes()
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(good[: len(good) // 3])
    engine = open_engine(str(tiny_model_file), device="cpu")
    assert path.read_bytes() == good or len(path.read_bytes()) > len(good) // 2
    x = load_and_preprocess(photos["chelsea"], engine.card.preprocessing)[None]
    assert engine.predict_proba(x).shape == (1, 3)
    OnnxEngine(path, device="cpu", verbose=False)  # loads cleanly


def test_concurrent_preparation_does_not_corrupt_the_cache(tmp_path, tiny_model_file, photos):
    cache = tmp_path / "cache"
    env = {**os.environ, "CNNCLI_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "cnncli", "predict", str(photos["chelsea"]), "--model", str(tiny_model_file),
           "--format", "json", "--device", "cpu"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    results = [json.loads(o[0])[0]["top"][0] for o in outs]
    assert results[0]["index"] == results[1]["index"]
    entries = list((cache / "onnx").glob("*.onnx"))
    assert len(entries) == 1 and not list((cache / "onnx").glob("*.tmp"))
    OnnxEngine(entries[0], device="cpu", verbose=False)
    preparing = sum("preparing the fast path" in o[1] for o in outs)
    assert preparing == 1  # the second process waited for the first one's export instead of redoing it


def test_cached_hot_path_does_not_import_torch(tiny_model_file, photos):
    """Nor any other heavy package (issue 15 item 2 keeps the cold start under 0.5 s: OpenVINO alone costs 0.3-0.6 s,
    and serve/scale/tracking extras must stay out of the one-image path)."""
    prepare_cached_onnx(str(tiny_model_file), quiet=True)
    code = (
        "import sys\nfrom cnncli.cli.app import main\n"
        f"try:\n    main(['predict', {str(photos['chelsea'])!r}, '--model', {str(tiny_model_file)!r}, '-f', 'json'])\n"
        "except SystemExit as e:\n    code = e.code\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'timm', 'onnx', 'openvino', 'matplotlib', 'scipy', "
        "'fastapi',\n"
        "               'uvicorn', 'pyarrow', 'fsspec', 'ray') if m in sys.modules)\n"
        "print('HEAVY', heavy, 'EXIT', code, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "HEAVY [] EXIT 0" in done.stderr, done.stderr
    assert json.loads(done.stdout)[0]["top"][0]["label"] in {"brick", "grass", "gravel"}


def test_torch_and_onnx_engines_agree_on_the_default_model(run_cli, photos):
    """Acceptance: same top-1 for every image, probabilities within 1e-4, engine torch vs engine onnx."""
    args = ["predict", *photos.values(), "--format", "json", "--device", "cpu", "-k", "5"]
    by_engine = {}
    for engine in ("torch", "onnx"):
        result = run_cli(*args, "--engine", engine)
        assert result.code == 0, result.err
        by_engine[engine] = json.loads(result.out)
    for t, o in zip(by_engine["torch"], by_engine["onnx"]):
        assert t["path"] == o["path"] and t["top"][0]["index"] == o["top"][0]["index"]
        for a, b in zip(t["top"], o["top"]):
            assert a["index"] == b["index"] and abs(a["prob"] - b["prob"]) < 1e-4


def test_engine_option_errors(run_cli, photos, tiny_model_file):
    result = run_cli("predict", photos["chelsea"], "--engine", "tensorrt")
    assert result.code == 2 and "unknown --engine" in result.err
    result = run_cli("predict", photos["chelsea"], "--model", tiny_model_file, "--precision", "int8")
    assert result.code == 2 and "records none" in result.err and "--calib" in result.err
    result = run_cli("predict", photos["chelsea"], "--model", tiny_model_file, "--precision", "int8",
                     "--calib", photos["chelsea"])
    assert result.code == 2 and "is not a folder of images" in result.err and "Traceback" not in result.err
    empty = tiny_model_file.parent / "empty_calib"
    empty.mkdir(exist_ok=True)
    result = run_cli("predict", photos["chelsea"], "--model", tiny_model_file, "--precision", "int8", "--calib", empty)
    assert result.code == 2 and "holds no image files" in result.err and "Traceback" not in result.err
    result = run_cli("predict", photos["chelsea"], "--model", "lenet5", "--weights", "none", "--engine", "onnx")
    assert result.code == 2 and "random weights" in result.err


def test_int8_precision_uses_a_calibrated_cached_export(run_cli, tiny_model_file, photos, calib_crops):
    calib = calib_crops
    result = run_cli("predict", photos["chelsea"], "--model", tiny_model_file, "--precision", "int8",
                     "--calib", calib, "--format", "json", "--device", "cpu")
    assert result.code == 0, result.err
    assert "int8 agrees with fp32 on top-1" in result.err
    int8_entry = cached_path(str(tiny_model_file), None, "int8", files_fingerprint(calibration_images(None, calib)))
    assert int8_entry.is_file() and int8_entry != cached_path(str(tiny_model_file), None)
    top = json.loads(result.out)[0]["top"]
    assert top[0]["label"] in {"brick", "grass", "gravel"}


def test_int8_calibrates_on_the_set_a_trained_model_file_records(run_cli, photos, tmp_path):
    """train records a calibration set (training images, every class) in the model file; --precision int8 then
    needs no --calib, and says so clearly once those images are gone."""
    import shutil

    from train_data import write_textures

    from cnncli.models.checkpoint import read_card
    from cnncli.train.config import TrainConfig
    from cnncli.train.loop import run_training

    data = write_textures(tmp_path / "textures", per_class=6)
    result = run_training(TrainConfig(data=str(data), arch="simplecnn", epochs=1, batch_size=8, image_size=64,
                                      out=str(tmp_path / "run"), quiet=True, workers=0))
    model = result.out_dir / "best.safetensors"
    record = read_card(model).training["calibration"]
    files = calibration_images(str(model), None)
    assert len(files) == len(record["files"]) > 0 and all(f.is_file() for f in files)
    assert {Path(f).parent.name for f in record["files"]} == {"brick", "grass", "gravel"}

    ran = run_cli("predict", photos["chelsea"], "--model", model, "--precision", "int8", "--format", "json",
                  "--device", "cpu")
    assert ran.code == 0, ran.err
    assert f"calibrated on {len(files)} images" in ran.err
    assert cached_path(str(model), None, "int8", files_fingerprint(files)).is_file()
    exported = run_cli("export", model, "--int8", "static", "-o", tmp_path / "trained.int8.onnx")
    assert exported.code == 0, exported.err
    assert (tmp_path / "trained.int8.onnx").is_file()
    # issue 15 item 4: what int8 costs on the model's own held-out images, as the field judges it
    n_val = read_card(model).training["n_val"]
    assert f"int8 against fp32 on the model's recorded validation set ({n_val} images" in exported.err
    assert "(a) top-1 accuracy on them: int8" in exported.err and "(b) " in exported.err and "(c) " in exported.err
    judged = run_cli("evaluate", model, data, "--precision", "int8", "--format", "json", "--device", "cpu")
    assert judged.code == 0, judged.err
    figures = json.loads(judged.out)["precision"]
    assert figures["precision"] == "int8" and figures["images"] == json.loads(judged.out)["n_images"] > 0
    assert figures["accuracy"] is not None and figures["speedup"] > 0
    table = run_cli("evaluate", model, data, "--precision", "int8", "--device", "cpu", "--workers", "0")
    assert table.code == 0, table.err
    assert f"int8 against fp32 on the same {figures['images']} images:\n  (a) top-1 accuracy on them" in table.out

    shutil.rmtree(data)
    gone = run_cli("predict", photos["chelsea"], "--model", model, "--precision", "int8")
    assert gone.code == 2 and "are gone" in gone.err and "--calib" in gone.err
