"""Inference engines behind one interface: ``engine.predict_proba(batch) -> probabilities``.

An engine takes a float32 array (N, C, H, W) made by :func:`cnncli.images.preprocess` and returns float32
probabilities (N, classes). :func:`open_engine` picks the engine for a model spec; this module does not
import torch, and a ``.onnx`` spec opens the onnxruntime engine without it.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from cnncli.card import ModelCard


class Engine(Protocol):
    card: ModelCard
    name: str  # "torch (cpu)", "onnxruntime (CPUExecutionProvider)", ...

    def predict_proba(self, batch: np.ndarray) -> np.ndarray: ...


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def is_onnx_spec(model: str | None) -> bool:
    return model is not None and model.lower().endswith(".onnx")


def open_engine(model: str | None, device: str = "auto", weights: str | None = None,
                threads: int | None = None) -> Engine:
    """The engine for ``model``: an exported ``.onnx`` file (onnxruntime, no torch), a registry name
    (pretrained weights), a cnncli .safetensors file, or None for the default model. ``threads`` sets the
    engine's intra-op threads."""
    if is_onnx_spec(model):
        if weights is not None:
            from cnncli.errors import UsageError

            raise UsageError(f"--weights does not apply to an ONNX file ({model}); its weights are inside it.")
        from cnncli.engines.onnx_engine import OnnxEngine

        return OnnxEngine(model, device=device, threads=threads)
    from cnncli.engines.torch_engine import TorchEngine

    if threads:
        import torch

        torch.set_num_threads(threads)
    return TorchEngine.from_spec(model, device=device, weights=weights)


def open_engines(models: Sequence[str | None], device: str = "auto", weights: str | None = None,
                 threads: int | None = None, tta: bool = False) -> Engine:
    """One engine for one or several model specs (several: their averaged ensemble), with flip TTA if asked."""
    from cnncli.engines.ensemble import EnsembleEngine, FlipTTAEngine

    specs = list(models) or [None]
    engines = [open_engine(m, device=device, weights=weights, threads=threads) for m in specs]
    engine = engines[0] if len(engines) == 1 else EnsembleEngine(engines, names=[m or "default" for m in specs])
    return FlipTTAEngine(engine) if tta else engine
