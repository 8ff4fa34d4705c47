"""Small real datasets for the training and evaluation tests, written as PNG class folders under tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(root: Path, per_class: int | None = 30, size: int = 32, classes: int = 10) -> Path:
    """sklearn's 8x8 digits, upscaled to ``size`` px grayscale PNGs in class folders 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[int, int] = {}
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        label = int(label)
        if label >= classes or (per_class is not None and counts.get(label, 0) >= per_class):
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (img * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BILINEAR).save(folder / f"{i}.png")
    return root


def write_textures(root: Path, per_class: int = 12, crop: int = 64, seed: int = 0) -> Path:
    """Random ``crop`` x ``crop`` crops of scikit-image's brick, grass and gravel textures (as RGB PNGs)."""
    from skimage import data

    rng = np.random.default_rng(seed)
    for name in ("brick", "grass", "gravel"):
        img = getattr(data, name)()
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        h, w = img.shape[:2]
        for i in range(per_class):
            y, x = rng.integers(0, h - crop), rng.integers(0, w - crop)
            Image.fromarray(img[y : y + crop, x : x + crop]).convert("RGB").save(folder / f"{name}_{i}.png")
    return root
