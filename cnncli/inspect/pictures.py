"""Pictures of what a CNN computes, written as PNG files with matplotlib (Agg):

- ``filters``: the first convolution's kernels as a grid, each normalised to [0, 1] (RGB when it reads 3 channels);
- ``features``: the activation maps of one layer for an image (default: a layer in the middle of the network);
- ``saliency``: the image-specific class saliency map of Simonyan, Vedaldi & Zisserman (2014), the absolute
  gradient of the top class score with respect to the input pixels, maximum over colour channels;
- ``gradcam``: Grad-CAM (Selvaraju et al. 2017) of the top class on the last convolutional stage: the stage's
  maps weighted by their average gradient, ReLU, upsampled and overlaid on the image.

The model input comes from :func:`cnncli.data.images.load_and_preprocess` (the one preprocessing every engine uses);
the image shown is :func:`cnncli.data.images.load_image` cropped and resized by the same geometry, unnormalised.
Sizes: filters and features 800x800 pixels, saliency and gradcam 1000x500 (image on the left).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnncli.core.errors import UsageError
from cnncli.models.card import ModelCard

SQUARE_SIZE = (8, 8)  # inches at DPI: 800 x 800 pixels
WIDE_SIZE = (10, 5)  # 1000 x 500 pixels
DPI = 100
MAX_FEATURE_MAPS = 64


@dataclass
class Picture:
    kind: str
    path: Path
    layer: str
    class_label: str | None = None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "layer": self.layer, "class": self.class_label}


@dataclass
class ImageInput:
    path: Path
    tensor: torch.Tensor  # (1, C, H, W), the model input
    display: np.ndarray  # (H, W, 3) or (H, W) floats in [0, 1], same geometry as the input


def prepare_image(path: str | Path, card: ModelCard) -> ImageInput:
    from cnncli.data.images import load_and_preprocess, load_image, preprocess

    pre = card.preprocessing
    x = load_and_preprocess(path, pre)
    plain = pre.replace(mean=(0.0,) * pre.channels, std=(1.0,) * pre.channels)
    shown = preprocess(load_image(path, pre.channels), plain).transpose(1, 2, 0)
    shown = shown[:, :, 0] if shown.shape[2] == 1 else shown
    return ImageInput(Path(path), torch.from_numpy(x)[None], np.clip(shown, 0.0, 1.0))


# ---------------------------------------------------------------- layer choice


def spatial_layers(model: nn.Module, input_size: tuple[int, int], in_chans: int) -> list[str]:
    """Modules whose output is a spatial map (more than one position), in the order they finish."""
    from cnncli.inspect.summary import trace_forward

    order = trace_forward(model, input_size, in_chans).spatial_order
    return list(dict.fromkeys(order))


def middle_layer(names: list[str], max_depth: int = 2) -> str:
    shallow = [n for n in names if n.count(".") < max_depth] or names
    return shallow[(len(shallow) - 1) // 2]


def last_conv_stage(names: list[str]) -> str:
    """The module producing the last spatial map; among modules producing it, the outermost finishes last."""
    return names[-1]


def _resolve_layer(model: nn.Module, layer: str, names: list[str]) -> str:
    known = dict(model.named_modules())
    if layer not in known or not layer:
        import difflib

        close = difflib.get_close_matches(layer, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " `cnncli inspect MODEL --depth 9` lists the layers."
        raise UsageError(f"the model has no layer named {layer!r}.{hint}")
    return layer


# ---------------------------------------------------------------- computations


def _capture(model: nn.Module, layer: str):
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        t = out if isinstance(out, torch.Tensor) else out[0]
        store["act"] = t
        if t.requires_grad:
            t.register_hook(lambda g: store.__setitem__("grad", g))

    return store, model.get_submodule(layer).register_forward_hook(hook)


def feature_maps(model: nn.Module, x: torch.Tensor, layer: str) -> tuple[np.ndarray, torch.Tensor]:
    """(C, h, w) activations of ``layer`` and the logits."""
    store, handle = _capture(model, layer)
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        handle.remove()
    act = store["act"]
    if act.dim() != 4:
        raise UsageError(f"layer {layer!r} outputs shape {tuple(act.shape[1:])}, not feature maps; pick a "
                         "convolutional layer.")
    return act[0].float().cpu().numpy(), logits


def saliency_map(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, int, torch.Tensor]:
    """|d score_top / d input|, max over channels: (H, W) array, the top class index, the logits."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model.eval()(x)
        top = int(logits[0].argmax())
        logits[0, top].backward()
    return x.grad[0].abs().amax(dim=0).cpu().numpy(), top, logits.detach()


def gradcam_map(model: nn.Module, x: torch.Tensor, layer: str) -> tuple[np.ndarray, int, torch.Tensor]:
    """Grad-CAM of the top class at ``layer``, upsampled to the input size and scaled to [0, 1]."""
    store, handle = _capture(model, layer)
    x = x.detach().clone().requires_grad_(True)  # so the graph exists even when every weight is frozen
    try:
        with torch.enable_grad():
            logits = model.eval()(x)
            top = int(logits[0].argmax())
            logits[0, top].backward()
    finally:
        handle.remove()
    act, grad = store["act"].detach(), store.get("grad")
    if act.dim() != 4 or grad is None:
        raise UsageError(f"layer {layer!r} gives no feature maps with gradients for Grad-CAM; pick a conv layer.")
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else cam
    return cam.cpu().numpy(), top, logits.detach()


# ---------------------------------------------------------------- drawing


def _figure(size):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI)


def _save(fig, path: Path) -> Path:
    from cnncli.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _grid(fig, images: list[np.ndarray], cmap: str | None, title: str) -> None:
    """Tiles of equal size, each already in [0, 1], as one mosaic with white gaps (one axes: fast to draw)."""
    import matplotlib

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    h, w = images[0].shape[:2]
    gap = max(1, min(h, w) // 8)
    mosaic = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap, 4), dtype=np.float32)  # RGBA, white
    for i, tile in enumerate(images):
        r, c = divmod(i, cols)
        rgba = matplotlib.colormaps[cmap](tile) if cmap is not None else np.dstack([tile, np.ones((h, w))])
        mosaic[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = rgba
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.90))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title)


def _label(card: ModelCard, index: int, logits: torch.Tensor) -> str:
    prob = float(torch.softmax(logits[0].float(), 0)[index])
    name = card.classes[index] if index < len(card.classes) else f"class {index}"
    return f"{name} ({prob:.2f})"


def draw_filters(model: nn.Module, model_label: str, path: Path) -> Picture:
    from cnncli.models.registry import first_conv_name

    layer = first_conv_name(model)
    if layer is None:
        raise UsageError(f"{model_label} has no convolution, so there are no filters to draw.")
    w = model.get_submodule(layer).weight.detach().float().cpu().numpy()  # (out, in, kh, kw)
    if w.shape[1] == 3:
        tiles = [_normalise(f.transpose(1, 2, 0)) for f in w]
        cmap = None
    else:
        tiles = [_normalise(f.mean(axis=0)) for f in w]
        cmap = "gray"
    fig = _figure(SQUARE_SIZE)
    _grid(fig, tiles, cmap, f"{model_label} · {layer} · {w.shape[0]} filters {w.shape[2]}x{w.shape[3]}x{w.shape[1]}")
    return Picture("filters", _save(fig, path), layer)


def draw_features(model, card, model_label, image: ImageInput, layer: str, path: Path) -> Picture:
    maps, logits = feature_maps(model, image.tensor, layer)
    top = int(logits[0].argmax())
    label = _label(card, top, logits)
    tiles = [_normalise(m) for m in maps[:MAX_FEATURE_MAPS]]
    fig = _figure(SQUARE_SIZE)
    shown = f"{len(tiles)} of {maps.shape[0]}" if maps.shape[0] > len(tiles) else str(maps.shape[0])
    _grid(fig, tiles, "viridis", f"{model_label} · {layer} · {shown} maps {maps.shape[1]}x{maps.shape[2]} · "
                                 f"class: {label}")
    return Picture("features", _save(fig, path), layer, label)


def _side_by_side(image: ImageInput, overlay, title: str, path: Path, cmap: str, alpha: float | None) -> Path:
    fig = _figure(WIDE_SIZE)
    left, right = fig.subplots(1, 2)
    gray = "gray" if image.display.ndim == 2 else None
    left.imshow(image.display, cmap=gray)
    if alpha is None:
        right.imshow(overlay, cmap=cmap)
    else:
        right.imshow(image.display, cmap=gray)
        right.imshow(overlay, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    for ax in (left, right):
        ax.set_axis_off()
    fig.suptitle(title)
    return _save(fig, path)


def draw_saliency(model, card, model_label, image: ImageInput, path: Path) -> Picture:
    sal, top, logits = saliency_map(model, image.tensor)
    label = _label(card, top, logits)
    _side_by_side(image, _normalise(sal), f"{model_label} · saliency w.r.t. input · class: {label}", path, "hot", None)
    return Picture("saliency", path, "input", label)


def draw_gradcam(model, card, model_label, image: ImageInput, layer: str, path: Path) -> Picture:
    cam, top, logits = gradcam_map(model, image.tensor, layer)
    label = _label(card, top, logits)
    _side_by_side(image, cam, f"{model_label} · Grad-CAM at {layer} · class: {label}", path, "jet", 0.5)
    return Picture("gradcam", path, layer, label)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


def render_pictures(
    model: nn.Module,
    card: ModelCard,
    kinds: list[str],
    out_dir: str | Path,
    model_label: str,
    image: str | Path | None = None,
    layer: str | None = None,
) -> list[Picture]:
    """Draw each of ``kinds`` (names from :data:`cnncli.inspect.run.PICTURES`, checked there) into ``out_dir``;
    features, saliency and gradcam need ``image``."""
    needs_image = [k for k in kinds if k != "filters"]
    if needs_image and image is None:
        raise UsageError(f"{', '.join(needs_image)} need an image; pass --image PATH.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = _slug(Path(model_label).stem if model_label.endswith((".safetensors", ".onnx")) else model_label)
    img = prepare_image(image, card) if needs_image else None
    names = spatial_layers(model, card.preprocessing.input_size, card.preprocessing.channels) if needs_image else []
    if needs_image and not names:
        raise UsageError(f"{model_label} produces no spatial feature maps to draw.")
    suffix = f"_{_slug(Path(image).stem)}" if image is not None else ""
    pictures = []
    for kind in kinds:
        path = out_dir / f"{stem}_{kind}{'' if kind == 'filters' else suffix}.png"
        if kind == "filters":
            pictures.append(draw_filters(model, model_label, path))
        elif kind == "features":
            target = _resolve_layer(model, layer, names) if layer else middle_layer(names)
            pictures.append(draw_features(model, card, model_label, img, target, path))
        elif kind == "saliency":
            pictures.append(draw_saliency(model, card, model_label, img, path))
        else:
            pictures.append(draw_gradcam(model, card, model_label, img, last_conv_stage(names), path))
    return pictures
