"""Inference engines behind one interface: ``engine.predict_proba(batch) -> probabilities``.

An engine takes a float32 array (N, C, H, W) made by :func:`cnncli.images.preprocess` and returns float32
probabilities (N, classes). :func:`open_engine` picks the engine for a model spec; this module does not
import torch, so the onnxruntime engine can be used without it.
"""

from __future__ import annotations

from typing import Protocol

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


def open_engine(model: str | None, device: str = "auto", weights: str | None = None) -> Engine:
    """The engine for ``model``: a registry name (pretrained weights), a cnncli .safetensors file, or None for
    the default model."""
    from cnncli.engines.torch_engine import TorchEngine

    return TorchEngine.from_spec(model, device=device, weights=weights)
