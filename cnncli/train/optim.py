"""Optimisers (sgd with momentum/nesterov, adam, adamw, rmsprop, adagrad) with a discriminative learning rate for
the backbone (optionally decayed stage by stage), no weight decay on biases and normalisation parameters, and
learning-rate schedules (cosine, step, exponential, onecycle, constant) with linear warmup.

Schedules step once per optimiser step; all are torch.optim.lr_scheduler classes, so their state saves as plain
tensors and numbers (train_state.pt loads with weights_only=True).
"""

from __future__ import annotations

import torch
from torch import nn

from cnncli.train.config import TrainConfig


def no_decay(name: str, param: torch.Tensor) -> bool:
    """timm's rule (``param_groups_weight_decay``): biases and every 1-d parameter (normalisation scales and
    shifts) take no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias")


def param_groups(model: nn.Module, head: list[str], include: list[str], lr: float, backbone_lr_mult: float, *,
                 weight_decay: float = 0.0, decay_norm_bias: bool = True, layer_decay: float | None = None,
                 stages: list[tuple[str, list[str]]] | None = None) -> list[dict]:
    """The optimiser's groups over the parameters in ``include``: the head at ``lr`` (always the first group), the
    backbone at ``lr * backbone_lr_mult``; with ``layer_decay`` each backbone stage (``stages``, in forward order)
    at that rate times ``layer_decay ** (stages after it + 1)``, as timm's layer-wise decay (parameters in no stage
    count as the first). Without ``decay_norm_bias`` each group splits into a decayed part and a ``weight_decay
    0`` part for its biases and normalisation parameters."""
    params = dict(model.named_parameters())
    head_set = set(head)
    units: list[tuple[str, float, list[str]]] = [("head", lr, [n for n in include if n in head_set])]
    backbone = [n for n in include if n not in head_set]
    if backbone and layer_decay is not None and stages:
        stage_of = {n: i for i, (_, names) in enumerate(stages) for n in names}
        count = len(stages)
        for i, (stage, _) in enumerate(stages):
            names = [n for n in backbone if stage_of.get(n, 0) == i]
            units.append((f"backbone.{stage}", lr * backbone_lr_mult * layer_decay ** (count - i), names))
    elif backbone:
        units.append(("backbone", lr * backbone_lr_mult, backbone))
    groups = []
    for name, rate, names in units:
        decayed = [n for n in names if decay_norm_bias or not no_decay(n, params[n])]
        plain = [n for n in names if n not in set(decayed)]
        if decayed or name == "head":
            groups.append({"params": [params[n] for n in decayed], "lr": rate, "name": name,
                           "weight_decay": weight_decay})
        if plain:
            groups.append({"params": [params[n] for n in plain], "lr": rate, "name": name + ".no_decay",
                           "weight_decay": 0.0})
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
