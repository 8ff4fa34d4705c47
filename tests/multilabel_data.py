"""A small real multi-label task for the tests: 2x2 mosaics of scikit-learn digits, labelled with the distinct
digits they show (a tile may be blank), written as PNGs with a ``path,labels`` manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MOSAIC_CLASSES = 6  # digits 0..5


def write_digit_mosaics(root: Path, n: int = 300, size: int = 32, seed: int = 0, classes: int = MOSAIC_CLASSES,
                        blank: float = 0.3, manifest: str = "labels.csv") -> Path:
    """``n`` mosaics of four tiles, each tile a random digit below ``classes`` or (with probability ``blank``)
    empty; returns the manifest path. Rows read ``images/m7.png,0|3|5`` (an image with no digit: empty labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.flatnonzero(digits.target < classes)
    rng = np.random.default_rng(seed)
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,labels"]
    for i in range(n):
        tiles, shown = [], set()
        for _ in range(4):
            if rng.random() < blank:
                tiles.append(np.zeros((8, 8)))
            else:
                j = int(rng.choice(keep))
                tiles.append(digits.images[j])
                shown.add(int(digits.target[j]))
        mosaic = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
        pixels = (mosaic * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BILINEAR).save(folder / f"m{i}.png")
        lines.append(f"images/m{i}.png,{'|'.join(str(d) for d in sorted(shown))}")
    path = root / manifest
    path.write_text("\n".join(lines) + "\n")
    return path
