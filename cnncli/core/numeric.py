"""Small numeric helpers shared by engines, export and evaluation (numpy only)."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, returned as float32."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function in float64 (stable for large |x|), returned as float32."""
    z = logits.astype(np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)


def to_probabilities(logits: np.ndarray, task: str = "single") -> np.ndarray:
    """What an engine returns: softmax over the classes, or for a multi-label model a sigmoid per class."""
    return sigmoid(logits) if task == "multilabel" else softmax(logits)
