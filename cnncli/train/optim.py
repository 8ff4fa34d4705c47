"""Optimisers (sgd with momentum/nesterov, adam, adamw, rmsprop, adagrad) with a discriminative learning rate for
the backbone, and learning-rate schedules (cosine, step, exponential, onecycle, constant) with linear warmup.

Schedules step once per optimiser step; all are torch.optim.lr_scheduler classes, so their state saves as plain
tensors and numbers (train_state.pt loads with weights_only=True).
"""

from __future__ import annotations

import torch
from torch import nn

from cnncli.train.config import TrainConfig


def param_groups(model: nn.Module, head: list[str], include: list[str], lr: float,
                 backbone_lr_mult: float) -> list[dict]:
    """Two groups: the head at ``lr`` and the backbone parameters in ``include`` at ``lr * backbone_lr_mult``."""
    params = dict(model.named_parameters())
    head_set = set(head)
    groups = [{"params": [params[n] for n in include if n in head_set], "lr": lr, "name": "head"}]
    backbone = [params[n] for n in include if n not in head_set]
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_mult, "name": "backbone"})
    return groups


def build_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    wd, name = cfg.weight_decay, cfg.optimizer
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.learning_rate, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=wd)
    return torch.optim.Adagrad(groups, lr=cfg.learning_rate, weight_decay=wd)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """The schedule over ``cfg.epochs * steps_per_epoch`` optimiser steps, after ``warmup_epochs`` of linear warmup."""
    from torch.optim import lr_scheduler as S

    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    if cfg.schedule == "onecycle":  # has its own warmup: pct_start
        pct = warmup / total if warmup else 0.3
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return S.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=max(pct, 1e-3),
                            cycle_momentum=cfg.optimizer in ("sgd", "rmsprop") and cfg.momentum > 0)
    rest = total - warmup
    if cfg.schedule == "cosine":
        main = S.CosineAnnealingLR(optimizer, T_max=max(1, rest))
    elif cfg.schedule == "step":
        main = S.StepLR(optimizer, step_size=max(1, cfg.step_epochs * steps_per_epoch), gamma=cfg.gamma)
    elif cfg.schedule == "exponential":
        main = S.ExponentialLR(optimizer, gamma=cfg.gamma ** (1.0 / steps_per_epoch))  # gamma per epoch
    else:
        main = S.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if not warmup:
        return main
    warm = S.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return S.SequentialLR(optimizer, [warm, main], milestones=[warmup])
