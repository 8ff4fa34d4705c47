"""Training benchmarks (CPU): prints one table.

1. LeNet-5 from scratch on scikit-learn's digits (32x32 PNG class folders, 20% held out): time and val accuracy.
2. Transfer learning: `finetune --trainable head` of the default model vs `train` of the same architecture from
   scratch, same epoch budget, on 64x64 crops of scikit-image's brick / grass / gravel (train crops from the left
   half of each texture, val crops from the right half, so no val pixel is seen in training).
3. Training images/s of the default model at 224 px, batch 32: --trainable head with and without
   --cache-features, last:2, all; each against the pure forward+backward+step throughput of the same model,
   trainable set, batch and threads on synthetic tensors (ratio = the loop's overhead).

    uv run python benchmarks/bench_train.py [--threads N] [--skip lenet,transfer,throughput]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cnncli.core.cpus import usable_cores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def write_texture_splits(root: Path, per_class_train: int = 30, per_class_val: int = 15, crop: int = 64) -> Path:
    from skimage import data

    rng = np.random.default_rng(0)
    for name in ("brick", "grass", "gravel"):
        img = getattr(data, name)()
        h, w = img.shape[:2]
        for split, n, (x0, x1) in (("train", per_class_train, (0, w // 2)), ("val", per_class_val, (w // 2, w))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                y, x = rng.integers(0, h - crop), rng.integers(x0, x1 - crop)
                Image.fromarray(img[y : y + crop, x : x + crop]).convert("RGB").save(folder / f"{name}_{i}.png")
    return root


def write_photo_crops(root: Path, per_class: int = 40, size: int = 256) -> Path:
    """Random 256 px crops of three scikit-image photos as JPEGs: a 224 px training set for throughput."""
    from skimage import data

    rng = np.random.default_rng(0)
    for name in ("chelsea", "coffee", "astronaut"):
        img = getattr(data, name)()
        h, w = img.shape[:2]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            y, x = rng.integers(0, h - size), rng.integers(0, w - size)
            Image.fromarray(img[y : y + size, x : x + size]).save(folder / f"{name}_{i}.jpg", quality=90)
    return root


def train(**kw):
    from cnncli.train.config import TrainConfig
    from cnncli.train.loop import run_training

    cfg = TrainConfig(quiet=True, **kw)
    t0 = time.perf_counter()
    result = run_training(cfg)
    return result, time.perf_counter() - t0


def bench_lenet(tmp: Path, rows: list) -> None:
    from train_data import write_digits

    data = write_digits(tmp / "digits", per_class=None, size=32)
    result, seconds = train(data=str(data), arch="lenet5", grayscale=True, augment="none", epochs=30, batch_size=32,
                            lr=3e-3, out=str(tmp / "lenet"))
    rows.append(("LeNet-5 digits from scratch (1437 train / 360 val, 30 epochs)",
                 f"val acc {result.best_val_acc:.4f} (best epoch {result.best_epoch})", f"{seconds:.1f} s"))


def bench_transfer(tmp: Path, rows: list, epochs: int = 5) -> None:
    data = write_texture_splits(tmp / "textures")
    common = dict(data=str(data), arch="efficientnet_lite0", epochs=epochs, batch_size=16, augment="light")
    ft, ft_s = train(command="finetune", weights="default", trainable="head", out=str(tmp / "ft"), **common)
    sc, sc_s = train(command="train", weights="none", trainable="all", out=str(tmp / "scratch"), **common)
    rows.append((f"finetune --trainable head, efficientnet_lite0, textures ({epochs} epochs, 90 train / 45 val)",
                 f"val acc {ft.best_val_acc:.4f}", f"{ft_s:.1f} s"))
    rows.append(("train from scratch, efficientnet_lite0, same data and epochs",
                 f"val acc {sc.best_val_acc:.4f}", f"{sc_s:.1f} s"))


def pure_step_rate(trainable: str, batch: int = 32, size: int = 224, reps: int = 3) -> float:
    """Images/s of forward + backward + AdamW step on random tensors, same model, trainable set, BN policy."""
    import torch

    from cnncli.models.registry import create_model
    from cnncli.train.policy import apply_trainable, set_train_mode, trainable_names

    model = create_model("efficientnet_lite0", weights="default", num_classes=3).model
    apply_trainable(model, trainable_names(model, trainable))
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (batch,))
    set_train_mode(model, "frozen")

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    return reps * batch / (time.perf_counter() - t0)


def bench_throughput(tmp: Path, rows: list) -> None:
    data = write_photo_crops(tmp / "photos")
    cases = [("head", False), ("head", True), ("last:2", False), ("all", False)]  # cached head reuses head's baseline
    pure = {}
    for trainable, cache in cases:
        if not cache:  # measured right before the loop run it is compared with (the machine's load drifts)
            pure[trainable] = pure_step_rate(trainable)
        result, _ = train(command="finetune", data=str(data), arch="efficientnet_lite0", weights="default",
                          trainable=trainable, cache_features=cache, augment="none", epochs=2, batch_size=32,
                          out=str(tmp / f"tp-{trainable.replace(':', '')}-{cache}"))
        rate = result.history[-1]["train_img_s"]  # second epoch: warm
        label = f"train img/s, 224 px, batch 32, --trainable {trainable}" + (" --cache-features" if cache else "")
        rows.append((label, f"{rate:.1f} img/s",
                     f"pure fwd+bwd+step {pure[trainable]:.1f} img/s, ratio {rate / pure[trainable]:.2f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip", default="", help="comma-separated: lenet, transfer, throughput")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    tmp = Path(tempfile.mkdtemp(prefix="cnncli-bench-train-"))
    rows: list = []
    load = os.getloadavg()
    try:
        if "lenet" not in skip:
            bench_lenet(tmp, rows)
        if "transfer" not in skip:
            bench_transfer(tmp, rows)
        if "throughput" not in skip:
            bench_throughput(tmp, rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cnncli training benchmark: {usable_cores()} CPUs, torch {torch.__version__}, "
                        f"{torch.get_num_threads()} threads, load average at start {load[0]:.1f}")
    for col in ("case", "result", "time / baseline"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
