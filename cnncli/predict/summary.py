"""The summary that ends a prediction over several images: how many, how many failed, how long, how fast, and how
many images each class was predicted for (top-1)."""

from __future__ import annotations

from collections import Counter

from cnncli.core.progress import JobProgress

MAX_CLASSES_SHOWN = 10


class PredictionSummary:
    """Fed every prediction as it comes out; ``lines()`` renders the summary. The counts and the clock are those of
    the job's :class:`JobProgress` (which also draws its bar); this adds the count per predicted class."""

    def __init__(self, progress: JobProgress | None = None) -> None:
        self.progress = progress if progress is not None else JobProgress(0, enabled=False)
        self.per_class: Counter = Counter()

    @property
    def images(self) -> int:
        return self.progress.images

    @property
    def failed(self) -> int:
        return self.progress.failed

    def add(self, pred) -> None:
        self.progress.advance(1, int(pred.error is not None))
        if pred.error is None and pred.top:
            self.per_class[pred.top[0]["label"]] += 1

    def lines(self) -> list[str]:
        seconds, rate = self.progress.seconds, self.progress.rate
        lines = [f"{self.images} images, {self.failed} failed, {seconds:.1f} s, {rate:.1f} img/s."]
        if self.per_class:
            ranked = sorted(self.per_class.items(), key=lambda kv: (-kv[1], kv[0]))
            shown = ", ".join(f"{label} {n}" for label, n in ranked[:MAX_CLASSES_SHOWN])
            more = len(ranked) - MAX_CLASSES_SHOWN
            lines.append(f"predicted (top-1): {shown}" + (f", and {more} more classes." if more > 0 else "."))
        return lines

    def to_dict(self) -> dict:
        return {"images": self.images, "failed": self.failed, "seconds": round(self.progress.seconds, 3),
                "per_class": dict(self.per_class.most_common())}
