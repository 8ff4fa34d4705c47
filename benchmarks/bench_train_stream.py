"""Training throughput from streamed data against a local folder: the same LeNet-5 run on the same digits (32 px
grayscale PNGs) from the class folder, from packed WebDataset shards in a local folder, and from the same shards in
moto's S3 server on loopback; img/s of the training epochs, the share of the epoch spent waiting for the next
batch (data wait), and each source's img/s as a ratio of the folder's. Prints one table.

    uv run python benchmarks/bench_train_stream.py [--images 1797] [--epochs 3] [--workers 2] [--shard-size 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


class TimedLoader:
    """A loader that adds up the time spent waiting for each batch."""

    def __init__(self, loader) -> None:
        self.loader, self.wait, self.images = loader, 0.0, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        iterator = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.wait += time.perf_counter() - t0
            self.images += len(batch)
            yield batch


def train_once(data: str, out: Path, args) -> dict:
    from cnncli.train.config import TrainConfig
    from cnncli.train.run import TrainingRun

    cfg = TrainConfig(data=data, arch="lenet5", epochs=args.epochs, image_size=32, grayscale=True, batch_size=32,
                      workers=args.workers, out=str(out), quiet=True, seed=0, cache_size="0")
    run = TrainingRun.prepare(cfg)
    timed = TimedLoader(run.step.loader)
    run.step = replace(run.step, loader=timed)
    t0 = time.perf_counter()
    result = run.fit()
    per_epoch = timed.images / len(result.history)
    train_seconds = sum(per_epoch / max(row["train_img_s"], 1e-9) for row in result.history)
    return {"img_s": timed.images / max(train_seconds, 1e-9), "wait": timed.wait / max(train_seconds, 1e-9),
            "val_acc": result.history[-1]["val_acc"], "wall": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1797, help="digits to use (at most 1797)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for every source")
    parser.add_argument("--shard-size", type=int, default=200)
    args = parser.parse_args()

    from scale_helpers import moto_s3, upload_folder
    from train_data import write_digits

    from cnncli.data.pack import pack_dataset

    work = Path(tempfile.mkdtemp(prefix="bench-train-stream-"))
    os.environ.setdefault("CNNCLI_CACHE", str(work / "cache"))
    try:
        per_class = None if args.images >= 1797 else max(2, args.images // 10)
        folder = write_digits(work / "digits", per_class=per_class)
        pack_dataset(str(folder), str(work / "packed"), shard_size=args.shard_size, quiet=True)
        rows = []
        with moto_s3() as env:
            os.environ.update(env)
            upload_folder(env, "bench", work / "packed", "digits/")
            for name, source in (("folder", str(folder)), ("local shards", str(work / "packed")),
                                 ("S3 shards (moto, loopback)", "s3://bench/digits")):
                rows.append((name, train_once(source, work / f"run-{len(rows)}", args)))
        base = rows[0][1]["img_s"]
        print(f"LeNet-5, {sum(1 for _ in folder.rglob('*.png'))} digits (32 px), {args.epochs} epochs, batch 32, "
              f"{args.workers} workers, shards of {args.shard_size}")
        print(f"{'source':<28} {'train img/s':>12} {'data wait':>10} {'x folder':>9} {'val acc':>8}")
        for name, row in rows:
            print(f"{name:<28} {row['img_s']:>12.1f} {row['wait']:>9.0%} {row['img_s'] / base:>8.2f}x "
                  f"{row['val_acc']:>8.4f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
