"""cnncli export: a small trained model and the default model export to ONNX and match PyTorch; metadata round
trip; verification failures and untraceable models give one clear sentence; int8 static keeps top-1."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx_fixtures import PHOTOS, train_texture_model, write_images
from torch import nn

from cnncli.core.errors import CnncliError, UsageError
from cnncli.engines.onnx_engine import OnnxEngine, read_onnx_card
from cnncli.engines.torch_engine import TorchEngine
from cnncli.export.to_onnx import ExportError, export_model, export_onnx, failed_path, load_images
from cnncli.models.card import METADATA_KEY, ModelCard


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def images(workdir):
    return write_images(workdir / "images")


@pytest.fixture(scope="module")
def small(workdir):
    return train_texture_model(workdir)


@pytest.fixture(scope="module")
def small_onnx(workdir, small, images):
    path, model, card = small
    report = export_onnx(model, card, workdir / "small.onnx", verify_images=images)
    return report


def test_small_trained_model_onnx_matches_pytorch_on_every_image(small, small_onnx, images):
    path, model, card = small
    assert small_onnx.fp32_verification.passed and small_onnx.fp32_verification.real_images == len(images)
    assert small_onnx.fp32_verification.relative_diff <= 1e-4
    batch = load_images(images, card)
    ort_probs = OnnxEngine(small_onnx.path, device="cpu", verbose=False).predict_proba(batch)
    torch_probs = TorchEngine.from_spec(str(path), device="cpu").predict_proba(batch)
    assert len(set(torch_probs.argmax(1))) > 1, "the test model should not predict one class for everything"
    np.testing.assert_array_equal(ort_probs.argmax(1), torch_probs.argmax(1))
    assert np.abs(ort_probs - torch_probs).max() <= 1e-4


def test_metadata_round_trip_and_io_names(small, small_onnx):
    _, _, card = small
    graph = onnx.load(str(small_onnx.path))
    props = {p.key: p.value for p in graph.metadata_props}
    assert ModelCard.from_json(props[METADATA_KEY]).to_dict() == card.to_dict()
    assert props["cnncli_version"]
    assert read_onnx_card(small_onnx.path).to_dict() == card.to_dict()
    assert [i.name for i in graph.graph.input] == ["input"] and [o.name for o in graph.graph.output] == ["logits"]
    engine = OnnxEngine(small_onnx.path, device="cpu", verbose=False)
    h, w = card.preprocessing.input_size
    for n in (1, 5):  # dynamic batch
        assert engine.predict_proba(np.zeros((n, 3, h, w), np.float32)).shape == (n, 3)


def test_static_batch_export_still_predicts_any_number_of_images(workdir, small, images):
    _, model, card = small
    report = export_onnx(model, card, workdir / "static.onnx", dynamic_batch=False, simplify=True)
    graph = onnx.load(str(report.path))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    batch = load_images(images[:5], card)
    probs = OnnxEngine(report.path, device="cpu", verbose=False).predict_proba(batch)
    reference = OnnxEngine(workdir / "small.onnx", device="cpu", verbose=False).predict_proba(batch)
    np.testing.assert_allclose(probs, reference, atol=1e-5)


class _DriftingModel(nn.Module):
    """Its output depends on how often it was called: a trace freezes the count, so ONNX and PyTorch differ."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x.mean(dim=(2, 3))) * self.calls


def test_export_that_does_not_match_fails_and_keeps_the_file_aside(tmp_path):
    from cnncli.models.card import Preprocessing

    card = ModelCard(arch="simplecnn", classes=["a", "b"], preprocessing=Preprocessing(input_size=(16, 16)))
    target = tmp_path / "drift.onnx"
    with pytest.raises(ExportError, match="does not match PyTorch") as info:
        export_onnx(_DriftingModel(), card, target, exporter="torchscript")
    assert "drift.unverified.onnx" in str(info.value) and "\n" not in str(info.value)
    assert not target.exists() and failed_path(target).exists()


class _Eigen(nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x[:, 0, :4, :4]).real.sum(-1, keepdim=True).repeat(1, 2)


def test_untraceable_model_names_the_operator(tmp_path, capfd):
    from cnncli.models.card import Preprocessing

    card = ModelCard(arch="simplecnn", classes=["a", "b"], preprocessing=Preprocessing(input_size=(8, 8)))
    with pytest.raises(ExportError) as info:
        export_onnx(_Eigen(), card, tmp_path / "eig.onnx", exporter="torchscript")
    message = str(info.value)
    assert "linalg_eigvals" in message and "\n" not in message
    assert not (tmp_path / "eig.onnx").exists()
    printed = capfd.readouterr()
    assert "graph(" not in printed.err + printed.out  # torch's C++ dump of the half-built graph stays off screen


def test_unknown_model_file_is_one_sentence(tmp_path):
    with pytest.raises(UsageError, match="no such model file"):
        export_model(str(tmp_path / "missing.safetensors"))
    with pytest.raises(CnncliError, match="needs calibration images"):
        export_model("simplecnn", tmp_path / "x.onnx", precision="int8-static")


@pytest.fixture(scope="module")
def default_model():
    from cnncli.models.registry import create_model

    built = create_model("efficientnet_lite0", weights="default")
    return built.model.eval(), built.card


def test_default_model_fp32_and_int8_static_keep_top1_on_real_photos(workdir, default_model, images):
    model, card = default_model
    photos = [p for p in images if p.stem in PHOTOS]
    photo_crops = [p for p in images if p.stem.split("_")[0] in PHOTOS]
    fp32 = export_onnx(model, card, workdir / "default.onnx", verify_images=photos)
    batch = load_images(photos, card)
    ort_probs = OnnxEngine(fp32.path, device="cpu", verbose=False).predict_proba(batch)
    torch_probs = TorchEngine(model, card, device="cpu").predict_proba(batch)
    np.testing.assert_array_equal(ort_probs.argmax(1), torch_probs.argmax(1))
    assert np.abs(ort_probs - torch_probs).max() <= 1e-4
    chelsea, coffee = (card.classes[i] for i in ort_probs.argmax(1)[:2])
    assert chelsea in ("tabby", "tiger cat", "Egyptian cat") and coffee in ("espresso", "cup", "coffee mug")

    int8 = export_onnx(model, card, workdir / "default.int8.onnx", precision="int8-static",
                       calib_images=photo_crops, verify_images=photos)
    assert int8.size_bytes < 0.6 * int8.fp32_size_bytes
    int8_probs = OnnxEngine(int8.path, device="cpu", verbose=False).predict_proba(batch)
    confident = ort_probs.max(1) >= 0.5  # coffee; chelsea and the astronaut are near-ties that any rounding flips
    assert confident.any()
    np.testing.assert_array_equal(int8_probs.argmax(1)[confident], ort_probs.argmax(1)[confident])
    assert int8.verification.passed and int8.verification.real_images == len(photo_crops)  # photos counted once


def test_int8_bias_correction_brings_logits_closer_to_fp32(workdir, default_model, images):
    """Bias correction must cut the int8 error on the default model: a sign or scale mistake makes it grow."""
    from cnncli.export.quantize import quantize_int8
    from cnncli.export.to_onnx import _session, run_onnx

    model, card = default_model
    fp32 = export_onnx(model, card, workdir / "bc.fp32.onnx", verify=False)
    crops = load_images([p for p in images if p.stem.split("_")[0] in PHOTOS], card)
    reference = run_onnx(_session(fp32.path), crops)
    errors = {}
    for corrected in (False, True):
        out = workdir / f"bc.int8.{corrected}.onnx"
        quantize_int8(fp32.path, out, "static", crops, workdir, dynamic_batch=True, bias_correction=corrected)
        errors[corrected] = float(np.abs(run_onnx(_session(out), crops) - reference).mean())
    assert errors[True] < 0.7 * errors[False], errors
