"""Inference engines behind one interface: ``engine.predict_proba(batch) -> probabilities``.

An engine takes a float32 array (N, C, H, W) made by :func:`cnncli.data.images.preprocess` and returns float32
probabilities (N, classes). :func:`open_engine` picks the engine for a model spec; this module does not
import torch, and a ``.onnx`` spec opens the onnxruntime engine without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from cnncli.core.numeric import softmax  # noqa: F401 - re-exported
from cnncli.models.card import ModelCard


class Engine(Protocol):
    card: ModelCard
    name: str  # "torch (cpu)", "onnxruntime (CPUExecutionProvider)", ...

    def predict_proba(self, batch: np.ndarray) -> np.ndarray: ...


def is_onnx_spec(model: str | None) -> bool:
    return model is not None and model.lower().endswith(".onnx")


ENGINES = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("fp32", "int8", "bf16")


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU driver loaded (checked without importing torch)."""
    return os.path.exists("/proc/driver/nvidia/version")


def ort_has_cuda() -> bool:
    from cnncli.export.onnx_io import onnxruntime_installed

    if not onnxruntime_installed():
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def choose_engine(engine: str, device: str, precision: str = "fp32") -> str:
    """``auto``: onnxruntime on CPU (from the cached export), PyTorch on a CUDA GPU unless onnxruntime has CUDA;
    OpenVINO for ``--precision bf16``. For fp32, :func:`open_engine` moves a large job from onnxruntime to OpenVINO
    where it is installed, exact and faster (:mod:`cnncli.engines.openvino_choice`); a small one never imports it
    (0.3-0.6 s, which would break the one-image cold start)."""
    from cnncli.core.devices import parse_device
    from cnncli.core.errors import UsageError

    device = parse_device(device)
    if engine not in ENGINES:
        raise UsageError(f"unknown --engine {engine!r}; choose one of: {', '.join(ENGINES)}.")
    if engine != "auto":
        return engine
    if precision == "bf16":
        return "openvino"
    from cnncli.export.onnx_io import onnxruntime_installed

    if not onnxruntime_installed():  # neither cnncli[cpu] nor cnncli[gpu]: PyTorch runs the model
        return "torch"
    wants_gpu = device.startswith("cuda") or (device == "auto" and gpu_present())
    return "torch" if wants_gpu and not ort_has_cuda() else "onnx"


def open_engine(model: str | None, device: str = "auto", weights: str | None = None,
                threads: int | None = None, engine: str = "auto", precision: str = "fp32",
                calib: str | None = None, job_images: int | None = None) -> Engine:
    """The engine for ``model``: an exported ``.onnx`` file (onnxruntime, no torch), a registry name
    (pretrained weights), a cnncli .safetensors file, or None for the default model.

    With ``engine`` auto or onnx, a PyTorch model runs on onnxruntime from a cached, verified export
    (:mod:`cnncli.engines.cache`); once the cache holds it, torch is not imported. ``precision`` int8 uses a
    static-int8 export calibrated on ``calib`` (a folder of images) or, without it, on the calibration set that
    train/finetune recorded in the model file. ``engine`` openvino compiles the same cached export with OpenVINO
    (:mod:`cnncli.engines.openvino_engine`): f32, bf16 with ``precision`` bf16, or the static-int8 export. ``threads``
    sets intra-op threads. ``job_images``: how many images the engine is for; with ``engine`` auto, fp32, on the
    CPU, a job large enough runs on OpenVINO where :func:`cnncli.engines.openvino_choice.openvino_pays`.
    """
    from cnncli.core.errors import ModelFileError, UsageError

    if is_onnx_spec(model):
        if weights is not None:
            raise UsageError(f"--weights does not apply to an ONNX file ({model}); its weights are inside it.")
        if engine == "torch":
            raise UsageError(f"{model} is an ONNX file: it runs on onnxruntime or OpenVINO, not --engine torch.")
        if choose_engine(engine, device, precision) == "openvino" or \
                _auto_openvino(model, engine, device, precision, job_images, threads):
            return _openvino(model, device, threads, "bf16" if precision == "bf16" else "fp32")
        from cnncli.engines.onnx_engine import OnnxEngine

        return OnnxEngine(model, device=device, threads=threads)
    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r}; choose one of: {', '.join(PRECISIONS)}.")
    chosen = choose_engine(engine, device, precision)
    if precision == "int8" and chosen not in ("onnx", "openvino"):
        raise UsageError("--precision int8 runs on onnxruntime or OpenVINO; "
                         "use --engine onnx, openvino (or auto on CPU).")
    if precision == "bf16" and chosen != "openvino":
        raise UsageError("--precision bf16 runs on OpenVINO; use --engine openvino (or auto).")
    calib_images = None
    if precision == "int8":
        from cnncli.export.calibration import calibration_images

        calib_images = calibration_images(model, calib)
    if chosen == "openvino":
        from cnncli.engines.cache import prepare_cached_onnx

        path = prepare_cached_onnx(model, weights, precision="int8" if precision == "int8" else "fp32",
                                   calib_images=calib_images)
        if path is None:
            raise UsageError("a model with random weights (--weights none) is not exported; use --engine torch.")
        return _openvino(path, device, threads, precision)
    if chosen == "onnx":
        from cnncli.engines.cache import prepare_cached_onnx
        from cnncli.engines.onnx_engine import OnnxEngine

        path = prepare_cached_onnx(model, weights, precision=precision, calib_images=calib_images)
        if path is not None and _auto_openvino(path, engine, device, precision, job_images, threads):
            return _openvino(path, device, threads, precision)
        if path is not None:
            try:
                return OnnxEngine(path, device=device, threads=threads, allow_spinning=False, verbose=False)
            except ModelFileError:  # a truncated or corrupt cache entry: make it again
                path.unlink(missing_ok=True)
                path = prepare_cached_onnx(model, weights, precision=precision, calib_images=calib_images)
                return OnnxEngine(path, device=device, threads=threads, allow_spinning=False, verbose=False)
        if engine == "onnx":
            raise UsageError("a model with random weights (--weights none) is not exported; use --engine torch.")
    from cnncli.engines.torch_engine import TorchEngine

    if threads:
        import torch

        torch.set_num_threads(threads)
    return TorchEngine.from_spec(model, device=device, weights=weights)


def _auto_openvino(path, engine: str, device: str, precision: str, job_images: int | None,
                   threads: int | None) -> bool:
    """``--engine auto``, fp32, on the CPU, for a job large enough: whether OpenVINO runs it (checked, cached)."""
    if engine != "auto" or precision != "fp32" or not job_images:
        return False
    from cnncli.core.devices import parse_device
    from cnncli.engines.openvino_choice import OPENVINO_MIN_IMAGES, openvino_pays

    if job_images < OPENVINO_MIN_IMAGES or parse_device(device) not in ("auto", "cpu") or \
            (parse_device(device) == "auto" and gpu_present()):
        return False
    return openvino_pays(path, job_images, threads)


def _openvino(path, device: str, threads: int | None, precision: str) -> Engine:
    from cnncli.core.devices import parse_device
    from cnncli.core.errors import UsageError
    from cnncli.engines.openvino_engine import OpenVinoEngine

    if parse_device(device) not in ("auto", "cpu"):
        raise UsageError(f"--engine openvino runs on the CPU here, not --device {device}; use --device cpu.")
    return OpenVinoEngine(path, threads=threads, precision=precision)


def open_engines(models: Sequence[str | None], device: str = "auto", weights: str | None = None,
                 threads: int | None = None, tta: bool = False, engine: str = "auto", precision: str = "fp32",
                 calib: str | None = None, job_images: int | None = None) -> Engine:
    """One engine for one or several model specs (several: their averaged ensemble), with flip TTA if asked."""
    from cnncli.engines.ensemble import EnsembleEngine, FlipTTAEngine

    specs = list(models) or [None]
    engines = [open_engine(m, device=device, weights=weights, threads=threads, engine=engine, precision=precision,
                           calib=calib, job_images=job_images) for m in specs]
    engine = engines[0] if len(engines) == 1 else EnsembleEngine(engines, names=[m or "default" for m in specs])
    return FlipTTAEngine(engine) if tta else engine
