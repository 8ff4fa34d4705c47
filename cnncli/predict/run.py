"""Classifying images: engine + pipeline -> a stream of :class:`Prediction`, in input order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from cnncli.data.inputs import InputItem
from cnncli.engines.base import Engine


@dataclass
class Prediction:
    path: str
    top: list[dict] = field(default_factory=list)  # [{"label", "index", "prob"}], best first
    error: str | None = None
    labels: list[str] | None = None  # multi-label models: the classes over their thresholds, best first

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        if self.labels is not None:
            return {"path": self.path, "labels": self.labels, "top": self.top}
        return {"path": self.path, "top": self.top}


def top_k(probs: np.ndarray, classes: list[str], k: int) -> list[dict]:
    k = min(k, probs.shape[0])
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": classes[i], "index": int(i), "prob": float(probs[i])} for i in order]


def scored(probs: np.ndarray, classes: list[str], k: int, pick=None) -> dict:
    """``top`` (and with a multi-label ``pick``, ``labels``) for one image's probabilities: the top-k, widened
    to hold every selected label."""
    if pick is None:
        return {"top": top_k(probs, classes, k)}
    labels = pick(probs)
    return {"top": top_k(probs, classes, max(k, len(labels))), "labels": labels}


def predict_items(
    engine: Engine,
    items: list[InputItem],
    k: int = 5,
    batch_size: int = 32,
    workers: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    threshold: float | None = None,
    pipeline: str | None = None,
    on_choice: Callable | None = None,
) -> Iterator[Prediction]:
    """Predict every item, yielding results in input order as soon as each batch is done. On CPU engines that
    replicate (onnxruntime, OpenVINO), worker processes each decode and run their own batches
    (:mod:`cnncli.predict.replicas`) or decoder processes feed the engine in this process, whichever this machine
    runs faster (:mod:`cnncli.predict.pipeline`; ``pipeline`` forces one, ``on_choice`` is told). A multi-label
    model's predictions also get ``labels`` (:mod:`cnncli.predict.multilabel`; ``threshold`` overrides the card's)."""
    from cnncli.predict.multilabel import label_picker

    classes = engine.card.classes
    pick = label_picker(engine.card, threshold)
    for batch in probability_batches(engine, items, batch_size, workers, pipeline, on_choice):
        probs = batch.probs
        row = 0
        for path, ok in zip(batch.paths, batch.ok):
            if ok:
                yield Prediction(path=path, **scored(probs[row], classes, k, pick))
                row += 1
            else:
                yield Prediction(path=path, error=batch.errors[path])
        if on_batch is not None:
            on_batch(len(batch.paths))


def probability_batches(engine: Engine, items: list[InputItem], batch_size: int = 32,
                        workers: int | None = None, pipeline: str | None = None,
                        on_choice: Callable | None = None) -> Iterator:
    """Probabilities (:class:`cnncli.predict.replicas.ScoredBatch`) for ``items``, in input order, from replicas of
    the engine or from decoder processes feeding it, whichever this machine runs faster
    (:mod:`cnncli.predict.pipeline`; ``pipeline`` or ``CNNCLI_PIPELINE`` forces one)."""
    from cnncli.predict.pipeline import pipeline_batches

    yield from pipeline_batches(engine, items, batch_size=batch_size, workers=workers, pipeline=pipeline,
                                on_choice=on_choice)
