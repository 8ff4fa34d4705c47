"""Small numeric helpers shared by engines, export and evaluation (numpy only): probabilities from logits, and
average precision (scikit-learn's definition, checked against it in tests/test_multilabel_metrics.py)."""

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


def ranked_counts(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the distinct scores, highest first: the score, true positives and false positives at ``>= score``."""
    order = np.argsort(-scores, kind="mergesort")
    scores, y_true = scores[order], y_true[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # the last row of each run of equal scores
    tps = np.cumsum(y_true)[last]
    fps = last + 1 - tps
    return scores[last], tps, fps


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Average precision of one class (the step-wise area under the precision-recall curve, scikit-learn's
    ``average_precision_score``); None when the class has no positive image."""
    y_true = np.asarray(y_true, dtype=np.float64)
    positives = y_true.sum()
    if positives == 0:
        return None
    _, tps, fps = ranked_counts(y_true, np.asarray(scores, dtype=np.float64))
    precision = tps / (tps + fps)
    recall = tps / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(targets: np.ndarray, probs: np.ndarray) -> float:
    """Macro mean of the per-class average precision over the classes with a positive image (0.0 if none has)."""
    targets, probs = np.asarray(targets), np.asarray(probs)
    scored = [ap for ap in (average_precision(targets[:, c], probs[:, c]) for c in range(targets.shape[1]))
              if ap is not None]
    return float(np.mean(scored)) if scored else 0.0
