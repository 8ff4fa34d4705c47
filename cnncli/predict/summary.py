"""The summary that ends a prediction over several images: how many, how many failed, how long, how fast, and how
many images each class was predicted for (top-1)."""

from __future__ import annotations

import time
from collections import Counter

MAX_CLASSES_SHOWN = 10


class PredictionSummary:
    """Fed every prediction as it comes out; ``lines()`` renders the summary."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.images = 0
        self.failed = 0
        self.per_class: Counter = Counter()

    def add(self, pred) -> None:
        self.images += 1
        if pred.error is not None:
            self.failed += 1
        elif pred.top:
            self.per_class[pred.top[0]["label"]] += 1

    def lines(self) -> list[str]:
        seconds = time.perf_counter() - self.started
        rate = self.images / seconds if seconds > 0 else 0.0
        lines = [f"{self.images} images, {self.failed} failed, {seconds:.1f} s, {rate:.1f} img/s."]
        if self.per_class:
            ranked = sorted(self.per_class.items(), key=lambda kv: (-kv[1], kv[0]))
            shown = ", ".join(f"{label} {n}" for label, n in ranked[:MAX_CLASSES_SHOWN])
            more = len(ranked) - MAX_CLASSES_SHOWN
            lines.append(f"predicted (top-1): {shown}" + (f", and {more} more classes." if more > 0 else "."))
        return lines

    def to_dict(self) -> dict:
        seconds = time.perf_counter() - self.started
        return {"images": self.images, "failed": self.failed, "seconds": round(seconds, 3),
                "per_class": dict(self.per_class.most_common())}
