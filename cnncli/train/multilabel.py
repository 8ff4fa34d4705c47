"""The pieces of multi-label training: multi-hot targets, the losses (sigmoid + binary cross-entropy, or the
asymmetric loss), per-class positive weights, mixup / cutmix / label smoothing for multi-hot targets, and the
validation pass that scores mAP and tunes the per-class thresholds.

Asymmetric loss: Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021: a focusing term
that down-weights easy negatives more than positives (gamma_neg > gamma_pos) and a probability margin that drops
the easiest negatives altogether (clip).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnncli.train.epoch import ValStep, predict


@dataclass(frozen=True)
class TargetSample:
    """A multi-label image as :class:`cnncli.train.datasets.SampleDataset` reads it: its ``label`` is the
    float32 multi-hot target, which the default collate stacks into (batch, classes)."""

    path: Path
    label: torch.Tensor


def target_samples(samples, n_classes: int) -> list[TargetSample]:
    out = []
    for sample in samples:
        target = torch.zeros(n_classes, dtype=torch.float32)
        target[list(sample.labels)] = 1.0
        out.append(TargetSample(sample.path, target))
    return out


def positive_weights(samples, n_classes: int, device: torch.device) -> torch.Tensor:
    """--balance weights for multi-label data: BCE's ``pos_weight`` per class, negatives / positives among the
    training images (1 for a class with no positive image), capped at 100 so a nearly absent class cannot swamp
    the loss."""
    counts = np.zeros(n_classes)
    for sample in samples:
        counts[list(sample.labels)] += 1
    n = len(samples)
    weights = np.where(counts > 0, (n - counts) / np.maximum(counts, 1), 1.0)
    return torch.tensor(np.clip(weights, 1e-3, 100.0), dtype=torch.float32, device=device)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al. 2021) on logits and multi-hot (possibly soft) targets; ``reduction`` mean
    divides the sum by the number of images, as BCE's mean over images and classes would be times the classes."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8,
                 reduction: str = "mean", pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps, self.reduction = gamma_neg, gamma_pos, clip, eps, reduction
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits)
        p_neg = (p - self.clip).clamp(min=0) if self.clip else p  # the probability margin: easy negatives count 0
        loss_pos = targets * torch.log(p.clamp(min=self.eps)) * (1 - p) ** self.gamma_pos
        loss_neg = (1 - targets) * torch.log((1 - p_neg).clamp(min=self.eps)) * p_neg ** self.gamma_neg
        if self.pos_weight is not None:
            loss_pos = loss_pos * self.pos_weight
        loss = -(loss_pos + loss_neg).sum()
        return loss / logits.shape[0] if self.reduction == "mean" else loss


class SmoothedTargets(nn.Module):
    """Label smoothing for multi-hot targets: each class's 0/1 target moves ``eps / 2`` towards 1/2 (the binary
    form of smoothing), then ``criterion``."""

    def __init__(self, criterion: nn.Module, eps: float) -> None:
        super().__init__()
        self.criterion, self.eps = criterion, eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits, targets * (1 - self.eps) + self.eps / 2)


def criteria(loss: str, label_smoothing: float, pos_weight: torch.Tensor | None) -> tuple[nn.Module, nn.Module]:
    """(training loss, validation loss summed over images) for ``--loss`` ce / bce (binary cross-entropy on a
    sigmoid per class: what cross-entropy is for independent labels) or asl."""
    if loss == "asl":
        train, val = AsymmetricLoss(pos_weight=pos_weight), AsymmetricLoss(reduction="sum")
    else:
        train = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        val = _SummedBCE()
    return (SmoothedTargets(train, label_smoothing) if label_smoothing else train), val


class _SummedBCE(nn.Module):
    """BCE summed over images and averaged over classes: a per-image loss, like the single-label val loss."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[1]


def multihot_mixer(mixup: float, cutmix: float) -> Callable | None:
    """Mixup / cutmix for multi-hot targets (one picked at random per batch when both are on): the images mix
    as usual and the targets mix with the same weight (a label present in either image keeps a share of it)."""
    if not (mixup or cutmix):
        return None
    options = [m for m, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha]

    def mix(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kind = options[int(torch.randint(len(options), (1,)))]
        alpha = mixup if kind == "mixup" else cutmix
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(x.shape[0], device=x.device)
        if kind == "mixup":
            return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
        h, w = x.shape[-2:]
        cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        x = x.clone()
        x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
        kept = 1 - (bottom - top) * (right - left) / (h * w)
        return x, kept * y + (1 - kept) * y[perm]

    return mix


def validate_multilabel(val: ValStep) -> dict:
    """{"loss", "acc" (exact match at the tuned thresholds), "top5" (None), "map", "thresholds", "probs",
    "targets"} over the validation images (one process)."""
    from cnncli.evaluate.multilabel import compute_multilabel_metrics, tune_thresholds

    logits, targets = predict(val.module, val.loader, val.on, val.note_errors)
    n = len(targets)
    if not n:
        return {"loss": 0.0, "acc": 0.0, "top5": None, "map": 0.0, "thresholds": None}
    loss = val.criterion(logits, targets).item() / n
    probs, y = torch.sigmoid(logits).numpy(), targets.numpy()
    thresholds = tune_thresholds(y, probs)
    result = compute_multilabel_metrics(probs, y, [str(i) for i in range(y.shape[1])], thresholds)
    return {"loss": loss, "acc": result.exact_match, "top5": None, "map": result.mAP, "thresholds": thresholds}
