"""`cnncli inspect MODEL`: parameter counts, output shapes, MACs, receptive fields, pictures, frozen layers,
ONNX summaries and one-sentence errors."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnncli.inspect.render import shape_text
from cnncli.inspect.run import inspect_model
from cnncli.inspect.summary import summarize_model
from cnncli.models.card import METADATA_KEY, ModelCard, Preprocessing
from cnncli.models.checkpoint import save_model
from cnncli.models.registry import create_model

# ---------------------------------------------------------------- counts and shapes


@pytest.fixture(scope="module")
def resnet18_summary():
    import torchvision

    return summarize_model(torchvision.models.resnet18(), 224, 3, depth=1)


def test_resnet18_parameters_shapes_macs_and_receptive_field(resnet18_summary):
    s = resnet18_summary
    assert s.total_params == 11_689_512
    layer4 = next(layer for layer in s.layers if layer.name == "layer4")
    assert layer4.output_shape == [512, 7, 7]
    assert abs(s.macs - 1.82e9) / 1.82e9 < 0.02
    assert s.flops == 2 * s.macs
    # By hand: conv1 7x7/2 -> 7 (jump 2); maxpool 3x3/2 -> 11 (jump 4); layer1: 4 convs 3x3 -> 11 + 4*2*4 = 43;
    # layer2: 4 convs, the first /2 -> 43 + 2*4 + 3*2*8 = 99; layer3 -> 99 + 2*8 + 3*2*16 = 211;
    # layer4 -> 211 + 2*16 + 3*2*32 = 435, jump 32. The 1x1/2 shortcuts run in parallel and must not add.
    rf = s.receptive_field.to_dict()
    assert (rf["size"], rf["jump"], rf["map_shape"]) == (435, 32, [512, 7, 7])
    data = s.to_dict()
    assert {"layers", "total_params", "trainable_params", "macs", "receptive_field", "metadata"} <= data.keys()
    json.dumps(data)


def test_per_layer_macs_come_from_the_counter(resnet18_summary):
    conv1 = next(layer for layer in resnet18_summary.layers if layer.name == "conv1")
    assert conv1.macs == 64 * 3 * 7 * 7 * 112 * 112
    assert (conv1.kernel_size, conv1.stride, conv1.padding, conv1.dilation) == ([7, 7], [2, 2], [3, 3], [1, 1])
    fc = next(layer for layer in resnet18_summary.layers if layer.name == "fc")
    assert fc.macs == 512 * 1000


def test_lenet5_on_32x32_grayscale_with_10_classes():
    built = create_model("lenet5", num_classes=10, in_chans=1)
    s = summarize_model(built.model, 32, 1, depth=2, card=built.card)
    assert s.total_params == 61_706
    assert s.output_shape == [10]
    assert next(layer for layer in s.layers if layer.name == "conv2").output_shape == [16, 5, 5]
    assert s.metadata["num_classes"] == 10


def test_single_conv_of_ten_3x3_filters_on_rgb_has_280_parameters():
    s = summarize_model(nn.Sequential(nn.Conv2d(3, 10, 3)), 32, 3, depth=1)
    assert s.total_params == 280
    assert s.layers[0].output_shape == [10, 30, 30]


def test_lecture_homework_layer_608_parameters_and_30x30x8_output():
    # RGB 64x64 input, 8 filters 5x5, stride 2, no padding: (64 - 5 + 0) / 2 + 1 = 30 (floor), 8 * (5*5*3 + 1) = 608
    s = summarize_model(nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=0)), 64, 3, depth=1)
    assert s.total_params == 608
    assert shape_text(s.layers[0].output_shape) == "30x30x8"
    assert s.layers[0].stride == [2, 2]


# ---------------------------------------------------------------- receptive field


def test_receptive_field_of_a_hand_checked_stack():
    # conv3x3 s1: 3; pool2x2 s2: 3 + 1 = 4, jump 2; conv3x3 s1: 4 + 2 * 2 = 8
    stack = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2, 2), nn.Conv2d(4, 4, 3))
    rf = summarize_model(stack, 20, 1, depth=1).receptive_field
    assert (rf.size, rf.jump) == ((8, 8), (2, 2))


class _Residual(nn.Module):
    """Main path conv3x3/2 -> conv3x3 (dilation 2); shortcut conv1x1/2; summed."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.shortcut = nn.Conv2d(3, 4, 1, stride=2)

    def forward(self, x):
        return self.b(self.a(x)) + self.shortcut(x)


def test_receptive_field_follows_branches_and_dilation():
    # main path: 3 (jump 2), then (3 - 1) * 2 * 2 = 8 more -> 11, jump 2; the shortcut sees 1 pixel, jump 2.
    # A walk over the layer list would apply the shortcut's stride again (jump 4).
    rf = summarize_model(_Residual(), 16, 3, depth=1).receptive_field
    assert (rf.size, rf.jump) == ((11, 11), (2, 2))


def test_receptive_field_per_axis_for_rectangular_kernels():
    # Inception-style 1x7 then 7x1, then 1x5 with stride (2, 1), then 3x3
    stack = nn.Sequential(nn.Conv2d(1, 2, (1, 7)), nn.Conv2d(2, 2, (7, 1)), nn.Conv2d(2, 2, (1, 5), stride=(2, 1)),
                          nn.Conv2d(2, 2, 3))
    rf = summarize_model(stack, 24, 1, depth=1).receptive_field
    # ... height: 1 -> 1 -> 7 -> 7 (jump 2) -> 7 + 2 * 2 = 11; width: 7 -> 7 -> 11 (jump 1) -> 13
    assert (rf.size, rf.jump) == ((11, 13), (2, 1))
    assert rf.to_dict()["size"] == [11, 13] and rf.to_dict()["jump"] == [2, 1]


class _ChannelsLastNorm(nn.Module):
    """conv3x3 -> LayerNorm over channels in (N, H, W, C) layout, as ConvNeXt does -> conv3x3."""

    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Conv2d(3, 4, 3), nn.LayerNorm(4), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.b(self.norm(self.a(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_receptive_field_survives_channels_last_permutes():
    rf = summarize_model(_ChannelsLastNorm(), 12, 3, depth=1).receptive_field
    assert (rf.size, rf.jump, rf.shape) == ((5, 5), (1, 1), (4, 8, 8))


# ---------------------------------------------------------------- pictures on a real photo


@pytest.fixture(scope="module")
def chelsea(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("img") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


@pytest.fixture(scope="module")
def default_model():
    built = create_model("efficientnet_lite0", weights="default")
    return built.model.eval(), built.card


def test_gradcam_and_saliency_concentrate_on_the_cat(default_model, chelsea):
    from cnncli.inspect.pictures import (
        gradcam_map,
        last_conv_stage,
        prepare_image,
        saliency_map,
        spatial_layers,
    )

    model, card = default_model
    card = ModelCard(arch=card.arch, classes=card.classes,
                     preprocessing=card.preprocessing.replace(resize_mode="squash"))  # the whole photo, background too
    image = prepare_image(chelsea, card)
    assert image.display.shape == (224, 224, 3)
    cam, top, _ = gradcam_map(model, image.tensor, last_conv_stage(spatial_layers(model, (224, 224), 3)))
    sal, top_s, _ = saliency_map(model, image.tensor)
    assert card.classes[top] in ("tiger cat", "tabby", "Egyptian cat") and top_s == top
    # a rough box around the cat's head in the 451x300 photo: x 60..370, y 10..300; the right strip is background
    sx, sy = 224 / 451, 224 / 300
    inside = np.zeros((224, 224), bool)
    inside[int(10 * sy):int(300 * sy), int(60 * sx):int(370 * sx)] = True
    for name, heat in (("gradcam", cam), ("saliency", sal)):
        assert heat.shape == (224, 224)
        density_in, density_out = heat[inside].mean(), heat[~inside].mean()
        assert density_in > density_out, f"{name}: {density_in} inside vs {density_out} outside"
    assert cam[inside].mean() > 2 * cam[~inside].mean()


def _png_size(path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", raw[16:24])
    with Image.open(path) as img:
        img.verify()
    return width, height


def test_pictures_are_png_files_of_the_stated_size(default_model, chelsea, tmp_path):
    from cnncli.inspect.pictures import render_pictures

    model, card = default_model
    pictures = render_pictures(model, card, ["filters", "features", "saliency", "gradcam"], tmp_path,
                               "efficientnet_lite0", image=chelsea)
    sizes = {p.kind: _png_size(p.path) for p in pictures}
    assert sizes == {"filters": (800, 800), "features": (800, 800), "saliency": (1000, 500), "gradcam": (1000, 500)}
    by_kind = {p.kind: p for p in pictures}
    assert by_kind["filters"].layer == "conv_stem"
    assert by_kind["gradcam"].layer == "bn2"  # the last stage that still has a 7x7 map
    assert by_kind["gradcam"].class_label.startswith(("tiger cat", "tabby", "Egyptian cat"))


def test_features_of_a_named_layer_and_unknown_layer(default_model, chelsea, tmp_path):
    from cnncli.core.errors import UsageError
    from cnncli.inspect.pictures import render_pictures

    model, card = default_model
    (picture,) = render_pictures(model, card, ["features"], tmp_path, "m", image=chelsea, layer="blocks.1")
    assert picture.layer == "blocks.1" and picture.path.name == "m_features_chelsea.png"
    with pytest.raises(UsageError, match="no layer named 'blocks.99'"):
        render_pictures(model, card, ["features"], tmp_path, "m", image=chelsea, layer="blocks.99")
    with pytest.raises(UsageError, match="need an image"):
        render_pictures(model, card, ["saliency"], tmp_path, "m")


# ---------------------------------------------------------------- a fine-tuned model file


@pytest.mark.parametrize("policy, frozen, trainable", [("head", ["stage1", "stage3"], ["fc"]),
                                                       ("last:1", ["stage1", "stage2"], ["stage3", "fc"])])
def test_trained_policy_shows_frozen_layers(tmp_path, run_cli, policy, frozen, trainable):
    """A model file as `cnncli finetune` writes it: the policy recorded in the card marks the frozen layers."""
    from cnncli.train.policy import apply_trainable, trainable_names

    built = create_model("simplecnn", num_classes=3, classes=["a", "b", "c"])
    n_trainable = apply_trainable(built.model, trainable_names(built.model, policy))
    built.card.extra.update(trainable=policy, trainable_params=n_trainable)
    path = save_model(tmp_path / "tuned.safetensors", built.model, built.card)

    s = inspect_model(str(path), depth=1)["summary"]
    status = {layer.name: layer.trainable for layer in s.layers}
    assert all(status[name] == "frozen" for name in frozen)
    assert all(status[name] == "trainable" for name in trainable)
    assert s.trainable_params == n_trainable and s.frozen_params == s.total_params - n_trainable

    code, out, _ = run_cli(*["inspect", str(path), "--format", "json", "--depth", "1"])
    assert code in (0, None)
    data = json.loads(out)
    assert data["trainable_params"] == n_trainable
    assert data["metadata"]["classes"] == ["a", "b", "c"]
    assert data["metadata"]["extra"]["trainable"] == policy


def test_table_output_for_a_registry_name(run_cli):
    code, out, _ = run_cli(*["inspect", "lenet5", "--depth", "1"])
    assert code in (0, None)
    assert "conv1" in out and "receptive field" in out and "parameters" in out
    assert "jump 4 px" in out  # two 2x2 poolings


# ---------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    import onnx

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 7 * 7, 5)).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(path), input_names=["input"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(str(path))
    card = ModelCard(arch="simplecnn", classes=list("vwxyz"), preprocessing=Preprocessing(input_size=(16, 16)))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, card.to_json()
    onnx.save(proto, str(path))
    return path, sum(p.numel() for p in model.parameters())


def test_onnx_summary(tiny_onnx, run_cli):
    path, n_params = tiny_onnx
    s = inspect_model(str(path))["summary"]
    assert s.opset == 17
    assert s.inputs == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 16, 16]}]
    assert s.outputs == [{"name": "logits", "dtype": "float32", "shape": ["batch", 5]}]
    assert s.node_counts["Conv"] == 1 and s.node_counts["Relu"] == 1 and s.node_counts["MaxPool"] == 1
    assert s.total_params == n_params == 4 * 3 * 9 + 4 + 196 * 5 + 5
    assert s.metadata["classes"] == list("vwxyz")
    code, out, _ = run_cli(*["inspect", str(path)])
    assert code in (0, None) and "opset 17" in out and f"{n_params:,}" in out and "Conv" in out


def test_onnx_summary_does_not_import_torch(tiny_onnx):
    path, _ = tiny_onnx
    code = ("import sys; from cnncli.inspect.onnx_summary import summarize_onnx; "
            f"s = summarize_onnx({str(path)!r}); assert 'torch' not in sys.modules, 'torch imported'; print(s.opset)")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "17"


# ---------------------------------------------------------------- bad input


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_unknown_model_name(run_cli):
    code, _, err = run_cli(*["inspect", "resnet19"])
    assert code == 2
    assert "unknown architecture 'resnet19'" in _one_line_error(err)


@pytest.mark.parametrize("name, content, expected", [
    ("notes.txt", b"just some notes, not a model\n" * 4, "not a safetensors file"),
    ("broken.onnx", b"\x00\x01garbage" * 10, "not a readable ONNX model"),
    ("weights.pt", b"\x80\x04\x95 pickled", "pickle"),
])
def test_a_file_that_is_not_a_model(tmp_path, run_cli, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    code, _, err = run_cli(*["inspect", str(path)])
    assert code == 2  # a bad model file is a usage error
    assert expected in _one_line_error(err)


def test_unknown_picture_kind(run_cli):
    code, _, err = run_cli(*["inspect", "lenet5", "--what", "summary,histogram"])
    assert code == 2 and "histogram" in _one_line_error(err)


def test_input_too_small_for_the_model(run_cli):
    code, _, err = run_cli(*["inspect", "lenet5", "--input-size", "8"])
    assert code == 2 and "too small for lenet5" in _one_line_error(err) and "16" in _one_line_error(err)


def test_builtin_pictures_need_no_download_and_warn_about_random_weights(tmp_path, run_cli):
    code, out, err = run_cli(*["inspect", "lenet5", "--what", "filters", "--out", str(tmp_path)])
    assert code in (0, None)
    assert out.strip() == f"filters: {tmp_path / 'lenet5_filters.png'}"
    assert "random weights" in err
    assert _png_size(tmp_path / "lenet5_filters.png") == (800, 800)
