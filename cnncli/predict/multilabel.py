"""The labels of a multi-label model's prediction: every class whose sigmoid probability reaches its threshold
(the card's per-class thresholds, tuned on the validation images, or one ``--threshold`` for all), best first.

Single-label models have no labels list: :func:`label_picker` returns None for them, and their output is what it
always was.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cnncli.core.errors import UsageError

DEFAULT_THRESHOLD = 0.5  # a multi-label card without tuned thresholds


def thresholds_for(card, threshold: float | None = None) -> np.ndarray:
    """One threshold per class: ``threshold`` for all when given, else the card's, else 0.5."""
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise UsageError(f"--threshold must be a probability in [0, 1], not {threshold}.")
        return np.full(card.num_classes, float(threshold))
    if card.thresholds is not None:
        return np.asarray(card.thresholds, dtype=np.float64)
    return np.full(card.num_classes, DEFAULT_THRESHOLD)


def check_threshold_option(card, threshold: float | None, model: str = "the model") -> None:
    """Refuse ``--threshold`` for a single-label model, before any work."""
    if threshold is not None and not card.multilabel:
        raise UsageError(f"--threshold applies to multi-label models; {model} is single-label (it reports the most "
                         "probable classes).")
    if threshold is not None:
        thresholds_for(card, threshold)


def selected_labels(probs: np.ndarray, classes: list[str], thresholds: np.ndarray) -> list[str]:
    """The classes at or over their thresholds, most probable first."""
    chosen = np.flatnonzero(probs >= thresholds)
    order = chosen[np.argsort(-probs[chosen], kind="stable")]
    return [classes[i] for i in order]


def label_picker(card, threshold: float | None = None) -> Callable[[np.ndarray], list[str]] | None:
    """probabilities -> labels for a multi-label card; None for a single-label one."""
    if not card.multilabel:
        return None
    thresholds = thresholds_for(card, threshold)
    classes = list(card.classes)
    return lambda probs: selected_labels(probs, classes, thresholds)
