"""The run's data loaders and batch-level data choices: shuffled (or class-balanced, or rank-sharded) training
batches, sequential validation batches, the default worker count, per-class loss weights, and mixup/cutmix."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from cnncli.core.cpus import usable_cores
from cnncli.train.config import TrainConfig
from cnncli.train.datasets import collate
from cnncli.train.distributed import Dist


def default_workers(n_images: int) -> int:
    """No worker processes for a small dataset (starting them costs more than they save), else up to 4."""
    if n_images < 512:
        return 0
    return max(1, min(4, usable_cores() - 1))


def make_loader(dataset, cfg: TrainConfig, dist: Dist, train: bool, generator: torch.Generator, workers: int,
                device: torch.device) -> DataLoader:
    """Training: shuffled by ``generator`` (class-balanced with --balance sampler, sharded under torchrun).
    Validation: in order, each rank taking every world-th image."""
    from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler, Subset, WeightedRandomSampler

    if hasattr(dataset, "for_loader"):  # a cnncli.train.streaming.StreamDataset cuts its own rank and worker shares
        return DataLoader(dataset.for_loader(dist.rank, dist.world, workers, cfg.batch_size), batch_size=cfg.batch_size,
                          num_workers=workers, collate_fn=collate, generator=generator,
                          pin_memory=device.type == "cuda")
    if train:
        if dist.enabled:
            sampler = DistributedSampler(dataset, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed)
        elif cfg.balance == "sampler":
            labels = dataset.labels()
            counts = np.bincount(labels).astype(np.float64)
            weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
            sampler = WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)
        else:
            sampler = RandomSampler(dataset, generator=generator)
    else:
        if dist.enabled:  # each rank validates its own share; sums are reduced
            dataset = Subset(dataset, list(range(dist.rank, len(dataset), dist.world)))
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                      generator=generator, pin_memory=device.type == "cuda", persistent_workers=False)


def class_weights(labels: list[int], num_classes: int, device: torch.device) -> torch.Tensor:
    """--balance weights: each class's loss weighted by n_images / (n_classes * n_images_of_the_class)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.as_tensor(counts.sum() / (num_classes * np.maximum(counts, 1)), dtype=torch.float32, device=device)


def batch_mixer(cfg: TrainConfig, num_classes: int):
    """The mixup / cutmix transform of (images, labels) batches (one picked at random per batch when both are on);
    None when neither is."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    from torchvision.transforms import v2

    options = []
    if cfg.mixup:
        options.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
    if cfg.cutmix:
        options.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
    return options[0] if len(options) == 1 else v2.RandomChoice(options)
