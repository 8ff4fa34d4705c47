"""Engines made of engines: an ensemble that averages the probabilities of several models with the same
classes (any mix of PyTorch and onnxruntime), and test-time augmentation by horizontal flip."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace as dc_replace

import numpy as np

from cnncli.core.errors import UsageError


def _describe(classes: list[str]) -> str:
    shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
    return f"{len(classes)} classes ({shown})"


class EnsembleEngine:
    """Averages ``predict_proba`` of ``engines``. All must have the same class list in the same order and the
    same image geometry (size, resize, crop, interpolation, channels); models that differ only in their
    normalisation mean/std are fine: each member's input is re-normalised from the first model's."""

    def __init__(self, engines: Sequence, names: Sequence[str] | None = None) -> None:
        if not engines:
            raise UsageError("an ensemble needs at least one model.")
        names = list(names or [e.name for e in engines])
        first = engines[0].card
        geometry = ("input_size", "resize_mode", "crop_pct", "interpolation", "channels")
        for engine, name in zip(engines[1:], names[1:]):
            card = engine.card
            if card.task != first.task:
                raise UsageError(f"cannot ensemble {names[0]} ({first.task}) and {name} ({card.task}): an ensemble "
                                 "averages probabilities of models of one task.")
            if card.classes != first.classes:
                order = " in another order" if sorted(card.classes) == sorted(first.classes) else ""
                raise UsageError(
                    f"cannot ensemble {names[0]} and {name}: {names[0]} has {_describe(first.classes)} but {name} has "
                    f"{_describe(card.classes)}{order}; an ensemble needs models with the same class list."
                )
            differs = [g for g in geometry if getattr(card.preprocessing, g) != getattr(first.preprocessing, g)]
            if differs:
                raise UsageError(
                    f"cannot ensemble {names[0]} and {name}: "
                    f"they preprocess images differently ({', '.join(differs)}); "
                    "export or train them with the same input size and resize settings."
                )
        self.engines = list(engines)
        self.card = dc_replace(first, arch="ensemble(" + ", ".join(e.card.arch for e in engines) + ")")
        self.name = "ensemble of " + " + ".join(e.name for e in engines)
        pre = first.preprocessing
        self._scale = [_affine(pre, e.card.preprocessing) for e in engines]

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        total = None
        for engine, (scale, shift) in zip(self.engines, self._scale):
            x = batch if scale is None else batch * scale + shift
            probs = engine.predict_proba(x.astype(np.float32, copy=False)).astype(np.float64)
            total = probs if total is None else total + probs
        return (total / len(self.engines)).astype(np.float32)


def _affine(source, target) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(scale, shift) per channel turning input normalised with ``source`` mean/std into ``target``'s."""
    if source.mean == target.mean and source.std == target.std:
        return None, None
    ms, ss = np.asarray(source.mean), np.asarray(source.std)
    mt, st = np.asarray(target.mean), np.asarray(target.std)
    scale = (ss / st).astype(np.float32)[:, None, None]
    shift = ((ms - mt) / st).astype(np.float32)[:, None, None]
    return scale, shift


class FlipTTAEngine:
    """Test-time augmentation: the mean of the probabilities for the image and its horizontal mirror."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.card = engine.card
        self.name = f"{engine.name} + flip TTA"

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        flipped = np.ascontiguousarray(batch[..., ::-1])
        both = self.engine.predict_proba(np.concatenate([batch, flipped]))
        n = len(batch)
        return ((both[:n].astype(np.float64) + both[n:]) / 2).astype(np.float32)
