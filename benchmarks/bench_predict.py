"""Predict speed: cold start of `cnncli --help` and one-image `predict`, and folder throughput of `predict`
against the pure forward throughput of the same engine, batch and threads, measured in the same run.

    uv run python benchmarks/bench_predict.py [--images 256] [--batch-size 32] [--threads 2]
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
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5, help="cold-start repetitions (median)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from cnncli.engines.torch_engine import TorchEngine

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        paths = write_jpeg_folder(folder, args.images)
        cold = [
            ["cnncli --help", median_wall_time(cnncli_cmd("--help"), args.runs)],
            ["cnncli predict one.jpg (torch, default model)",
             median_wall_time(cnncli_cmd("predict", str(paths[0]), "--device", "cpu"), args.runs)],
        ]
        print_table(f"Cold start, median of {args.runs} ({machine_line()})", ["command", "wall s"],
                    [[c, f"{t:.2f}"] for c, t in cold])

        engine = TorchEngine.from_spec(None, device="cpu")
        from cnncli.images import load_and_preprocess

        batch = np.stack([load_and_preprocess(p, engine.card.preprocessing) for p in paths[: args.batch_size]])
        fwd = forward_throughput(engine, batch)
        e2e, done = folder_throughput(engine, folder, args.batch_size, workers=None)
        rows = [[engine.name, args.batch_size, args.threads, f"{fwd:.1f}", f"{e2e:.1f}", f"{e2e / fwd:.2f}"]]
        print_table(f"Folder of {done} JPEGs (500x375), default model", 
                    ["engine", "batch", "threads", "forward img/s", "predict img/s", "ratio"], rows)


if __name__ == "__main__":
    main()
