"""Predict at scale, one run: images/s of single-process `cnncli predict --format parquet` against `--ray` (a local
Ray on this machine's cores) on the same JPEGs, the per-core decode and forward rates that the "At scale" section
of benchmarks/README.md extrapolates from, and the driver's side of a huge job: parts per second and peak RSS for
a listing of 1,000,000 synthetic object keys going through the real sharding, manifest and part-writing code.

    uv run python benchmarks/bench_scale.py [--images 2000] [--keys 1000000] [--model MODEL]
    uv run python benchmarks/bench_scale.py --images 40 --keys 20000 --model tiny.onnx   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cnncli_cmd, machine_line, print_table, write_jpeg_folder


def run_job(folder: Path, out: Path, model: str | None, extra: list[str]) -> tuple[float, float, int]:
    """(summary img/s, wall seconds of the whole command, exit code) of one parquet job."""
    cmd = cnncli_cmd("predict", str(folder), "--format", "parquet", "--output", str(out), *extra)
    if model:
        cmd += ["--model", model]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    wall = time.perf_counter() - start
    found = re.search(r"([\d,.]+) img/s", " ".join(result.stderr.split()))
    if result.returncode not in (0, 1) or not found:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return float(found.group(1).replace(",", "")), wall, result.returncode


def per_core_rates(folder: Path, model: str | None, seconds: float = 5.0) -> tuple[float, float]:
    """(decode img/s, forward img/s) of one core: load_pixels on the JPEGs, and the engine with one thread."""
    import numpy as np

    from cnncli.data.images import load_pixels, normalize
    from cnncli.engines.base import open_engine

    engine = open_engine(model, device="cpu", threads=1)
    pre = engine.card.preprocessing
    files = sorted(folder.glob("*.jpg"))
    n, start = 0, time.process_time()
    pixels = []
    while time.process_time() - start < seconds or not pixels:
        pixels.append(load_pixels(files[n % len(files)], pre))
        n += 1
        pixels = pixels[-32:]
    decode = n / (time.process_time() - start)
    batch = normalize(np.stack(pixels), pre)
    engine.predict_proba(batch)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.predict_proba(batch)
        n += len(batch)
    return decode, n / (time.perf_counter() - start)


def listing_child(keys: int, shard_size: int, out: str) -> None:
    """In a fresh process: synthetic keys -> sorted list, fingerprint, shards, manifest, one part per shard (rows
    with a path and a three-class prediction); prints JSON with the timings and the peak RSS."""
    import resource

    from cnncli.predict.run import Prediction
    from cnncli.scale.parts import Job, OutputFolder, check_output, inputs_fingerprint, shard_bounds
    from cnncli.scale.shards import part_bytes

    part_bytes([Prediction(path="warm-up")], {})  # imports pyarrow.parquet outside the timings
    start = time.perf_counter()
    paths = sorted(f"s3://bucket/archive/{i % 997:03d}/{i:09d}.jpg" for i in range(keys))
    listed = time.perf_counter()
    job = Job(inputs_sha256=inputs_fingerprint(paths), inputs=len(paths), model=["sha256:" + "0" * 64],
              settings={"top_k": 3}, shard_size=shard_size)
    folder = OutputFolder(out)
    check_output(folder, job, resume=False)
    folder.write_manifest(job)
    top = [{"label": c, "index": i, "prob": p} for i, (c, p) in enumerate((("a", 0.7), ("b", 0.2), ("c", 0.1)))]
    planned = time.perf_counter()
    bounds = shard_bounds(len(paths), shard_size)
    for index, (lo, hi) in enumerate(bounds):
        preds = [Prediction(path=p, top=top) for p in paths[lo:hi]]
        folder.write_part(index, part_bytes(preds, job.part_metadata(index)))
    done = time.perf_counter()
    print(json.dumps({"keys": keys, "parts": len(bounds), "list_sort_s": listed - start,
                      "plan_s": planned - listed, "parts_s": done - planned,
                      "parts_per_s": len(bounds) / (done - planned),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--model", default=None, help="default: cnncli's default model (efficientnet_lite0)")
    parser.add_argument("--listing-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listing_child:
        return listing_child(args.keys, args.shard_size, args.listing_child)

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # measure like an installed tool: bytecode cached
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        write_jpeg_folder(images, args.images)
        shard = str(max(1, min(args.shard_size, args.images // 8)))  # enough shards to keep every actor busy
        run_job(images, tmp / "warm", args.model, ["--shard-size", shard])  # the ONNX export, file cache
        single, single_wall, _ = run_job(images, tmp / "single", args.model, ["--shard-size", shard])
        ray, ray_wall, _ = run_job(images, tmp / "ray", args.model, ["--shard-size", shard, "--ray"])
        print_table(f"{args.images} JPEGs (500x375), --format parquet, shards of {shard}",
                    ["run", "img/s", "command s"],
                    [["single process", f"{single:.1f}", f"{single_wall:.1f}"],
                     ["--ray (local)", f"{ray:.1f}", f"{ray_wall:.1f}"]])
        print(f"ray / single img/s: {ray / single:.2f}x (the issue asks >= 0.8x on 2 cores)")
        decode, forward = per_core_rates(images, args.model)
        per_core = 1 / (1 / decode + 1 / forward)
        print(f"one core: decode {decode:.1f} img/s, forward {forward:.1f} img/s (1 thread), "
              f"decode+forward in series {per_core:.1f} img/s")

        child = subprocess.run([sys.executable, __file__, "--listing-child", str(tmp / "listing"),
                                "--keys", str(args.keys), "--shard-size", str(args.shard_size)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(child.stderr[-3000:])
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print_table(f"driver side of a {r['keys']:,}-key listing, shards of {args.shard_size}",
                    ["keys", "parts", "keys+sort s", "fingerprint+manifest s", "parts/s", "peak RSS MiB"],
                    [[f"{r['keys']:,}", r["parts"], f"{r['list_sort_s']:.2f}", f"{r['plan_s']:.2f}",
                      f"{r['parts_per_s']:.1f}", f"{r['peak_rss_mib']:.0f}"]])


if __name__ == "__main__":
    main()
