"""Predict speed against this machine's CPU-time cap, in one run.

1. Cold start (wall time, median of --runs): `cnncli --help`, one-image `predict` on the PyTorch engine and on the
   default cached-ONNX path, with the CPU time of the latter too.
2. For each core count in --cores (the process and its children pinned to that many cores with
   sched_setaffinity, like `taskset`; engine threads = cores): the decode cost (core-seconds per image: read,
   decode, resize, crop, normalise, in one process), the engine's pure forward img/s at --batch-size, the cap
   ``cores / (decode core-s per image + cores / forward img/s)``, and `predict` over a folder of JPEGs with
   each pipeline forced (replicas: each worker decodes and runs its own batches; decoders: decoder processes
   feeding one multi-threaded engine) and with the default, auto (issue 24: a probe on the first job's first
   batches picks one and keeps the figures; the next job uses them), each as img/s, CPU ms per image (this
   process and its children, user+sys, worker start included) and the ratio to the cap; then the whole command
   ``cnncli predict FOLDER --format jsonl -o FILE`` (start-up, engine choice and output included) twice, the
   first job on this cache and the next; then auto's choices.

    uv run python benchmarks/bench_predict.py [--images 512] [--batch-size 32] [--cores 1,2] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import cnncli_cmd, forward_img_s, machine_line, median_wall_time, print_table, write_jpeg_folder


def cpu_seconds() -> float:
    """user+sys of this process and its waited-for children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def decode_core_seconds(paths: list[Path], pre) -> float:
    """CPU seconds of one core per image for everything predict does to an image before the engine."""
    from cnncli.data.images import load_pixels, normalize

    start = time.process_time()
    for path in paths:
        normalize(load_pixels(path, pre)[None], pre)
    return (time.process_time() - start) / len(paths)


def folder_run(engine, folder: Path, batch_size: int, pipeline: str) -> tuple[float, float, int, str]:
    """(img/s, CPU ms per image, images done, the choice) for predict over ``folder`` with ``pipeline`` (replicas,
    decoders, or auto: chosen by the probe, or by the figures a probe kept)."""
    from cnncli.data.inputs import collect_inputs
    from cnncli.predict.run import predict_items

    items = collect_inputs([str(folder)])
    choices = []
    cpu, start = cpu_seconds(), time.perf_counter()
    done = sum(1 for p in predict_items(engine, items, k=5, batch_size=batch_size, pipeline=pipeline,
                                        on_choice=choices.append) if p.ok)
    wall = time.perf_counter() - start
    return done / wall, (cpu_seconds() - cpu) / done * 1e3, done, choices[0].describe() if choices else ""


def whole_process(folder: Path, out: Path, images: int) -> tuple[float, float, str]:
    """(img/s, CPU ms per image, what --verbose said) of ``cnncli predict FOLDER --format jsonl -o FILE`` as a child
    process (this process's core pinning inherited): start-up, engine choice, every image and the written file."""
    out.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cnncli_cmd("predict", str(folder), "--format", "jsonl", "-o", str(out), "--verbose"),
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rows = sum(1 for _ in out.open()) if out.exists() else 0
    if done.returncode != 0 or rows != images:
        raise RuntimeError(f"cnncli predict FOLDER: exit {done.returncode}, {rows} rows: {done.stderr[-500:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    said = " ".join(line.strip() for line in done.stderr.splitlines() if "pipeline:" in line or "engine:" in line)
    return images / wall, cpu / images * 1e3, said


def cold_cpu(cmd: list[str], runs: int) -> float:
    """Median CPU seconds (user+sys) of ``cmd`` as a child process."""
    values = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        values.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cores", default=None, help="core counts to pin to, comma-separated (default: all usable)")
    parser.add_argument("--runs", type=int, default=5, help="cold-start repetitions (median)")
    parser.add_argument("--forward-seconds", type=float, default=8.0)
    parser.add_argument("--skip-torch", action="store_true", help="leave out the PyTorch engine's rows")
    args = parser.parse_args()

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # measure like an installed tool: bytecode cached
    cache = tempfile.mkdtemp(prefix="cnncli-bench-cache-")
    os.environ["CNNCLI_CACHE"] = cache
    from cnncli.engines.base import open_engine
    from cnncli.predict.replicas import usable_cores

    all_cores = sorted(os.sched_getaffinity(0))
    counts = [int(c) for c in args.cores.split(",")] if args.cores else [len(all_cores)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        paths = write_jpeg_folder(folder, args.images)
        one = str(paths[0])
        onnx_engine = open_engine(None, device="cpu", engine="onnx")  # prepares the cache
        median_wall_time(cnncli_cmd("predict", one), 1)  # writes bytecode caches once
        cold = [["cnncli --help", median_wall_time(cnncli_cmd("--help"), args.runs), None]]
        if not args.skip_torch:
            cold.append(["cnncli predict one.jpg --engine torch",
                         median_wall_time(cnncli_cmd("predict", one, "--engine", "torch", "--device", "cpu"),
                                          args.runs),
                         None])
        cold.append(["cnncli predict one.jpg (auto: cached onnx)",
                     median_wall_time(cnncli_cmd("predict", one), args.runs),
                     cold_cpu(cnncli_cmd("predict", one), args.runs)])
        print_table(f"Cold start, median of {args.runs} ({machine_line()}, load {os.getloadavg()[0]:.1f})",
                   ["command", "wall s", "CPU s"],
                   [[c, f"{t:.2f}", "" if u is None else f"{u:.2f}"] for c, t, u in cold])

        pre = onnx_engine.card.preprocessing
        decode = decode_core_seconds(paths[: min(64, len(paths))], pre)
        from cnncli.data.images import load_and_preprocess

        batch = np.stack([load_and_preprocess(p, pre) for p in paths[: args.batch_size]])
        rows, choices = [], []
        for cores in counts:
            if cores > len(all_cores):
                print(f"(skipping {cores} cores: this machine has {len(all_cores)})")
                continue
            os.sched_setaffinity(0, all_cores[:cores])  # children inherit it, like taskset
            assert usable_cores() == cores
            engines = [("onnxruntime", open_engine(None, device="cpu", engine="onnx", threads=cores))]
            if not args.skip_torch:
                import torch

                torch.set_num_threads(cores)
                engines.append(("torch", open_engine(None, device="cpu", engine="torch", threads=cores)))
            for label, engine in engines:
                fwd = forward_img_s(engine, batch, args.forward_seconds)
                cap = cores / (decode + cores / fwd)
                pipelines = [("replicas", "replicas"), ("decoders + engine threads", "decoders"),
                             ("auto, first job (probe)", "auto"), ("auto, next job (kept figures)", "auto")] \
                    if label != "torch" else [("decoders + engine threads", "decoders")]
                for shown, pipeline in pipelines:
                    ips, cpu_ms, done, choice = folder_run(engine, folder, args.batch_size, pipeline)
                    if pipeline == "auto":
                        choices.append(f"{cores} cores, {shown}: {choice}")
                    rows.append([cores, label, shown, f"{decode * 1e3:.2f}", f"{fwd:.1f}", f"{cap:.1f}",
                                 f"{ips:.1f}", f"{cpu_ms:.2f}", f"{ips / cap:.2f}"])
                if label == "onnxruntime":  # the whole command, as a user runs it: first job, then the next
                    for shown in ("whole `cnncli predict FOLDER`, first job",
                                  "whole `cnncli predict FOLDER`, next job"):
                        ips, cpu_ms, said = whole_process(folder, Path(tmp) / "out.jsonl", len(paths))
                        choices.append(f"{cores} cores, {shown}: {said}")
                        rows.append([cores, "auto", shown, f"{decode * 1e3:.2f}", f"{fwd:.1f}", f"{cap:.1f}",
                                     f"{ips:.1f}", f"{cpu_ms:.2f}", f"{ips / cap:.2f}"])
        os.sched_setaffinity(0, all_cores)
        print_table(f"Folder of {args.images} JPEGs (500x375), default model (efficientnet_lite0, fp32), batch "
                    f"{args.batch_size}; cap = cores / (decode core-s per image + cores / forward img/s)",
                    ["cores", "engine", "pipeline", "decode ms/img", "forward img/s", "cap img/s", "predict img/s",
                     "CPU ms/img", "predict / cap"], rows)
        for line in choices:
            print(line)
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (figures are only meaningful on a quiet machine)")


if __name__ == "__main__":
    sys.exit(main())
