"""PyTorch eager vs onnxruntime fp32 and static int8 vs OpenVINO f32, bf16 and int8 (the same QDQ file) on the
default model, in one run, same threads.

Prints: p50/p95 latency at batch 1, throughput at batch 32, the ratio to PyTorch eager; for int8 and bf16 the
figures as the field judges them (cnncli.export.judge): (a) top-1 accuracy on the labelled ImageNet validation
images against fp32's, (b) agreement where fp32's top-1 leads by >= 0.10, (c) batch-32 throughput over fp32's
(int8 over the same runtime's fp32, bf16 over OpenVINO f32); int8 top-1 agreement with fp32 on two sets of real images
(labelled ImageNet validation images and photo crops, see common.py) with fp32's top-1/top-2 probabilities on
every image where int8 differs; and the cold start of `cnncli predict one.jpg` with the .onnx file versus the
default (PyTorch) path (subprocess wall time, median of a few runs). On a CPU without AVX-512 BF16 / AMX the bf16
row is left out (OpenVINO would run f32).

    uv run python benchmarks/bench_engines.py [--threads 2] [--runs 30] [--cold 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import write_imagenet_samples, write_photo_crops

from cnncli.core.cpus import usable_cores


def timed_rounds(engines: dict, batch: np.ndarray, rounds: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call for each engine, calls interleaved round by round so that load from other processes on a
    shared machine falls on every engine alike."""
    for engine in engines.values():
        for _ in range(warmup):
            engine.predict_proba(batch)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            t = time.perf_counter()
            engine.predict_proba(batch)
            times[name].append(time.perf_counter() - t)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cold_start(args: list[str], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cnncli", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="batch-1 timings per engine")
    parser.add_argument("--repeats", type=int, default=5, help="batch-32 passes per engine (median)")
    parser.add_argument("--cold", type=int, default=5, help="cold-start runs per path")
    opts = parser.parse_args()

    import os

    import torch

    from cnncli.core.numeric import softmax
    from cnncli.engines.onnx_engine import OnnxEngine
    from cnncli.engines.torch_engine import TorchEngine
    from cnncli.export.to_onnx import export_onnx, load_images
    from cnncli.models.registry import create_model

    torch.set_num_threads(opts.threads)
    work = Path(tempfile.mkdtemp(prefix="cnncli-bench-"))
    crops = write_photo_crops(work / "images")
    images = [path for path, _ in crops]
    held_out = np.array([crop % 2 == 1 for _, crop in crops])  # crops 1, 3, 5 and mirrors: not calibrated on
    built = create_model("efficientnet_lite0", weights="default")
    model, card = built.model.eval(), built.card
    calib = [path for path, crop in crops if crop % 2 == 0]
    fp32 = export_onnx(model, card, work / "default.onnx", simplify=True, verify_images=images)
    int8 = export_onnx(model, card, work / "default.int8.onnx", precision="int8-static", calib_images=calib,
                       verify_images=images)

    engines = {
        "PyTorch eager (channels_last)": TorchEngine(model, card, device="cpu"),
        "onnxruntime fp32": OnnxEngine(fp32.path, device="cpu", threads=opts.threads, allow_spinning=False,
                                       verbose=False),
        "onnxruntime int8 static (QDQ)": OnnxEngine(int8.path, device="cpu", threads=opts.threads,
                                                    allow_spinning=False, verbose=False),
    }
    from cnncli.engines.openvino_engine import OpenVinoEngine, openvino_available

    if openvino_available():
        import openvino

        engines["OpenVINO f32 (latency hint)"] = OpenVinoEngine(fp32.path, threads=opts.threads)
        engines["OpenVINO int8 (same QDQ file)"] = OpenVinoEngine(int8.path, threads=opts.threads, precision="int8")
        if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            engines["OpenVINO bf16"] = OpenVinoEngine(fp32.path, threads=opts.threads, precision="bf16")
    x = load_images(images, card)
    one, b32 = x[:1], np.concatenate([x] * (32 // len(x) + 1))[:32]
    single = timed_rounds(engines, one, opts.runs)
    batched = timed_rounds(engines, b32, opts.repeats, warmup=1)
    rows = [(name, percentile(single[name], 0.5) * 1e3, percentile(single[name], 0.95) * 1e3,
             len(b32) / statistics.median(batched[name])) for name in engines]

    fp32_engine, int8_engine = engines["onnxruntime fp32"], engines["onnxruntime int8 static (QDQ)"]
    samples = write_imagenet_samples(work / "imagenet")
    labels = np.array([label for _, label in samples])
    image_sets = {"ImageNet validation": load_images([path for path, _ in samples], card), "photo crops": x}
    agreement_lines, all_fp32, all_int8 = [], [], []
    for set_name, batch in image_sets.items():
        all_fp32.append(fp32_engine.predict_logits(batch))
        all_int8.append(int8_engine.predict_logits(batch))
        fp32_probs, int8_probs = softmax(all_fp32[-1]), softmax(all_int8[-1])
        top2 = np.sort(fp32_probs, axis=1)[:, -2:]
        differ = fp32_probs.argmax(1) != int8_probs.argmax(1)
        margins = ", ".join(f"{a:.3f}/{b:.3f}" for b, a in top2[differ])
        line = (f"  {set_name}: {1 - differ.mean():.1%} of {len(batch)} ({int(differ.sum())} differ; "
                f"fp32 top-1/top-2 there: {margins or '-'})")
        if set_name == "ImageNet validation":
            line += (f"; top-1 accuracy against the labels: fp32 {(fp32_probs.argmax(1) == labels).mean():.1%}, "
                     f"int8 {(int8_probs.argmax(1) == labels).mean():.1%}")
        else:
            line += f"; on the {int(held_out.sum())} crops not calibrated on: {1 - differ[held_out].mean():.1%}"
        agreement_lines.append(line)
    reference, quantized = np.concatenate(all_fp32), np.concatenate(all_int8)
    sqnr = 10 * np.log10((reference**2).sum() / ((reference - quantized) ** 2).sum())

    from cnncli.export.judge import judge_precision

    speed = {name: ips for name, _, _, ips in rows}
    imagenet = image_sets["ImageNet validation"]
    judged = [("int8 static (onnxruntime)", int8_engine, fp32_engine, "onnxruntime fp32",
               "onnxruntime int8 static (QDQ)")]
    if "OpenVINO int8 (same QDQ file)" in engines:
        judged.append(("int8 static (OpenVINO)", engines["OpenVINO int8 (same QDQ file)"],
                       engines["OpenVINO f32 (latency hint)"], "OpenVINO f32 (latency hint)",
                       "OpenVINO int8 (same QDQ file)"))
    if "OpenVINO bf16" in engines:
        judged.append(("bf16 (OpenVINO)", engines["OpenVINO bf16"], engines["OpenVINO f32 (latency hint)"],
                       "OpenVINO f32 (latency hint)", "OpenVINO bf16"))
    judged_lines = []
    for label, low, ref, ref_name, low_name in judged:
        figures = judge_precision(ref.predict_proba(imagenet), low.predict_proba(imagenet), labels,
                                  precision=label.split()[0], fp32_throughput=speed[ref_name],
                                  throughput=speed[low_name])
        judged_lines.append(f"{label} against {ref_name}, on the {len(labels)} labelled ImageNet images "
                            f"({'passes' if figures.passed else 'FAILS'}):")
        judged_lines += ["  " + line for line in figures.lines("the ImageNet images")]

    photo = str(images[0])
    cold_onnx = cold_start(["predict", photo, "--model", str(fp32.path), "--device", "cpu", "-f", "json"], opts.cold)
    cold_torch = cold_start(["predict", photo, "--engine", "torch", "--device", "cpu", "-f", "json"], opts.cold)

    base = rows[0][3]
    print(f"default model efficientnet_lite0, {opts.threads} threads (onnxruntime without spinning), "
          f"{usable_cores()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'engine':32} {'b1 p50 ms':>10} {'b1 p95 ms':>10} {'b32 img/s':>10} {'vs eager':>9}")
    for name, p50, p95, ips in rows:
        print(f"{name:32} {p50:10.1f} {p95:10.1f} {ips:10.1f} {ips / base:8.2f}x")
    print(f"int8 static vs fp32 top-1 agreement (calibrated on {len(calib)} photo crops), logit SQNR {sqnr:.1f} dB, "
          f"file {int8.size_bytes / 1e6:.1f} MB vs {fp32.size_bytes / 1e6:.1f} MB:")
    print("\n".join(agreement_lines))
    print("\n".join(judged_lines))
    print(f"cold start `cnncli predict one.jpg` (median of {opts.cold}): .onnx {cold_onnx:.2f} s, "
          f"default model on the PyTorch engine {cold_torch:.2f} s, ratio {cold_onnx / cold_torch:.2f}")


if __name__ == "__main__":
    main()
