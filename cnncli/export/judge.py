"""How a lower-precision model (static int8, bf16) compares with fp32, judged as the field judges it:

(a) top-1 accuracy on labelled data within :data:`MAX_ACCURACY_DROP` (1 point) of fp32's;
(b) top-1 agreement >= :data:`MIN_DECISIVE_AGREEMENT` (99%) on the images where fp32's top-1 probability leads
    its second by >= :data:`DECISIVE_LEAD` (0.10): near-ties flip either way under any rounding and are not the
    measure;
(c) throughput >= :data:`MIN_SPEEDUP` (1.5x) fp32's, where it was measured.

:func:`judge_precision` computes the figures from probabilities (and labels, and throughputs, when there are);
``export --int8 static``, ``evaluate --precision`` and benchmarks/bench_engines.py print them. :func:`judge_on_samples`
measures them on labelled images, :func:`judge_int8_export` on the validation set a model file records.
Torch-free except where a PyTorch model is handed in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncli.core.numeric import softmax

MAX_ACCURACY_DROP = 0.01  # (a): fp32 top-1 minus low-precision top-1, as a fraction (1 point)
DECISIVE_LEAD = 0.10  # (b): fp32 top-1 probability minus its top-2
MIN_DECISIVE_AGREEMENT = 0.99  # (b)
MIN_SPEEDUP = 1.5  # (c)


@dataclass
class PrecisionFigures:
    precision: str
    images: int
    agreement: float  # top-1 agreement with fp32 over every image
    decisive_images: int  # images where fp32's lead is >= DECISIVE_LEAD
    decisive_agreement: float | None  # (b); None when there is no decisive image
    fp32_accuracy: float | None = None  # (a), with labels
    accuracy: float | None = None
    speedup: float | None = None  # (c), low-precision img/s over fp32 img/s, when measured

    @property
    def accuracy_drop(self) -> float | None:
        """fp32 top-1 minus low-precision top-1 (a fraction; positive: the low precision loses accuracy)."""
        return None if self.accuracy is None or self.fp32_accuracy is None else self.fp32_accuracy - self.accuracy

    @property
    def accuracy_ok(self) -> bool | None:
        drop = self.accuracy_drop
        return None if drop is None else drop <= MAX_ACCURACY_DROP + 1e-12

    @property
    def agreement_ok(self) -> bool | None:
        return None if self.decisive_agreement is None else self.decisive_agreement >= MIN_DECISIVE_AGREEMENT

    @property
    def speed_ok(self) -> bool | None:
        return None if self.speedup is None else self.speedup >= MIN_SPEEDUP

    @property
    def passed(self) -> bool:
        """Every criterion that could be computed holds."""
        return all(ok is not False for ok in (self.accuracy_ok, self.agreement_ok, self.speed_ok))

    def lines(self, data: str = "these images") -> list[str]:
        """The figures in words, one criterion a line."""
        mark = {True: "ok", False: "FAILS", None: "n/a"}
        out = []
        if self.fp32_accuracy is not None:
            out.append(f"(a) top-1 accuracy on {data}: {self.precision} {self.accuracy:.1%} vs fp32 "
                       f"{self.fp32_accuracy:.1%} ({(self.accuracy - self.fp32_accuracy) * 100:+.1f} points; allowed -"
                       f"{MAX_ACCURACY_DROP * 100:.0f}): {mark[self.accuracy_ok]}")
        if self.decisive_agreement is not None:
            out.append(f"(b) top-1 agreement with fp32 where fp32 leads by >= {DECISIVE_LEAD:.2f}: "
                       f"{self.decisive_agreement:.1%} of {self.decisive_images} (needed {MIN_DECISIVE_AGREEMENT:.0%}; "
                       f"{self.agreement:.1%} of all {self.images}): {mark[self.agreement_ok]}")
        else:
            out.append(f"(b) no image of the {self.images} has an fp32 lead >= {DECISIVE_LEAD:.2f}; agreement on all: "
                       f"{self.agreement:.1%}")
        if self.speedup is not None:
            out.append(f"(c) throughput {self.speedup:.2f}x fp32 (needed {MIN_SPEEDUP}x): {mark[self.speed_ok]}")
        return out

    def to_dict(self) -> dict:
        return {"precision": self.precision, "images": self.images, "agreement": self.agreement,
                "decisive_images": self.decisive_images, "decisive_agreement": self.decisive_agreement,
                "fp32_accuracy": self.fp32_accuracy, "accuracy": self.accuracy, "accuracy_drop": self.accuracy_drop,
                "speedup": self.speedup, "passed": self.passed}


def judge_precision(fp32_probs: np.ndarray, probs: np.ndarray, labels: np.ndarray | None = None,
                    precision: str = "int8", fp32_throughput: float | None = None,
                    throughput: float | None = None) -> PrecisionFigures:
    """Figures (a), (b), (c) for ``probs`` (N, classes) of the low-precision model against ``fp32_probs`` of the
    same images; ``labels`` (N,) class indices for (a); throughputs (img/s, same batch and threads) for (c)."""
    fp32_probs = np.asarray(fp32_probs, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if fp32_probs.shape != probs.shape or fp32_probs.ndim != 2:
        raise ValueError(f"probabilities of the same images needed: {fp32_probs.shape} vs {probs.shape}")
    n = len(probs)
    reference, candidate = fp32_probs.argmax(1), probs.argmax(1)
    same = reference == candidate
    ordered = np.sort(fp32_probs, axis=1)
    lead = ordered[:, -1] - (ordered[:, -2] if fp32_probs.shape[1] > 1 else 0.0)
    decisive = lead >= DECISIVE_LEAD - 1e-12
    figures = PrecisionFigures(
        precision=precision, images=n, agreement=float(same.mean()) if n else 1.0,
        decisive_images=int(decisive.sum()),
        decisive_agreement=float(same[decisive].mean()) if decisive.any() else None,
    )
    if labels is not None and n:
        labels = np.asarray(labels)
        figures.fp32_accuracy = float((reference == labels).mean())
        figures.accuracy = float((candidate == labels).mean())
    if fp32_throughput and throughput:
        figures.speedup = float(throughput / fp32_throughput)
    return figures


SPEED_BATCH = 32  # (c) is measured on one batch of the images, repeated
SPEED_REPEATS = 3


class UnusableValidation(Exception):
    """The model file records a validation set, but it cannot be used now; the message says why (no period)."""


def recorded_validation(card) -> tuple[list, str] | None:
    """The labelled validation images that train/finetune held out for ``card``'s model, rebuilt from the split
    the card records (:mod:`cnncli.data.eval_split`), with a phrase saying what they are; None when the card
    records no split. A recorded split that cannot be used now (its dataset gone, changed so that the hold-out
    cannot be rebuilt, unreadable) raises :class:`UnusableValidation`, saying why in words."""
    record = (card.training or {}).get("split")
    if not record or not record.get("dataset"):
        return None
    from cnncli.core.errors import UsageError
    from cnncli.data.eval_split import choose_eval_split, dataset_change
    from cnncli.data.layout import scan_dataset

    dataset = record["dataset"]
    if not Path(dataset).exists():
        raise UnusableValidation(f"its dataset {dataset} is not there any more")
    change = None  # a dataset that cannot be scanned any more is not said to have changed
    try:
        change = dataset_change(scan_dataset(dataset, record.get("val_csv"), allow_outside=True), record)
        chosen = choose_eval_split(dataset, split="val", classes=list(card.classes), record=record)
    except UsageError as exc:
        if change:  # e.g. no hashes of the training images to tell the unseen ones apart
            raise UnusableValidation(f"{dataset} {change}, and the held-out images cannot be told apart from the "
                                     "ones it trained on") from None
        raise UnusableValidation(str(exc).rstrip(".")) from None
    except OSError as exc:
        raise UnusableValidation(f"{dataset} cannot be read ({exc.strerror or exc})") from None
    if change:  # the hold-out cannot be rebuilt, but the record's hashes say which images are unseen
        return (list(chosen.samples), f"{len(chosen.samples)} labelled images of the training dataset it did not "
                                      f"train on ({chosen.description})")
    return (list(chosen.samples),
            f"the model's recorded validation set ({len(chosen.samples)} images: {chosen.description})")


def _load(samples, pre) -> tuple[np.ndarray, np.ndarray]:
    from cnncli.core.errors import ImageError
    from cnncli.data.images import load_and_preprocess

    arrays, labels = [], []
    for sample in samples:
        try:
            arrays.append(load_and_preprocess(sample.path, pre))
            labels.append(sample.label)
        except ImageError:
            continue
    h, w = pre.input_size
    x = np.stack(arrays) if arrays else np.zeros((0, pre.channels, h, w), np.float32)
    return x, np.asarray(labels, dtype=np.int64)


def _throughput(predict, batch: np.ndarray) -> float:
    predict(batch)  # warm-up
    start = time.perf_counter()
    for _ in range(SPEED_REPEATS):
        predict(batch)
    return SPEED_REPEATS * len(batch) / (time.perf_counter() - start)


def judge_on_samples(fp32_predict, low_predict, samples, pre, precision: str, chunk: int = 64,
                     measure_speed: bool = True) -> PrecisionFigures:
    """Figures (a), (b) and, with ``measure_speed``, (c) for two logit functions (batch -> logits) over labelled
    ``samples``."""
    fp32_parts, low_parts, label_parts, speed_batch = [], [], [], None
    for start in range(0, len(samples), chunk):
        x, labels = _load(samples[start : start + chunk], pre)
        if not len(x):
            continue
        speed_batch = x[:SPEED_BATCH] if speed_batch is None else speed_batch
        fp32_parts.append(softmax(fp32_predict(x)))
        low_parts.append(softmax(low_predict(x)))
        label_parts.append(labels)
    if not fp32_parts:
        from cnncli.core.errors import UsageError

        raise UsageError("none of the labelled images could be read to judge the lower precision.")
    figures = judge_precision(np.concatenate(fp32_parts), np.concatenate(low_parts), np.concatenate(label_parts),
                              precision=precision)
    if measure_speed:
        figures.speedup = _throughput(low_predict, speed_batch) / _throughput(fp32_predict, speed_batch)
    return figures


def judge_int8_export(model, card, int8_path: str | Path) -> tuple[PrecisionFigures | None, str] | None:
    """``export --int8 static``: the int8 file against the PyTorch fp32 model on the recorded validation set:
    (figures, which images); (None, why not) when the model records one that cannot be used now; None when it
    records none."""
    try:
        found = recorded_validation(card)
    except UnusableValidation as exc:
        return None, str(exc)
    if found is None:
        return None
    samples, description = found
    import torch

    from cnncli.export.onnx_io import cpu_session, run_onnx

    session = cpu_session(int8_path)
    model = model.cpu().eval()

    def fp32(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    # (c) is not measured here: the fp32 reference is PyTorch eager, not the fp32 ONNX file int8 replaces
    return judge_on_samples(fp32, lambda x: run_onnx(session, x), samples, card.preprocessing, "int8",
                            measure_speed=False), description
