"""How two single-threaded copies of the engine share a machine against one two-threaded session, by batch size:
issue 24's question of why replicas can cost more CPU per image than one multi-threaded engine fed by decoders.

For each batch size, the default model's export (fp32, onnxruntime, the same session options as predict's
replicas and engine) runs forward passes on one decoded batch of real-looking JPEGs for --seconds in:
  1 x 1 thread      one process, one single-threaded session, pinned to one core (the cost of a forward alone)
  2 x 1 thread      two such processes at once, each pinned to its own core (what replicas do, without the decode)
  1 x 2 threads     one process, one two-threaded session, pinned to both cores (the decoders' engine)
Each process counts its own CPU seconds (``os.times``) and images; the table shows total img/s, CPU ms per image
and each row's ratio to ``1 x 2 threads`` at the same batch size and to ``1 x 2 threads`` at --baseline-batch.

    uv run python benchmarks/bench_forward_share.py [--batches 4,8,16,32] [--seconds 6] [--model M.onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_line, print_table, write_jpeg_folder

CHILD = r"""
import json, os, sys, time
import numpy as np
core, threads, model, batch_file, seconds, start_at = sys.argv[1:7]
os.sched_setaffinity(0, [int(c) for c in core.split(",")])
from cnncli.engines.onnx_engine import OnnxEngine
engine = OnnxEngine(model, device="cpu", threads=int(threads), allow_spinning=False, verbose=False)
batch = np.load(batch_file)
engine.predict_proba(batch)  # warm-up: arena, kernels
while time.time() < float(start_at):
    time.sleep(0.005)
t0, c0, n = time.perf_counter(), os.times(), 0
while time.perf_counter() - t0 < float(seconds):
    engine.predict_proba(batch)
    n += len(batch)
t1, c1 = time.perf_counter(), os.times()
print(json.dumps({"images": n, "wall": t1 - t0, "cpu": (c1.user + c1.system) - (c0.user + c0.system)}))
"""


def run_layout(layout: list[tuple[str, int]], model: str, batch_file: str, seconds: float) -> dict:
    """Start one child per (cores, threads) entry, all timing the same window; their summed figures."""
    start_at = time.time() + 3.0  # after every child has opened its session and warmed up
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, cores, str(threads), model, batch_file, str(seconds),
                               str(start_at)], stdout=subprocess.PIPE, text=True) for cores, threads in layout]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    images = sum(r["images"] for r in results)
    return {"img_s": sum(r["images"] / r["wall"] for r in results), "cpu_ms": sum(r["cpu"] for r in results)
            / images * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="4,8,16,32")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--baseline-batch", type=int, default=32)
    parser.add_argument("--model", default=None, help="an exported .onnx (default: the default model's cached export)")
    args = parser.parse_args()
    import numpy as np

    from cnncli.data.images import load_and_preprocess
    from cnncli.engines.base import open_engine

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("this benchmark needs two usable cores")
    engine = open_engine(args.model, device="cpu", engine="onnx")
    model, pre = str(engine.path), engine.card.preprocessing
    sizes = [int(b) for b in args.batches.split(",")]
    a, b = str(cores[0]), str(cores[1])
    layouts = {"1 x 1 thread": [(a, 1)], "2 x 1 thread": [(a, 1), (b, 1)], "1 x 2 threads": [(f"{a},{b}", 2)]}
    figures: dict[tuple[int, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpeg_folder(Path(tmp) / "jpegs", max(sizes))
        pixels = np.stack([load_and_preprocess(p, pre) for p in paths])
        for size in sizes:
            batch_file = str(Path(tmp) / f"batch{size}.npy")
            np.save(batch_file, pixels[:size])
            for name, layout in layouts.items():
                figures[(size, name)] = run_layout(layout, model, batch_file, args.seconds)
    base_size = args.baseline_batch if (args.baseline_batch, "1 x 2 threads") in figures else sizes[-1]
    base = figures[(base_size, "1 x 2 threads")]
    rows = []
    for (size, name), f in figures.items():
        same = figures[(size, "1 x 2 threads")]
        rows.append([size, name, f"{f['img_s']:.1f}", f"{f['cpu_ms']:.2f}", f"{f['img_s'] / same['img_s']:.2f}",
                     f"{f['img_s'] / base['img_s']:.2f}"])
    print_table(f"Forward passes sharing two cores, {args.seconds:g} s each ({machine_line()}, load "
                f"{os.getloadavg()[0]:.1f}); {Path(model).name}",
                ["batch", "layout", "img/s", "CPU ms/img", "/ 1x2 same batch", f"/ 1x2 batch {base_size}"], rows)


if __name__ == "__main__":
    sys.exit(main())
