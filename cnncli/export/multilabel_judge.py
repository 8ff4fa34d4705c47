"""How a lower-precision multi-label model (fp16, static int8, bf16) compares with fp32: per-class agreement of the
decisions at the thresholds.

A multi-label model decides, per image and class, whether the class's sigmoid probability reaches the class's
threshold (the card's, tuned on validation images). The measure, per class: the fraction of images whose decision
is the same as fp32's. Reported: each class's agreement, the worst class and the mean, and the largest
|difference| of the probabilities. As for single-label models (:mod:`cnncli.export.judge`, criterion (b)), the
verdict looks at the decisions fp32 makes decisively, its probability at least :data:`DECISIVE_MARGIN` from the
threshold: a decision that sits on its threshold flips under any rounding. It holds when

(a) with labels: mAP within :data:`MAX_MAP_DROP` (1 point) of fp32's;
(b) for every class, >= :data:`MIN_CLASS_AGREEMENT` (99%) of its decisive decisions agree with fp32;
(c) throughput >= 1.5x fp32's, where it was measured (``evaluate --precision``).

:func:`multilabel_agreement` is the measure (``export``'s verification uses it with a looser bound, like top-1
agreement for single-label files), :func:`judge_multilabel_precision` the figures, :func:`judge_multilabel_export`
the figures on the validation set a model file records. Torch-free except where a PyTorch model is handed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncli.core.numeric import mean_average_precision, sigmoid
from cnncli.export.judge import MIN_SPEEDUP, UnusableValidation, _throughput

DECISIVE_MARGIN = 0.05  # fp32's probability at least this far from the class's threshold
MIN_CLASS_AGREEMENT = 0.99  # (b), per class
MAX_MAP_DROP = 0.01  # (a): fp32 mAP minus low-precision mAP


@dataclass
class ClassAgreement:
    """Per class: the decisions (probability >= threshold) that agree with fp32's."""

    classes: list[str]
    agreement: list[float]  # over every image
    decisive_agreement: list[float | None]  # over the images where fp32 is decisive; None: no such image
    decisive_decisions: int  # (image, class) decisions where fp32 is decisive
    max_prob_diff: float  # max |p - p_fp32| over every image and class

    @property
    def worst(self) -> tuple[str, float]:
        i = int(np.argmin(self.agreement))
        return self.classes[i], self.agreement[i]

    @property
    def mean(self) -> float:
        return float(np.mean(self.agreement))

    @property
    def worst_decisive(self) -> tuple[str, float] | None:
        scored = [(a, c) for c, a in zip(self.classes, self.decisive_agreement) if a is not None]
        if not scored:
            return None
        value, name = min(scored, key=lambda item: item[0])
        return name, value

    def to_dict(self) -> dict:
        worst, decisive = self.worst, self.worst_decisive
        return {"per_class": dict(zip(self.classes, self.agreement)),
                "per_class_decisive": dict(zip(self.classes, self.decisive_agreement)),
                "worst_class": worst[0], "worst_agreement": worst[1], "mean_agreement": self.mean,
                "worst_decisive_class": decisive[0] if decisive else None,
                "worst_decisive_agreement": decisive[1] if decisive else None,
                "decisive_decisions": self.decisive_decisions, "max_prob_diff": self.max_prob_diff}


def multilabel_agreement(fp32_probs: np.ndarray, probs: np.ndarray, thresholds, classes: list[str],
                         margin: float = DECISIVE_MARGIN) -> ClassAgreement:
    """:class:`ClassAgreement` of ``probs`` (images x classes, sigmoid) against ``fp32_probs`` of the same images."""
    fp32_probs = np.asarray(fp32_probs, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if fp32_probs.shape != probs.shape or fp32_probs.ndim != 2:
        raise ValueError(f"probabilities of the same images needed: {fp32_probs.shape} vs {probs.shape}")
    t = np.asarray(thresholds, dtype=np.float64)[None, :]
    same = (fp32_probs >= t) == (probs >= t)
    decisive = np.abs(fp32_probs - t) >= margin - 1e-12
    n = len(probs)
    agreement = [float(same[:, c].mean()) if n else 1.0 for c in range(probs.shape[1])]
    decisive_agreement = [float(same[decisive[:, c], c].mean()) if decisive[:, c].any() else None
                          for c in range(probs.shape[1])]
    diff = float(np.abs(probs - fp32_probs).max()) if probs.size else 0.0
    return ClassAgreement(list(classes), agreement, decisive_agreement, int(decisive.sum()), diff)


@dataclass
class MultiLabelPrecisionFigures:
    precision: str
    images: int
    agreement: ClassAgreement
    fp32_map: float | None = None  # (a), with labels
    map: float | None = None
    speedup: float | None = None  # (c)
    task: str = "multilabel"

    @property
    def map_drop(self) -> float | None:
        return None if self.map is None or self.fp32_map is None else self.fp32_map - self.map

    @property
    def map_ok(self) -> bool | None:
        drop = self.map_drop
        return None if drop is None else drop <= MAX_MAP_DROP + 1e-12

    @property
    def agreement_ok(self) -> bool | None:
        worst = self.agreement.worst_decisive
        return None if worst is None else worst[1] >= MIN_CLASS_AGREEMENT

    @property
    def speed_ok(self) -> bool | None:
        return None if self.speedup is None else self.speedup >= MIN_SPEEDUP

    @property
    def passed(self) -> bool:
        return all(ok is not False for ok in (self.map_ok, self.agreement_ok, self.speed_ok))

    def lines(self, data: str = "these images") -> list[str]:
        """The figures in words, one criterion a line, and the measure over every image."""
        mark = {True: "ok", False: "FAILS", None: "n/a"}
        a = self.agreement
        out = []
        if self.fp32_map is not None:
            out.append(f"(a) mAP on {data}: {self.precision} {self.map:.4f} vs fp32 {self.fp32_map:.4f} "
                       f"({(self.map - self.fp32_map) * 100:+.2f} points; allowed -{MAX_MAP_DROP * 100:.0f}): "
                       f"{mark[self.map_ok]}")
        worst = a.worst_decisive
        if worst is not None:
            out.append(f"(b) per-class agreement with fp32's decisions at the thresholds, where fp32 is >= "
                       f"{DECISIVE_MARGIN:.2f} from the threshold: worst class {worst[0]!r} {worst[1]:.1%} (needed "
                       f"{MIN_CLASS_AGREEMENT:.0%} for every class; {a.decisive_decisions} decisions): "
                       f"{mark[self.agreement_ok]}")
        else:
            out.append(f"(b) no decision of the {self.images} images is >= {DECISIVE_MARGIN:.2f} from its threshold")
        out.append(f"    over all {self.images} images: worst class {a.worst[0]!r} {a.worst[1]:.1%}, mean "
                   f"{a.mean:.1%}; max |diff| of probabilities {a.max_prob_diff:.3g}")
        if self.speedup is not None:
            out.append(f"(c) throughput {self.speedup:.2f}x fp32 (needed {MIN_SPEEDUP}x): {mark[self.speed_ok]}")
        return out

    def to_dict(self) -> dict:
        return {"task": self.task, "precision": self.precision, "images": self.images,
                "agreement": self.agreement.to_dict(), "fp32_mAP": self.fp32_map, "mAP": self.map,
                "mAP_drop": self.map_drop, "speedup": self.speedup, "passed": self.passed}


def judge_multilabel_precision(fp32_probs: np.ndarray, probs: np.ndarray, thresholds, classes: list[str],
                               targets: np.ndarray | None = None, precision: str = "int8"
                               ) -> MultiLabelPrecisionFigures:
    """Figures (a) and (b) for sigmoid ``probs`` of the low-precision model against ``fp32_probs``; ``targets``
    (images x classes, 0/1) for (a)."""
    figures = MultiLabelPrecisionFigures(precision, len(probs),
                                         multilabel_agreement(fp32_probs, probs, thresholds, classes))
    if targets is not None and len(probs):
        figures.fp32_map = mean_average_precision(targets, fp32_probs)
        figures.map = mean_average_precision(targets, probs)
    return figures


def card_thresholds(card) -> list[float]:
    """The card's per-class thresholds (0.5 each when it has none)."""
    return list(card.thresholds) if card.thresholds is not None else [0.5] * card.num_classes


def _load(samples, pre, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, 0/1 targets) of multi-label ``samples``; unreadable images are left out."""
    from cnncli.core.errors import ImageError
    from cnncli.data.images import load_and_preprocess

    arrays, targets = [], []
    for sample in samples:
        try:
            arrays.append(load_and_preprocess(sample.path, pre))
        except ImageError:
            continue
        row = np.zeros(n_classes, np.float32)
        row[list(sample.labels)] = 1.0
        targets.append(row)
    h, w = pre.input_size
    x = np.stack(arrays) if arrays else np.zeros((0, pre.channels, h, w), np.float32)
    return x, np.asarray(targets, dtype=np.float32).reshape(len(targets), n_classes)


def judge_multilabel_on_samples(fp32_predict, low_predict, samples, card, precision: str, chunk: int = 64,
                                measure_speed: bool = True) -> MultiLabelPrecisionFigures:
    """Figures (a), (b) and, with ``measure_speed``, (c) for two logit functions (batch -> logits) over multi-label
    ``samples`` (:class:`cnncli.data.multilabel.MultiLabelSample`), at ``card``'s thresholds."""
    from cnncli.export.judge import SPEED_BATCH

    fp32_parts, low_parts, target_parts, speed_batch = [], [], [], None
    for start in range(0, len(samples), chunk):
        x, targets = _load(samples[start : start + chunk], card.preprocessing, card.num_classes)
        if not len(x):
            continue
        speed_batch = x[:SPEED_BATCH] if speed_batch is None else speed_batch
        fp32_parts.append(sigmoid(fp32_predict(x)))
        low_parts.append(sigmoid(low_predict(x)))
        target_parts.append(targets)
    if not fp32_parts:
        from cnncli.core.errors import UsageError

        raise UsageError("none of the labelled images could be read to judge the lower precision.")
    figures = judge_multilabel_precision(np.concatenate(fp32_parts), np.concatenate(low_parts), card_thresholds(card),
                                         list(card.classes), np.concatenate(target_parts), precision=precision)
    if measure_speed:
        figures.speedup = _throughput(low_predict, speed_batch) / _throughput(fp32_predict, speed_batch)
    return figures


def recorded_multilabel_validation(card) -> tuple[list, str] | None:
    """The validation images a multi-label training run held out, rebuilt from the split its card records, and a
    phrase saying what they are; None when the card records no multi-label split; :class:`UnusableValidation`
    (saying why) when the manifest is gone or changed since."""
    record = (card.training or {}).get("split") or {}
    if record.get("task") != "multilabel" or not record.get("dataset"):
        return None
    from cnncli.core.errors import UsageError
    from cnncli.data.multilabel import load_multilabel_dataset

    dataset = record["dataset"]
    if not Path(dataset).is_file():
        raise UnusableValidation(f"its manifest {dataset} is not there any more")
    try:
        splits = load_multilabel_dataset(dataset, val_split=float(record.get("val_split") or 0.2),
                                         seed=int(record.get("seed") or 0), val_csv=record.get("val_csv"),
                                         allow_outside=True, classes=list(card.classes))
    except UsageError as exc:
        raise UnusableValidation(str(exc).rstrip(".")) from None
    then = (record.get("n_train"), record.get("n_val"))
    if None not in then and then != (len(splits.train), len(splits.val)):
        raise UnusableValidation(f"{dataset} changed since training ({then[0]} train / {then[1]} val images then, "
                                 f"{len(splits.train)} / {len(splits.val)} now), so the held-out images cannot be "
                                 "rebuilt")
    how = "from --val-csv" if record.get("val_csv") else "held out by iterative stratification"
    return list(splits.val), f"the model's recorded validation set ({len(splits.val)} images {how})"


def judge_multilabel_export(model, card, low_path: str | Path, precision: str
                            ) -> tuple[MultiLabelPrecisionFigures | None, str] | None:
    """``export --fp16 / --int8`` of a multi-label model: the file against the PyTorch fp32 model on the recorded
    validation set: (figures, which images); (None, why not) when it records one that cannot be used now; None
    when it records none."""
    try:
        found = recorded_multilabel_validation(card)
    except UnusableValidation as exc:
        return None, str(exc)
    if found is None:
        return None
    samples, description = found
    import torch

    from cnncli.export.onnx_io import cpu_session, run_onnx

    session = cpu_session(low_path)
    model = model.cpu().eval()

    def fp32(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return judge_multilabel_on_samples(fp32, lambda x: run_onnx(session, x), samples, card, precision,
                                       measure_speed=False), description
