"""Trainable-part policies (head, last:N, all, gradual unfreezing) and BatchNorm freezing.

Frozen parameters get ``requires_grad=False`` (and are left out of the optimiser by :mod:`cnncli.train.optim`);
with ``--bn frozen`` the BatchNorm layers whose parameters are all frozen stay in eval mode during training,
so their running statistics do not drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cnncli.core.errors import UsageError
from cnncli.models.registry import backbone_stages, head_parameter_names
from cnncli.train.config import parse_trainable


@dataclass
class TrainablePlan:
    policy: str  # as given: head | last:N | all
    head: list[str]  # head parameter names
    trainable: list[str]  # parameter names trained in the current phase
    stages: list[str]  # backbone stage names that are trainable in the current phase

    @property
    def backbone(self) -> list[str]:
        head = set(self.head)
        return [n for n in self.trainable if n not in head]


def trainable_names(model: nn.Module, spec: str) -> TrainablePlan:
    """Which parameters ``spec`` trains: the head only, the head plus the last N backbone stages, or all."""
    kind, n = parse_trainable(spec)
    head = head_parameter_names(model)
    all_names = [name for name, _ in model.named_parameters()]
    if kind == "all":
        stages = [s for s, _ in backbone_stages(model)]
        return TrainablePlan(spec, head, all_names, stages)
    if kind == "head":
        return TrainablePlan(spec, head, list(head), [])
    stages = backbone_stages(model)
    if n > len(stages):
        raise UsageError(f"--trainable last:{n} asks for more stages than this model has ({len(stages)}); "
                         f"use last:{len(stages)} or all.")
    chosen = stages[-n:]
    names = set(head) | {p for _, params in chosen for p in params}
    return TrainablePlan(spec, head, [p for p in all_names if p in names], [s for s, _ in chosen])


def apply_trainable(model: nn.Module, plan: TrainablePlan) -> int:
    """Set requires_grad from ``plan``; returns the number of trainable parameter values."""
    wanted = set(plan.trainable)
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)
        if name in wanted:
            count += param.numel()
    return count


def frozen_batchnorms(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose affine parameters are all frozen (or, without affine parameters, whose
    neighbourhood is frozen: every parameter of the model frozen except the head is the usual case)."""
    found = []
    any_frozen = any(not p.requires_grad for p in model.parameters())
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            frozen = all(not p.requires_grad for p in params) if params else any_frozen
            if frozen:
                found.append(module)
    return found


def set_train_mode(model: nn.Module, bn: str) -> None:
    """``model.train()``, then with ``bn == "frozen"`` put the BatchNorm layers of frozen parts back in eval mode."""
    model.train()
    if bn == "frozen":
        for module in frozen_batchnorms(model):
            module.eval()
