"""Shared helpers for the export and onnxruntime-engine tests: real images from skimage, and a small model
trained for a few steps on skimage textures so that its predictions differ from image to image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TEXTURES = ("brick", "grass", "gravel")
PHOTOS = ("chelsea", "coffee", "astronaut")


def write_images(folder: Path) -> list[Path]:
    """The three textures and three photos of skimage.data, plus a left/right crop of each, as PNG/JPEG files."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in TEXTURES + PHOTOS:
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        w, h = img.size
        for suffix, box in (("", (0, 0, w, h)), ("_left", (0, 0, w * 2 // 3, h)), ("_right", (w // 3, 0, w, h))):
            path = folder / f"{name}{suffix}.{'png' if suffix == '' else 'jpg'}"
            img.crop(box).save(path)
            paths.append(path)
    return paths


def train_texture_model(folder: Path, arch: str = "simplecnn", steps: int = 12, seed: int = 0):
    """A small model fitted for a few SGD steps to random crops of the three textures; saved to ``folder``.
    Returns (path of the .safetensors file, model, card)."""
    import skimage.data
    import torch
    from PIL import Image

    from cnncli.data.images import preprocess
    from cnncli.models.checkpoint import save_model
    from cnncli.models.registry import create_model

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    built = create_model(arch, weights="none", classes=list(TEXTURES))
    model, card = built.model, built.card
    pre = card.preprocessing
    textures = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in TEXTURES]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for module in model.modules():  # few steps: average batch statistics evenly so eval mode matches training
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    model.train()
    for _ in range(steps):
        xs, ys = [], []
        for label, tex in enumerate(textures):
            for _ in range(4):
                s = int(rng.integers(96, 256))
                x0, y0 = int(rng.integers(0, tex.width - s)), int(rng.integers(0, tex.height - s))
                xs.append(preprocess(tex.crop((x0, y0, x0 + s, y0 + s)), pre))
                ys.append(label)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(np.stack(xs))), torch.tensor(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = folder / f"{arch}_{seed}.safetensors"
    save_model(path, model, card)
    return path, model, card
