"""cnncli's fine-tune recipes against a training loop built from timm's own factories (issue 20), on small real
tasks, from the same ImageNet EfficientNet-Lite0 weights (the bundled default model's), in one run.

Tasks (written to a temporary folder as train/ and val/ class folders; no val pixel is in a training image):
  photos   64-px views of 16 scikit-image / scikit-learn photos and textures (class = the source image): train views
           from the left 55% of each image, val views from the right 45%
  faces    scikit-image's LFW subset: 25-px faces against non-faces (2 classes)
  digits   scikit-learn's 8x8 digits at 32 px (10 classes)

Rows per task:
  timm loop          timm's create_transform(is_training=True), create_optimizer_v2("adamw", lr 1e-3, wd 0.05,
                     biases and norm parameters not decayed), its cosine scheduler with 1 warm-up epoch (stepped per
                     update), LabelSmoothingCrossEntropy(0.1), ModelEmaV3 (warm-up); the best epoch of the raw or
                     the EMA weights is reported
  cnncli default     `cnncli finetune DATA` (the default recipe; --epochs E in --quick)
  cnncli all         `cnncli finetune DATA --trainable all --epochs E` (the default's head phase, then every layer
                     for the timm loop's epochs)

Columns: val top-1 of the best epoch, wall time (cnncli rows: the whole process, start-up included), training
images per second (training images x epochs / wall), and each row's ratios to the timm loop of its task.

    uv run python benchmarks/bench_recipes.py [--epochs 10] [--tasks photos,faces,digits] [--quick]

--quick: one tiny task (4 photo classes, 8 train / 4 val views each) and 2 epochs: checks that the script runs.

--distill: the photo task only, distillation for fast CPU inference: the default recipe at 224 px (the teacher),
then a student at --student-size px (Lite0 at 128 px: about a third of the forward cost) with the default recipe
alone and with `--teacher` the teacher's best.safetensors; val top-1, training wall time and the onnxruntime
forward img/s of each model (batch 32, all cores).

    uv run python benchmarks/bench_recipes.py --distill [--student-size 128]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import forward_img_s, machine_line, print_table  # noqa: E402

PHOTO_SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                 "colorwheel", "china", "flower", "brick", "grass", "gravel", "camera", "coins", "moon")


def _photo(name: str) -> Image.Image:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg")).convert("RGB")
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def write_photos(root: Path, classes: int, n_train: int, n_val: int, seed: int = 0) -> Path:
    """Views (random square crops of 20-45% of the shorter side, resized to 64 px) of each source image."""
    rng = np.random.default_rng(seed)
    for name in PHOTO_SOURCES[:classes]:
        img = _photo(name)
        w, h = img.size
        for split, n, (x0, x1) in (("train", n_train, (0.0, 0.55)), ("val", n_val, (0.55, 1.0))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                side = int(min(h, (x1 - x0) * w) * rng.uniform(0.45, 0.95))
                x = int(x0 * w + rng.integers(0, max(1, int((x1 - x0) * w) - side)))
                y = int(rng.integers(0, max(1, h - side)))
                img.crop((x, y, x + side, y + side)).resize((64, 64), Image.Resampling.BILINEAR).save(
                    folder / f"{name}_{i}.png")
    return root


def write_faces(root: Path, seed: int = 0) -> Path:
    """scikit-image's LFW subset (100 faces, 100 non-faces, 25 px): 60 train / 40 val of each, at 64 px."""
    from skimage import data

    images = data.lfw_subset()
    rng = np.random.default_rng(seed)
    for label, part in (("face", images[:100]), ("not_face", images[100:])):
        order = rng.permutation(len(part))
        for k, i in enumerate(order):
            folder = root / ("train" if k < 60 else "val") / label
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (np.clip(part[i], 0, 1) * 255).astype(np.uint8)
            Image.fromarray(pixels).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR).save(
                folder / f"{label}_{i}.png")
    return root


def write_digits(root: Path, n_train: int = 30, n_val: int = 20) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[int, int] = {}
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        k = counts.get(int(label), 0)
        if k >= n_train + n_val:
            continue
        counts[int(label)] = k + 1
        folder = root / ("train" if k < n_train else "val") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (img * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i}.png")
    return root


def count_images(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.png"))


# ---------------------------------------------------------------- the timm loop


def timm_loop(data: Path, epochs: int, batch_size: int = 32) -> dict:
    """The loop of the module docstring; returns {"acc", "wall", "images"}."""
    import torch
    from timm.data import create_transform
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3
    from torchvision.datasets import ImageFolder

    from cnncli.models.registry import create_model

    torch.manual_seed(0)
    random.seed(0)  # timm's RandomResizedCropAndInterpolation draws from Python's random: seeded, a rerun repeats
    t0 = time.perf_counter()
    classes = sorted(p.name for p in (data / "train").iterdir())
    built = create_model("efficientnet_lite0", weights="default", classes=classes)  # the same ImageNet weights
    model, pre = built.model, built.card.preprocessing
    common = dict(input_size=(3, *pre.input_size), mean=tuple(pre.mean), std=tuple(pre.std),
                  interpolation=pre.interpolation)
    train = ImageFolder(str(data / "train"), transform=create_transform(is_training=True, **common))
    val = ImageFolder(str(data / "val"), transform=create_transform(is_training=False, crop_pct=pre.crop_pct,
                                                                     **common))
    train_loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=False)
    val_loader = torch.utils.data.DataLoader(val, batch_size=64)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)  # filter_bias_and_bn=True
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=epochs, warmup_epochs=1,
                                       warmup_lr=1e-5, min_lr=1e-6, updates_per_epoch=len(train_loader))
    criterion = LabelSmoothingCrossEntropy(smoothing=0.1)
    ema = ModelEmaV3(model, decay=0.9998, use_warmup=True)

    def accuracy(module) -> float:
        module.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((module(x).argmax(1) == y).sum())
        return correct / len(val)

    best, updates = 0.0, 0
    for epoch in range(epochs):
        model.train()
        for x, y in train_loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
            ema.update(model, step=updates)
        scheduler.step(epoch + 1)
        best = max(best, accuracy(model), accuracy(ema.module))
    return {"acc": best, "wall": time.perf_counter() - t0, "images": len(train) * epochs}


# ---------------------------------------------------------------- cnncli


def cnncli_run(data: Path, out: Path, *options: str) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cnncli", "finetune", str(data), "-o", str(out), "-q",
                           "--exist-ok", *options], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"cnncli finetune {' '.join(options)} failed: {done.stderr[-800:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    args = json.loads((out / "args.json").read_text())
    images = count_images(data / "train") * args["epochs"]
    return {"acc": metrics["val_acc"], "wall": wall, "images": images, "epochs": args["epochs"],
            "head_epochs": args.get("head_epochs", 0)}


def model_forward_img_s(model_file: Path, seconds: float = 4.0) -> float:
    """onnxruntime forward img/s of a trained cnncli model (its verified export, cached), batch 32."""
    from cnncli.engines.base import open_engine

    engine = open_engine(str(model_file), device="cpu", engine="onnx")
    pre = engine.card.preprocessing
    batch = np.random.default_rng(0).standard_normal((32, pre.channels, *pre.input_size)).astype(np.float32)
    return forward_img_s(engine, batch, seconds)


def distill_rows(tmp: Path, student_size: int) -> list[list]:
    data = write_photos(tmp / "photos", 16, 24, 16)
    teacher = cnncli_run(data, tmp / "teacher")
    plain = cnncli_run(data, tmp / "student", "--image-size", str(student_size))
    taught = cnncli_run(data, tmp / "taught", "--image-size", str(student_size), "--teacher",
                        str(tmp / "teacher" / "best.safetensors"))
    rows = []
    for name, r, folder in (("teacher: default recipe, 224 px", teacher, "teacher"),
                            (f"student: default recipe, {student_size} px", plain, "student"),
                            (f"student + --teacher, {student_size} px", taught, "taught")):
        rows.append([name, f"{r['acc']:.3f}", f"{r['wall']:.0f} s",
                     f"{model_forward_img_s(tmp / folder / 'best.safetensors'):.0f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="the timm loop's and `cnncli all`'s epochs")
    parser.add_argument("--tasks", default="photos,faces,digits")
    parser.add_argument("--quick", action="store_true", help="one tiny task, 2 epochs: checks the script runs")
    parser.add_argument("--distill", action="store_true", help="distillation into a smaller input size instead")
    parser.add_argument("--student-size", type=int, default=128)
    opts = parser.parse_args()
    if opts.distill:
        print(machine_line())
        with tempfile.TemporaryDirectory() as tmp:
            rows = distill_rows(Path(tmp), opts.student_size)
        print_table("distillation on the photo task (384 train / 256 val; EfficientNet-Lite0, ImageNet weights)",
                    ["model", "val top-1", "training wall", "forward img/s"], rows)
        return
    epochs = 2 if opts.quick else opts.epochs
    tasks = ["photos"] if opts.quick else opts.tasks.split(",")
    print(machine_line())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for task in tasks:
            data = tmp / task
            if task == "photos":
                write_photos(data, 4, 8, 4) if opts.quick else write_photos(data, 16, 24, 16)
            elif task == "faces":
                write_faces(data)
            elif task == "digits":
                write_digits(data)
            else:
                raise SystemExit(f"unknown task {task!r}; choose from photos, faces, digits")
            n_train, n_val = count_images(data / "train"), count_images(data / "val")
            timm = timm_loop(data, epochs)
            default = cnncli_run(data, tmp / f"{task}-default", *(["--epochs", str(epochs)] if opts.quick else []))
            full = cnncli_run(data, tmp / f"{task}-all", "--trainable", "all", "--epochs", str(epochs))
            for name, r, shown in (("timm loop", timm, f"{epochs}"),
                                   ("cnncli default", default, f"{default['head_epochs']} head + {default['epochs']}"),
                                   ("cnncli all", full, f"{full['head_epochs']} head + {full['epochs']}")):
                rows.append([f"{task} ({n_train}/{n_val})", name, shown, f"{r['acc']:.3f}", f"{r['wall']:.0f} s",
                             f"{r['images'] / r['wall']:.1f}", f"{r['acc'] - timm['acc']:+.3f}",
                             f"{r['wall'] / timm['wall']:.2f}x"])
    print_table("fine-tune recipes vs the timm-factory loop (EfficientNet-Lite0, ImageNet weights)",
                ["task (train/val)", "run", "epochs", "val top-1", "wall", "train img/s", "acc - timm",
                 "time / timm"], rows)


if __name__ == "__main__":
    main()
