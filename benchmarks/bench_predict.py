"""Predict speed, both engines, one run: cold start of `cnncli --help` and of one-image `predict` (PyTorch
engine, and the default onnxruntime engine from the cached export), folder throughput of `predict` over JPEGs
against the pure forward throughput of the same engine, batch and threads, and the ratios.

    uv run python benchmarks/bench_predict.py [--images 512] [--batch-size 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common import cnncli_cmd, machine_line, median_wall_time, print_table, write_jpeg_folder


def forward_throughput(engine, batch: np.ndarray, seconds: float = 8.0) -> float:
    engine.predict_proba(batch)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.predict_proba(batch)
        n += len(batch)
    return n / (time.perf_counter() - start)


def folder_throughput(engine, folder: Path, batch_size: int, workers: int | None) -> tuple[float, int]:
    from cnncli.pipeline import collect_inputs
    from cnncli.predict import predict_items

    items = collect_inputs([str(folder)])
    start = time.perf_counter()
    done = sum(1 for p in predict_items(engine, items, k=5, batch_size=batch_size, workers=workers) if p.ok)
    return done / (time.perf_counter() - start), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None, help="decoder processes (default: cnncli's choice)")
    parser.add_argument("--runs", type=int, default=5, help="cold-start repetitions (median)")
    args = parser.parse_args()

    import os

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # measure like an installed tool: bytecode cached
    cache = tempfile.mkdtemp(prefix="cnncli-bench-cache-")
    os.environ["CNNCLI_CACHE"] = cache
    import torch

    torch.set_num_threads(args.threads)
    from cnncli.engines import open_engine
    from cnncli.images import load_and_preprocess

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        paths = write_jpeg_folder(folder, args.images)
        one = str(paths[0])
        onnx_engine = open_engine(None, device="cpu", engine="onnx", threads=args.threads)  # prepares the cache
        torch_engine = open_engine(None, device="cpu", engine="torch", threads=args.threads)
        median_wall_time(cnncli_cmd("predict", one), 1)  # writes bytecode caches once
        cold = [
            ["cnncli --help", median_wall_time(cnncli_cmd("--help"), args.runs)],
            ["cnncli predict one.jpg --engine torch",
             median_wall_time(cnncli_cmd("predict", one, "--engine", "torch", "--device", "cpu"), args.runs)],
            ["cnncli predict one.jpg (auto: cached onnx)", median_wall_time(cnncli_cmd("predict", one), args.runs)],
        ]
        print_table(f"Cold start, wall time, median of {args.runs} ({machine_line()})", ["command", "seconds"],
                    [[c, f"{t:.2f}"] for c, t in cold])

        rows = []
        batch = np.stack([load_and_preprocess(p, onnx_engine.card.preprocessing) for p in paths[: args.batch_size]])
        for engine in (torch_engine, onnx_engine):
            fwd = forward_throughput(engine, batch)
            e2e, done = folder_throughput(engine, folder, args.batch_size, workers=args.workers)
            rows.append([engine.name, args.batch_size, args.threads, f"{fwd:.1f}", f"{e2e:.1f}", f"{e2e / fwd:.2f}"])
        print_table(f"Folder of {done} JPEGs (500x375), default model (efficientnet_lite0, fp32)",
                    ["engine", "batch", "threads", "forward img/s", "predict img/s", "predict / forward"], rows)
        torch_e2e, onnx_e2e = float(rows[0][4]), float(rows[1][4])
        print(f"\nonnx / torch end-to-end: {onnx_e2e / torch_e2e:.1f}x; one-image cold start torch / onnx: "
              f"{cold[1][1] / cold[2][1]:.1f}x")


if __name__ == "__main__":
    main()
