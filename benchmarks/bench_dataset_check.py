"""How long `cnncli inspect DATA` (check_dataset) takes on a few thousand images, against the cost of just
reading and hashing every file once (the baseline, measured in the same run).

    uv run python benchmarks/bench_dataset_check.py [--images 3000] [--size 160]

Writes a class-folder dataset of JPEG crops of scikit-image photos and textures to a temporary folder, then
times: listing only (load_dataset), the checker without decoding (hash + header), the checker with
decoding (the default), each with one thread and with the default thread pool.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cnncli.data.check import check_dataset
from cnncli.data.layout import load_dataset, scan_dataset

SOURCES = ("chelsea", "coffee", "astronaut", "brick", "grass", "gravel")


def write_dataset(root: Path, n_images: int, size: int) -> None:
    from skimage import data

    rng = np.random.default_rng(0)
    pictures = {name: getattr(data, name)() for name in SOURCES}
    for i in range(n_images):
        name = SOURCES[i % len(SOURCES)]
        img = pictures[name]
        top = rng.integers(0, img.shape[0] - size)
        left = rng.integers(0, img.shape[1] - size)
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[top:top + size, left:left + size]).save(folder / f"{i}.jpg", quality=90)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def hash_every_file(root: Path) -> None:
    for group in scan_dataset(root).groups.values():
        for paths in group.values():
            for path in paths:
                hashlib.sha256(path.read_bytes()).digest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root, args.images, args.size)
        hash_every_file(root)  # warm the page cache so every row reads from memory
        baseline = timed(lambda: hash_every_file(root))
        rows = [("read + sha256 every file (baseline)", baseline)]
        rows.append(("load_dataset (listing and split only)", timed(lambda: load_dataset(root))))
        for decode in (False, True):
            for workers in (1, None):
                label = f"check_dataset decode={decode} workers={'1' if workers else 'default'}"
                rows.append((label, timed(lambda d=decode, w=workers: check_dataset(root, decode=d, workers=w))))
    print(f"{args.images} JPEG images of {args.size}x{args.size}, page cache warm")
    print(f"| {'step':<46} | {'seconds':>8} | {'images/s':>9} | {'x baseline':>10} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 11}|{'-' * 12}|")
    for label, seconds in rows:
        print(f"| {label:<46} | {seconds:8.2f} | {args.images / seconds:9.0f} | {seconds / baseline:10.2f} |")


if __name__ == "__main__":
    main()
