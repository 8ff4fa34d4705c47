"""The registry: every torchvision classification architecture builds with any number of classes; heads and
stages are found for every family; timm and built-ins are listed."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from cnncli.core.errors import UsageError
from cnncli.models.registry import (
    backbone_stages,
    build_architecture,
    check_arch,
    create_model,
    head_name,
    head_parameter_names,
    list_architectures,
    model_num_classes,
    replace_head,
)

FIXED_224 = ("vit_", "maxvit", "swin", "regnet_y_128gf")
REAL_FORWARD_MAX_PARAMS = 30_000_000


def test_models_lists_every_source(run_cli):
    import torchvision.models

    tv = set(torchvision.models.list_models(module=torchvision.models))
    entries = list_architectures()
    names = {e.name for e in entries}
    assert tv <= names
    assert {"lenet5", "simplecnn", "efficientnet_lite0"} <= names
    assert "timm:resnet50" in names and "timm:convnext_tiny" in names
    assert not any(n.startswith(("fasterrcnn", "deeplab", "r3d_", "quantized")) for n in names)

    result = run_cli("models", "--source", "torchvision")
    assert result.code == 0
    assert f"{len(tv)} architectures" in result.out
    assert "resnet18" in result.out and "timm:" not in result.out
    names_only = run_cli("models", "lenet5", "--format", "names")
    assert names_only.out.split() == ["lenet5"]


@contextmanager
def weights_on_meta():
    """Like accelerate's init_empty_weights: parameters and buffers move to the meta device as they are
    registered, for constructors (RegNet's) that compute on tensors and so cannot run under torch.device("meta")."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter_on_meta(module, name, param):
        register_parameter(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    def buffer_on_meta(module, name, tensor, persistent=True):
        register_buffer(module, name, tensor if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter_on_meta, buffer_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


def build_on_meta(arch: str, num_classes: int) -> nn.Module:
    try:
        with torch.device("meta"):
            return build_architecture(arch, num_classes=num_classes)
    except NotImplementedError:
        with weights_on_meta():
            return build_architecture(arch, num_classes=num_classes)


@pytest.mark.parametrize("arch", sorted(__import__("torchvision.models").models.list_models(
    module=__import__("torchvision.models").models)))
def test_every_torchvision_architecture_builds_with_three_classes(arch):
    """Built on the meta device (shapes, no memory); small ones also run a real forward pass."""
    size = 224 if arch.startswith(FIXED_224) else (75 if arch == "inception_v3" else 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta_model = build_on_meta(arch, 3)
        out = meta_model.eval()(torch.empty(2, 3, size, size, device="meta"))
        assert tuple(out.shape) == (2, 3)
        n_params = sum(p.numel() for p in meta_model.parameters())
        if n_params <= REAL_FORWARD_MAX_PARAMS:
            model = build_architecture(arch, num_classes=3).eval()
            with torch.inference_mode():
                assert tuple(model(torch.rand(2, 3, size, size)).shape) == (2, 3)
    assert model_num_classes(meta_model) == 3
    head = set(head_parameter_names(meta_model))
    staged = [p for _, params in backbone_stages(meta_model) for p in params]
    everything = {n for n, _ in meta_model.named_parameters()}
    assert head and not head & set(staged)
    assert len(staged) == len(set(staged)) and head | set(staged) == everything


@pytest.mark.parametrize(
    "arch, expected_head",
    [("resnet18", "fc"), ("vgg11", "classifier.6"), ("mobilenet_v3_small", "classifier.3"),
     ("squeezenet1_1", "classifier.1"), ("vit_b_16", "heads.head"), ("convnext_tiny", "classifier.2"),
     ("densenet121", "classifier"), ("efficientnet_lite0", "classifier"), ("lenet5", "fc3"),
     ("timm:resnet18", "fc")],
)
def test_head_is_found_and_replaced(arch, expected_head):
    with torch.device("meta"):
        model = build_architecture(arch, num_classes=1000)
        assert head_name(model) == expected_head
        replace_head(model, 7)
    assert model_num_classes(model) == 7
    layer = model.get_submodule(head_name(model))
    assert isinstance(layer, (nn.Linear, nn.Conv2d))


def test_inception_aux_heads_are_replaced_too():
    import torchvision.models

    with torch.device("meta"):
        model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
        replace_head(model, 4)
    assert model.fc.out_features == 4 and model.AuxLogits.fc.out_features == 4
    with torch.device("meta"):
        g = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
        replace_head(g, 4)
    assert g.fc.out_features == g.aux1.fc2.out_features == g.aux2.fc2.out_features == 4


def test_resnet_stages_are_its_layers_in_order():
    with torch.device("meta"):
        model = build_architecture("resnet18", num_classes=5)
    names = [name for name, _ in backbone_stages(model)]
    assert names == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]


def test_lenet5_has_the_textbook_parameter_count():
    model = create_model("lenet5", num_classes=10, in_chans=1).model
    assert sum(p.numel() for p in model.parameters()) == 61_706
    assert model(torch.rand(3, 1, 32, 32)).shape == (3, 10)
    rgb = create_model("lenet5", num_classes=10, in_chans=3).model
    assert rgb(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_grayscale_adaptation_sums_pretrained_filters():
    built = create_model("efficientnet_lite0", weights="default")
    rgb_filters = built.model.conv_stem.weight.detach().clone()
    gray = create_model("efficientnet_lite0", weights="default", num_classes=3, in_chans=1)
    assert gray.model.conv_stem.weight.shape[1] == 1
    assert torch.allclose(gray.model.conv_stem.weight, rgb_filters.sum(dim=1, keepdim=True))
    assert gray.card.preprocessing.channels == 1 and len(gray.card.preprocessing.mean) == 1
    assert gray.card.num_classes == 3


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(UsageError, match="resnet18"):
        check_arch("resnet81")
    with pytest.raises(UsageError, match="timm:"):
        check_arch("resnet50d")  # a timm-only name


def test_pretrained_download_failure_is_one_sentence(monkeypatch, tmp_path):
    """Offline, torchvision's download fails; the message names the file and where to put it."""
    import urllib.request

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # urllib caches its module-wide opener, with the proxies of the moment, at the first urlopen(): drop it after
    # this test so the dead proxy does not outlive it (it made later loopback requests in the suite time out)
    monkeypatch.setattr(urllib.request, "_opener", None)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there: the download fails at once
    from cnncli.core.errors import WeightsError

    with pytest.raises(WeightsError) as info:
        create_model("resnet18", weights="IMAGENET1K_V1")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path) in message and "--weights PATH" in message
    assert "\n" not in message


def test_unknown_torchvision_weights_name_lists_the_choices():
    with pytest.raises(UsageError, match="IMAGENET1K_V1"):
        create_model("resnet18", weights="IMAGENET9K")


def test_builtin_without_pretrained_weights_says_so():
    with pytest.raises(UsageError, match="no pretrained weights"):
        create_model("lenet5", weights="default")
