"""Torch datasets over :class:`cnncli.data.layout.Sample` lists.

Training images get the torchvision.transforms.v2 augmentation of :mod:`cnncli.train.augment`; evaluation images get
exactly :func:`cnncli.data.images.load_and_preprocess`, the preprocessing every engine uses. An image that cannot be
read is skipped (the batch is one shorter), counted, and its path reported: never a crash hours into training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from cnncli.core.errors import ImageError
from cnncli.data.images import draft_size_for, load_and_preprocess, load_image
from cnncli.models.card import Preprocessing
from cnncli.train.augment import AugmentPlan, train_transform


class SampleDataset(Dataset):
    """(tensor, label) for each sample, or (None, label, error) for an unreadable image (dropped by :func:`collate`)."""

    def __init__(self, samples, pre: Preprocessing, augment: AugmentPlan | None = None) -> None:
        self.samples = list(samples)
        self.pre = pre
        self.augment = augment
        self.transform = train_transform(pre, augment) if augment is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        try:
            if self.transform is None:
                return torch.from_numpy(load_and_preprocess(sample.path, self.pre)), sample.label, None
            w, h = draft_size_for(self.pre)
            img = load_image(sample.path, self.pre.channels, draft_size=(2 * w, 2 * h))
            return self.transform(img), sample.label, None
        except ImageError as exc:
            return None, sample.label, str(exc)
        except Exception as exc:  # a decoder bug on one odd file must not stop the run
            return None, sample.label, f"{sample.path}: cannot read the image ({type(exc).__name__}: {exc})."

    def labels(self) -> np.ndarray:
        return np.asarray([s.label for s in self.samples], dtype=np.int64)


@dataclass
class Batch:
    images: torch.Tensor | None
    labels: torch.Tensor | None
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return 0 if self.labels is None else int(self.labels.shape[0])


def collate(items) -> Batch:
    good = [(x, y) for x, y, err in items if err is None]
    errors = [err for _, _, err in items if err is not None]
    if not good:
        return Batch(None, None, errors)
    images, labels = default_collate(good)
    return Batch(images, labels, errors)


class SkippedImages:
    """Unreadable images seen so far (each path once), with the first few kept for the run log."""

    def __init__(self, keep: int = 5) -> None:
        self.messages: dict[str, str] = {}
        self.keep = keep

    def add(self, errors: list[str]) -> list[str]:
        new = [e for e in errors if e not in self.messages]
        for e in new:
            self.messages[e] = e
        return new

    @property
    def count(self) -> int:
        return len(self.messages)

    def first(self, n: int | None = None) -> list[str]:
        return list(self.messages)[: self.keep if n is None else n]


def device_batches(loader, device, channels_last: bool, note_errors=None):
    """Yield (images on ``device``, labels) from a loader of cnncli batches, reporting unreadable images to
    ``note_errors`` and skipping batches in which no image could be read."""
    import torch

    for batch in loader:
        if note_errors is not None and batch.errors:
            note_errors(batch.errors)
        if batch.images is None:
            continue
        x = batch.images.to(device)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, batch.labels
