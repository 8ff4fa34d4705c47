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
   first job on this cache and the next; then auto's choices. ``--rounds N`` runs every folder row N times,
   interleaved (odd rounds in reverse order, the kept figures forgotten before each round's first jobs), and
   shows the median img/s with the range: on a shared or virtual machine one run of a row can be 15% off.

    uv run python benchmarks/bench_predict.py [--images 512] [--batch-size 32] [--cores 1,2] [--runs 5] [--rounds 3]
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


def forget_kept_figures(cache: str) -> None:
    """Remove the pipeline figures and the OpenVINO check this run's cache kept: the next job is a first job."""
    from cnncli.engines.openvino_choice import CHECK_FILE
    from cnncli.predict.pipeline import FIGURES_FILE

    for name in (FIGURES_FILE, CHECK_FILE):
        (Path(cache) / name).unlink(missing_ok=True)


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
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every folder row this many times, interleaved; the median (and the range)")
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
                if label == "onnxruntime":  # the whole command, as a user runs it: first job, then the next
                    pipelines += [("whole `cnncli predict FOLDER`, first job", "whole"),
                                  ("whole `cnncli predict FOLDER`, next job", "whole")]
                measured: dict[str, list[tuple[float, float]]] = {shown: [] for shown, _ in pipelines}
                for round_ in range(args.rounds):  # interleaved: a slow spell of the machine hits every row
                    order = pipelines if round_ % 2 == 0 else pipelines[::-1]
                    forget_kept_figures(cache)  # each round's first jobs are first jobs again
                    for shown, pipeline in sorted(order, key=lambda row: "next job" in row[0]):
                        if pipeline == "whole":
                            ips, cpu_ms, choice = whole_process(folder, Path(tmp) / "out.jsonl", len(paths))
                        else:
                            ips, cpu_ms, done, choice = folder_run(engine, folder, args.batch_size, pipeline)
                        measured[shown].append((ips, cpu_ms))
                        if pipeline in ("auto", "whole") and round_ == 0:
                            choices.append(f"{cores} cores, {shown}: {choice}")
                for shown, _ in pipelines:
                    ips = statistics.median(v for v, _ in measured[shown])
                    cpu_ms = statistics.median(c for _, c in measured[shown])
                    spread = "" if args.rounds == 1 else \
                        f" ({min(v for v, _ in measured[shown]):.1f}-{max(v for v, _ in measured[shown]):.1f})"
                    rows.append([cores, "auto" if shown.startswith("whole") else label, shown,
                                 f"{decode * 1e3:.2f}", f"{fwd:.1f}", f"{cap:.1f}", f"{ips:.1f}{spread}",
                                 f"{cpu_ms:.2f}", f"{ips / cap:.2f}"])
        os.sched_setaffinity(0, all_cores)
        from cnncli.predict.replicas import REPLICA_BATCH

        print_table(f"Folder of {args.images} JPEGs (500x375), default model (efficientnet_lite0, fp32), batch "
                    f"{args.batch_size} (replicas: at most {REPLICA_BATCH} per forward); cap = cores / (decode "
                    "core-s per image + cores / forward img/s at that batch)",
                    ["cores", "engine", "pipeline", "decode ms/img", "forward img/s", "cap img/s", "predict img/s",
                     "CPU ms/img", "predict / cap"], rows)
        for line in choices:
            print(line)
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (figures are only meaningful on a quiet machine)")


if __name__ == "__main__":
    sys.exit(main())
