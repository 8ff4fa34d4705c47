"""The onnxruntime engine: torch-free predict path, --device cuda refusal, bad files, files without cnncli
metadata, ensembles (mixed engines, mismatched classes) and flip TTA."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx_fixtures import TEXTURES, train_texture_model, write_images

from cnncli.cli.app import main
from cnncli.core.errors import ModelFileError, UsageError
from cnncli.engines.base import open_engines
from cnncli.engines.ensemble import EnsembleEngine, FlipTTAEngine
from cnncli.engines.onnx_engine import CUDA, OnnxEngine
from cnncli.engines.torch_engine import TorchEngine
from cnncli.export.to_onnx import export_onnx, load_images


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_engine")
    images = write_images(folder / "images")
    st_a, model_a, card = train_texture_model(folder, seed=0)
    st_b, model_b, _ = train_texture_model(folder, seed=1, steps=4)
    onnx_a = export_onnx(model_a, card, folder / "a.onnx").path
    return {"folder": folder, "images": images, "st_a": st_a, "st_b": st_b, "onnx_a": onnx_a, "card": card}


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_onnx_predict_path_leaves_torch_out(setup):
    code = (
        "import sys, json\n"
        "from cnncli.cli.app import main\n"
        "try:\n"
        f"    main(['predict', {str(setup['images'][0])!r}, '--model', {str(setup['onnx_a'])!r}, "
        "'-f', 'json', '--device', 'cpu'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'openvino'))\n"
        "print(json.dumps(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    predictions = json.loads(out[: out.rindex("]\n", 0, len(out) - 2) + 1])
    assert predictions[0]["top"][0]["label"] in TEXTURES
    assert json.loads(out.strip().splitlines()[-1]) == []


@pytest.mark.skipif(CUDA in __import__("onnxruntime").get_available_providers(), reason="a CUDA provider is present")
def test_device_cuda_without_cuda_exits_2_with_one_sentence(setup, capsys):
    code, out, err = run_cli(["predict", str(setup["images"][0]), "--model", str(setup["onnx_a"]),
                              "--device", "cuda"], capsys)
    assert code == 2
    assert err.startswith("error: --device cuda was asked for") and err.count("\n") == 1 and "--device cpu" in err


def test_device_auto_says_which_provider_ran(setup, capsys):
    OnnxEngine(setup["onnx_a"], device="auto")
    assert "CPUExecutionProvider" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["png_renamed", "truncated", "empty"])
def test_bad_onnx_files_are_one_sentence_exit_2(setup, tmp_path, capsys, kind):
    bad = tmp_path / f"{kind}.onnx"
    if kind == "png_renamed":
        bad.write_bytes(setup["images"][0].read_bytes())
    elif kind == "truncated":
        data = setup["onnx_a"].read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(b"")
    with pytest.raises(ModelFileError):
        OnnxEngine(bad, device="cpu")
    code, out, err = run_cli(["predict", str(setup["images"][0]), "--model", str(bad)], capsys)
    assert (code == 2 and err.startswith("error: ") and err.count("\n") == 1 and str(bad) in err
            and "Traceback" not in err)


def test_onnx_without_cnncli_metadata_runs_with_index_labels_and_says_so_once(setup, tmp_path, capsys):
    graph = onnx.load(str(setup["onnx_a"]))
    del graph.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(graph, str(bare))
    code, out, err = run_cli(["predict", *map(str, setup["images"][:4]), "--model", str(bare), "-f", "jsonl",
                              "--device", "cpu", "--workers", "0"], capsys)
    assert code in (0, None)
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 4 and all(r["top"][0]["label"] == f"class_{r['top'][0]['index']}" for r in rows)
    assert err.count("no cnncli metadata") == 1
    # the bare file still gets the graph's input size (64x64 for simplecnn)
    assert OnnxEngine(bare, device="cpu", verbose=False).card.preprocessing.input_size == (64, 64)


def test_ensemble_of_onnx_and_torch_averages_probabilities(setup):
    batch = load_images(setup["images"], setup["card"])
    a = OnnxEngine(setup["onnx_a"], device="cpu", verbose=False)
    b = TorchEngine.from_spec(str(setup["st_b"]), device="cpu")
    ensemble = open_engines([str(setup["onnx_a"]), str(setup["st_b"])], device="cpu")
    assert isinstance(ensemble, EnsembleEngine)
    expected = (a.predict_proba(batch).astype(np.float64) + b.predict_proba(batch)) / 2
    np.testing.assert_allclose(ensemble.predict_proba(batch), expected, atol=1e-6)
    assert not np.allclose(a.predict_proba(batch), b.predict_proba(batch), atol=1e-3)


def test_ensemble_refuses_mismatched_classes(setup, capsys):
    a = OnnxEngine(setup["onnx_a"], device="cpu", verbose=False)
    other = OnnxEngine(setup["onnx_a"], device="cpu", verbose=False)
    other.card = type(a.card).from_dict({**a.card.to_dict(), "classes": list(reversed(a.card.classes))})
    with pytest.raises(UsageError, match="same class list") as info:
        EnsembleEngine([a, other], names=["a.onnx", "b.onnx"])
    assert "another order" in str(info.value)
    code, out, err = run_cli(["predict", str(setup["images"][0]), "--model", str(setup["onnx_a"]), "--model",
                              "efficientnet_lite0", "--device", "cpu"], capsys)
    assert code == 2 and "same class list" in err and "1000 classes" in err


def test_ensemble_renormalises_members_with_other_mean_and_std(setup):
    a = OnnxEngine(setup["onnx_a"], device="cpu", verbose=False)
    b = OnnxEngine(setup["onnx_a"], device="cpu", verbose=False)
    pre = a.card.preprocessing
    b.card = type(a.card).from_dict(
        {**a.card.to_dict(), "preprocessing": pre.replace(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)).to_dict()})
    images = setup["images"][:3]
    expected = (a.predict_proba(load_images(images, a.card)) + b.predict_proba(load_images(images, b.card))) / 2
    got = EnsembleEngine([a, b]).predict_proba(load_images(images, a.card))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_tta_is_the_mean_of_image_and_its_mirror(setup):
    from PIL import Image

    from cnncli.data.images import load_image, preprocess

    engine = OnnxEngine(setup["onnx_a"], device="cpu", verbose=False)
    tta = FlipTTAEngine(engine)
    pre = engine.card.preprocessing
    photos = [p for p in setup["images"] if p.suffix == ".png"]  # whole images: textures and photos
    pils = [load_image(p) for p in photos]
    batch = np.stack([preprocess(im, pre) for im in pils])
    mirrored = np.stack([preprocess(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), pre) for im in pils])
    plain = engine.predict_proba(batch)
    expected = (plain.astype(np.float64) + engine.predict_proba(mirrored)) / 2
    got = tta.predict_proba(batch)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - plain).max() > 1e-3  # the mirror really changed something
    assert (open_engines([str(setup["onnx_a"])], device="cpu", tta=True).predict_proba(batch)
            == pytest.approx(got, abs=1e-6))
