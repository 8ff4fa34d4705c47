"""``--engine auto`` on OpenVINO where it pays: where openvino is installed, exact, faster, and the job large enough
to repay its longer start: at least :data:`OPENVINO_MIN_IMAGES` images and :data:`REPAY_MARGIN` times the images
after which its faster forward has paid for importing OpenVINO and loading the compiled model
(:func:`images_to_repay`). On a 2-core Intel Xeon a 512-JPEG job took 5.9 s on OpenVINO against 5.6 s on
onnxruntime: the forward it saves there is smaller than its start.

Exact, faster and the start-up times are checked once per machine and model, on the cached ONNX export itself: both
engines run the same fixed batch (f32 logits within the export tolerance of onnxruntime's,
``FP32_RELATIVE_TOLERANCE`` of the logit range) and are timed (best of a few forwards each; each engine's start
timed, OpenVINO's from its model cache as later jobs start); the verdict is kept in
``<cache>/openvino_check.json``, keyed by the CPU model, the usable cores and the model file's sha256. Smaller jobs
never look at any of this, so the one-image cold start imports neither OpenVINO nor torch.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

OPENVINO_MIN_IMAGES = 2048  # smaller jobs never run the check (seconds, once): on the EPYC of issue 24 (1.17x the
# forward, a start ~0.5 s longer) a job had to be about 1900 images to repay it twice
CHECK_FILE = "openvino_check.json"
CHECK_FORMAT = 2  # 2: start-up times too
CHECK_BATCH = 8
CHECK_FORWARDS = 3
FASTER = 1.05  # OpenVINO must beat onnxruntime by 5% to be worth the import...
REPAY_MARGIN = 2.0  # ...and the job be twice as large as the images that repay its longer start


def check_key(path: Path) -> str:
    from cnncli.core.cpus import cpu_model, usable_cores
    from cnncli.models.weights import sha256_of

    return "|".join([cpu_model(), f"cores={usable_cores()}", sha256_of(path)[:16]])


def read_checks() -> dict:
    from cnncli.engines.cache import read_kept

    return read_kept(CHECK_FILE, CHECK_FORMAT, "models")


def _best_img_s(engine, batch: np.ndarray) -> tuple[np.ndarray, float]:
    logits = engine.predict_logits(batch)  # warm-up; these logits are compared
    best = float("inf")
    for _ in range(CHECK_FORWARDS):
        start = time.perf_counter()
        engine.predict_logits(batch)
        best = min(best, time.perf_counter() - start)
    return logits, len(batch) / best


def check_openvino(path: Path, threads: int | None = None) -> dict:
    """Run onnxruntime and OpenVINO on the same fixed batch: {"exact", "relative_diff", "onnx_img_s",
    "openvino_img_s", "faster"}."""
    from cnncli.engines.onnx_engine import OnnxEngine
    from cnncli.engines.openvino_engine import OpenVinoEngine
    from cnncli.export.to_onnx import FP32_RELATIVE_TOLERANCE

    start = time.perf_counter()
    onnx = OnnxEngine(path, device="cpu", threads=threads, allow_spinning=False, verbose=False)
    onnx_start_s = time.perf_counter() - start
    pre = onnx.card.preprocessing
    batch = np.random.default_rng(0).standard_normal((CHECK_BATCH, pre.channels, *pre.input_size)).astype(np.float32)
    reference, onnx_img_s = _best_img_s(onnx, batch)
    start = time.perf_counter()
    import openvino  # noqa: F401 - its import is part of what a job pays

    import_s = time.perf_counter() - start
    OpenVinoEngine(path, threads=threads, card=onnx.card)  # the first compile fills OpenVINO's model cache...
    start = time.perf_counter()
    candidate_engine = OpenVinoEngine(path, threads=threads, card=onnx.card)  # ...which later jobs start from
    openvino_start_s = import_s + time.perf_counter() - start
    candidate, openvino_img_s = _best_img_s(candidate_engine, batch)
    spread = float(reference.max() - reference.min()) or 1.0
    relative = float(np.abs(candidate - reference).max()) / spread
    exact = bool(np.isfinite(candidate).all()) and relative <= FP32_RELATIVE_TOLERANCE
    return {"exact": exact, "relative_diff": relative, "onnx_img_s": round(onnx_img_s, 1),
            "openvino_img_s": round(openvino_img_s, 1), "onnx_start_s": round(onnx_start_s, 3),
            "openvino_start_s": round(openvino_start_s, 3),
            "faster": bool(openvino_img_s >= FASTER * onnx_img_s)}


def images_to_repay(verdict: dict) -> float:
    """Images after which OpenVINO's faster forward has paid for its longer start (import and model load) over
    onnxruntime's: start difference / forward time saved per image; infinite where it saves nothing."""
    onnx, openvino = float(verdict["onnx_img_s"]), float(verdict["openvino_img_s"])
    saved = 1.0 / onnx - 1.0 / openvino if onnx > 0 and openvino > 0 else 0.0
    if saved <= 0:
        return float("inf")
    return max(0.0, float(verdict["openvino_start_s"]) - float(verdict["onnx_start_s"])) / saved


def openvino_pays(path: Path, job_images: int | None, threads: int | None = None) -> bool:
    """Whether ``--engine auto`` should run this fp32 ONNX file on OpenVINO for a job of ``job_images`` images.
    Any failure of the check means no (onnxruntime, as before)."""
    if not job_images or job_images < OPENVINO_MIN_IMAGES:
        return False
    from cnncli.engines.openvino_engine import openvino_available

    if not openvino_available():
        return False
    try:
        key = check_key(Path(path))
        verdict = read_checks().get(key)
        if verdict is None:
            from cnncli.engines.cache import keep

            verdict = check_openvino(Path(path), threads)
            keep(CHECK_FILE, CHECK_FORMAT, "models", key, verdict)
        return bool(verdict.get("exact") and verdict.get("faster")) and \
            job_images >= REPAY_MARGIN * images_to_repay(verdict)
    except Exception:  # noqa: BLE001 - OpenVINO missing a kernel, a read-only cache...: onnxruntime runs it
        return False
