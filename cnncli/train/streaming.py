"""Training and validating from a stream: a packed dataset (WebDataset shards) or an object-store prefix of class
folders, read unit by unit (:mod:`cnncli.data.stream_source`), never downloaded whole.

:class:`StreamDataset` is an IterableDataset that yields what :class:`cnncli.train.datasets.SampleDataset` yields
(``(tensor, label, None)``, or ``(None, label, error)`` for a sample that cannot be used, which the collate drops
and the run counts), with the same decoding, preprocessing and augmentation. Each epoch:

* the training units are put in an order drawn from (``--seed``, epoch); validation keeps the packed order;
* that order's samples are cut into one contiguous range per rank (equal ranges for training under DDP, so every
  rank takes the same number of steps; the few left over are left out that epoch) and each rank's range into one
  per DataLoader worker, whole batches each: disjoint, and ``len(loader)`` is exact;
* each worker mixes its range through a shuffle buffer (``--shuffle-buffer``) seeded by (seed, epoch, rank,
  worker).

So the same seed gives the same stream, from a folder or a bucket alike. Remote shards go through a bounded local
cache (``--cache-size``, least recently used evicted).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from cnncli.core.errors import ImageError, UsageError
from cnncli.data.images import draft_size_for, load_image_bytes, load_pixels_from_bytes, normalize
from cnncli.data.stream_source import ShardCache, StreamSource, Unit, parse_size, unit_samples
from cnncli.models.card import Preprocessing
from cnncli.train.augment import AugmentPlan, train_transform


class StreamDataset(IterableDataset):
    """One split of a stream source as (tensor, label, error) items; see the module docstring."""

    def __init__(self, source: StreamSource, split: str, pre: Preprocessing, augment: AugmentPlan | None = None,
                 seed: int = 0, shuffle_buffer: int = 0, cache_bytes: int = 0, train: bool = False) -> None:
        self.units: list[Unit] = list(source.units.get(split, []))
        self.n_classes = len(source.classes)
        self.pre, self.seed, self.train = pre, seed, train
        self.shuffle_buffer = shuffle_buffer if train else 0
        self.cache_bytes = cache_bytes
        self.transform = train_transform(pre, augment) if augment is not None else None
        self.epoch = 0
        self.rank, self.world, self.workers, self.batch_size = 0, 1, 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def for_loader(self, rank: int, world: int, workers: int, batch_size: int) -> StreamDataset:
        """A copy that yields the share of ``rank`` of ``world``, cut for ``workers`` workers in whole batches."""
        mine = copy.copy(self)
        mine.rank, mine.world, mine.workers, mine.batch_size = rank, world, workers, batch_size
        return mine

    # ------------------------------------------------------------ the epoch's plan

    def _order(self) -> list[Unit]:
        if not self.train:
            return self.units
        rng = np.random.default_rng([self.seed, self.epoch, 11])
        return [self.units[i] for i in rng.permutation(len(self.units))]

    def _rank_range(self, total: int) -> tuple[int, int]:
        if self.world == 1:
            return 0, total
        if self.train:  # equal shares: every rank takes the same number of optimiser steps
            share = total // self.world
            return self.rank * share, (self.rank + 1) * share
        return self.rank * total // self.world, (self.rank + 1) * total // self.world

    def _worker_range(self, start: int, stop: int, worker: int, workers: int) -> tuple[int, int]:
        batches = -(-(stop - start) // self.batch_size)
        first, last = worker * batches // workers, (worker + 1) * batches // workers
        return min(stop, start + first * self.batch_size), min(stop, start + last * self.batch_size)

    def __len__(self) -> int:
        start, stop = self._rank_range(sum(u.count for u in self.units))
        return stop - start

    def segments(self, worker: int, workers: int) -> list[tuple[Unit, int, int]]:
        """(unit, first, stop) pieces, in order, of what ``worker`` of this rank reads this epoch."""
        order = self._order()
        start, stop = self._rank_range(sum(u.count for u in order))
        start, stop = self._worker_range(start, stop, worker, workers)
        pieces, offset = [], 0
        for unit in order:
            lo, hi = max(start, offset), min(stop, offset + unit.count)
            if lo < hi:
                pieces.append((unit, lo - offset, hi - offset))
            offset += unit.count
            if offset >= stop:
                break
        return pieces

    # ------------------------------------------------------------ reading

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        cache = ShardCache(self.cache_bytes)
        samples = (s for unit, lo, hi in self.segments(worker, workers)
                   for s in unit_samples(unit, self.n_classes, cache, lo, hi))
        if self.shuffle_buffer > 1:
            samples = _shuffled(samples, self.shuffle_buffer,
                                np.random.default_rng([self.seed, self.epoch, self.rank, worker, 13]))
        for sample in samples:
            yield self._item(sample)

    def _item(self, sample):
        label = sample.label if sample.label is not None else -1
        if sample.error:
            return None, label, sample.error
        name = sample.path or sample.key
        try:
            if self.transform is None:
                return torch.from_numpy(normalize(load_pixels_from_bytes(sample.data, name, self.pre), self.pre)), \
                    label, None
            w, h = draft_size_for(self.pre)
            img = load_image_bytes(sample.data, name, self.pre.channels, draft_size=(2 * w, 2 * h))
            return self.transform(img), label, None
        except ImageError as exc:
            return None, label, str(exc)
        except Exception as exc:  # a decoder bug on one odd file must not stop the run
            return None, label, f"{name}: cannot read the image ({type(exc).__name__}: {exc})."


def _shuffled(samples, size: int, rng: np.random.Generator):
    """A shuffle buffer of ``size``: each sample comes out at a random later point, drawn from ``rng``."""
    buffer = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = int(rng.integers(size))
        yield buffer[i]
        buffer[i] = sample
    for i in rng.permutation(len(buffer)):
        yield buffer[int(i)]


def stream_datasets(splits, cfg, pre: Preprocessing, augment: AugmentPlan | None):
    """(train, val) datasets of a streamed dataset's splits (``splits.stream``), for the run's options."""
    if cfg.cache_features or cfg.balance == "sampler":
        raise UsageError("--cache-features and --balance sampler need the whole dataset at hand; a streamed dataset "
                         "(packed, or in an object store) is read shard by shard: drop them.")
    options = dict(seed=cfg.seed, cache_bytes=parse_size(getattr(cfg, "cache_size", "20GB")))
    train = StreamDataset(splits.stream, "train", pre, augment, shuffle_buffer=getattr(cfg, "shuffle_buffer", 1000),
                          train=True, **options)
    return train, StreamDataset(splits.stream, "val", pre, **options)
