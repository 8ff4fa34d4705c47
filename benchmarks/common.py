"""Helpers shared by the benchmark scripts: real test images from scikit-image, timers, tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cnncli.core.cpus import cpu_model, usable_cores

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel")


def write_jpeg_folder(folder: Path, n: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[Path]:
    """``n`` distinct JPEGs (random crops, flips and scales of scikit-image's photos), camera-like in size."""
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = src.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"img_{i:05d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def imagenet_like_photos() -> dict[str, np.ndarray]:
    """The real photos of ImageNet-like subjects that installed packages ship (no download): scikit-image's cat,
    espresso, astronaut, rocket and two motorcycle views, scikit-learn's two sample images (a temple, a flower) and
    matplotlib's portrait of Grace Hopper."""
    import matplotlib
    import sklearn.datasets
    from skimage import data

    photos = {name: getattr(data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket")}
    photos["motorcycle_left"], photos["motorcycle_right"], _ = data.stereo_motorcycle()
    photos.update(zip(("china", "flower"), sklearn.datasets.load_sample_images().images))
    photos["grace_hopper"] = np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data"
                                                   / "grace_hopper.jpg"))
    return photos


def write_imagenet_samples(folder: Path) -> list[tuple[Path, int]]:
    """The 20 ImageNet validation images that the foolbox package ships (labelled by class index), each also
    mirrored, as JPEGs in ``folder``; returns (path, class index) pairs."""
    import importlib.util

    source = Path(importlib.util.find_spec("foolbox").submodule_search_locations[0]) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(source.glob("imagenet_*.jpg")):
        label = int(path.stem.split("_")[2])
        img = Image.open(path).convert("RGB")
        for flip in (False, True):
            out = folder / f"{path.stem}{'_flip' if flip else ''}.jpg"
            (img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img).save(out, quality=95)
            written.append((out, label))
    return written


def write_photo_crops(folder: Path) -> list[tuple[Path, int]]:
    """Six crops (whole, four corners at 3/4, centre at 3/4) of each photo of :func:`imagenet_like_photos`, each
    also mirrored, as JPEGs; returns (path, crop index) pairs so callers can split by crop."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pixels in imagenet_like_photos().items():
        img = Image.fromarray(pixels).convert("RGB")
        w, h = img.size
        boxes = [(0, 0, w, h), (0, 0, w * 3 // 4, h * 3 // 4), (w // 4, 0, w, h * 3 // 4), (0, h // 4, w * 3 // 4, h),
                 (w // 4, h // 4, w, h), (w // 8, h // 8, w * 7 // 8, h * 7 // 8)]
        for i, box in enumerate(boxes):
            crop = img.crop(box)
            for flip in (False, True):
                path = folder / f"{name}_{i}{'_flip' if flip else ''}.jpg"
                (crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else crop).save(path, quality=92)
                written.append((path, i))
    return written


def forward_img_s(engine, batch: np.ndarray, seconds: float = 5.0) -> float:
    """Pure forward img/s of ``engine`` on ``batch`` over about ``seconds`` (after one warm-up pass)."""
    engine.predict_proba(batch)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.predict_proba(batch)
        n += len(batch)
    return n / (time.perf_counter() - start)


def median_wall_time(cmd: list[str], runs: int = 5, env: dict | None = None) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
        times.append(time.perf_counter() - start)
        if done.returncode not in (0, 1):
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-500:]}")
    return statistics.median(times)


def cnncli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnncli", *args]


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |"
    print(f"\n{title}\n")
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")


def cpu_flags() -> str:
    """The vector extensions that decide kernel speed (AVX2, AVX-512 and its VNNI/BF16, AMX), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return "flags unknown"
    shown = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"),
                                     ("avx512_bf16", "BF16"), ("amx_tile", "AMX")) if flag in flags]
    return "/".join(shown) or "no AVX2"


def machine_line() -> str:
    """The CPU model, its vector flags, the usable cores and Python: named with every figure."""
    import platform

    return f"{cpu_model()} ({cpu_flags()}), {usable_cores()} cores, Python {platform.python_version()}"
