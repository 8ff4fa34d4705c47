"""``--ema``: a moving average of the model's weights (timm's ``ModelEmaV3``, with its warm-up), updated after every
optimiser step; each epoch scores both the averaged and the raw weights and keeps the better as best.

The warm-up (decay ``1 - (1 + step) ** -0.75``, capped at ``--ema-decay``) lets the average follow the weights
closely in a short run: after 100 steps it forgets about 3% a step, after 10,000 steps 0.1%.
"""

from __future__ import annotations

from torch import nn

WARMUP_POWER = 0.75  # timm's suggestion for runs shorter than about 100k steps


class ModelAverage:
    """The EMA of ``model`` and the number of updates it has had (saved with train_state.pt for --resume)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=WARMUP_POWER)
        self.model = model
        self.updates = 0

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def submodule(self, like: nn.Module) -> nn.Module:
        """The averaged counterpart of ``like`` (the model itself, or its head when features are cached)."""
        if like is self.model:
            return self.module
        name = next(n for n, m in self.model.named_modules() if m is like)
        return self.module.get_submodule(name)

    def update(self) -> None:
        self.updates += 1
        self.ema.update(self.model, step=self.updates)

    def state_dict(self) -> dict:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])


def pick(raw: dict, averaged: dict, monitor: str) -> str:
    """Which scores are better by ``monitor``: "ema" or "raw" (a tie keeps the raw weights)."""
    if monitor == "val_loss":
        return "ema" if averaged["loss"] < raw["loss"] else "raw"
    if averaged["acc"] != raw["acc"]:
        return "ema" if averaged["acc"] > raw["acc"] else "raw"
    return "ema" if averaged["loss"] < raw["loss"] else "raw"
