"""How a lower-precision model (static int8, bf16) compares with fp32, judged as the field judges it:

(a) top-1 accuracy on labelled data within :data:`MAX_ACCURACY_DROP` (1 point) of fp32's;
(b) top-1 agreement >= :data:`MIN_DECISIVE_AGREEMENT` (99%) on the images where fp32's top-1 probability leads
    its second by >= :data:`DECISIVE_LEAD` (0.10): near-ties flip either way under any rounding and are not the
    measure;
(c) throughput >= :data:`MIN_SPEEDUP` (1.5x) fp32's, where it was measured.

:func:`judge_precision` computes the figures from probabilities (and labels, and throughputs, when there are);
``export --int8 static``, ``evaluate --precision`` and benchmarks/bench_engines.py print them. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
