"""``--lr auto``: the learning-rate range test (Smith 2015; fastai's ``lr_find``).

Train from the run's starting weights for a short sweep while the rate grows exponentially from ``START`` to
``END`` (every optimiser group keeps its ratio to the first, so discriminative and layer-wise rates scale
together), smooth the loss (an exponential moving average with bias correction), stop once it exceeds four times
its minimum, and pick the rate where the smoothed loss falls fastest per log-rate before its minimum (the
"steepest descent" rule), never above a tenth of the rate at the minimum. The weights, optimiser and random
generators are put back afterwards; the curve is drawn as lr_find.png in the run folder.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

START, END = 1e-7, 10.0
MIN_STEPS, MAX_STEPS = 30, 100
SMOOTHING = 0.9  # the loss EMA's beta (fastai: 0.98 over 100 steps; these sweeps are 30-100 steps)
DIVERGED = 4.0  # stop when the smoothed loss exceeds this multiple of its minimum
RULE = "steepest descent of the smoothed loss before its minimum, at most a tenth of the rate at the minimum"


@dataclass(frozen=True)
class RangeTest:
    lrs: list[float]
    losses: list[float]  # smoothed
    lr: float  # the chosen rate (of the first group, the head)
    rule: str = RULE

    def record(self) -> dict:
        return {"lr": self.lr, "rule": self.rule, "sweep": [self.lrs[0], self.lrs[-1]], "steps": len(self.lrs)}


def sweep_steps(batches_per_epoch: int) -> int:
    return max(MIN_STEPS, min(MAX_STEPS, batches_per_epoch))


def choose(lrs: list[float], losses: list[float]) -> float:
    """The rule in the module docstring."""
    lo = int(np.argmin(losses))
    if lo < 2:
        return lrs[max(lo, 0)] / 10
    slopes = np.gradient(np.asarray(losses[: lo + 1]), np.log(np.asarray(lrs[: lo + 1])))
    steepest = lrs[int(np.argmin(slopes))]
    return float(min(steepest, lrs[lo] / 10))


def range_test(step, module: torch.nn.Module, steps: int, bn: str) -> RangeTest:
    """Run the sweep with ``step`` (a :class:`cnncli.train.epoch.TrainStep`: its loader, criterion, mixer and
    device settings; its optimiser's groups give the rate ratios), then restore everything it changed."""
    from cnncli.train.epoch import step_inputs
    from cnncli.train.policy import set_train_mode
    from cnncli.train.resume import restore_rng, rng_state

    saved_model = copy.deepcopy(module.state_dict())
    saved_opt = copy.deepcopy(step.optimizer.state_dict())
    saved_rng = rng_state()
    groups = step.optimizer.param_groups
    ratios = [g["lr"] / groups[0]["lr"] if groups[0]["lr"] else 1.0 for g in groups]
    params = [p for g in groups for p in g["params"]]
    growth = (END / START) ** (1 / max(1, steps - 1))
    lrs, smoothed = [], []
    avg, best, lr = 0.0, math.inf, START
    set_train_mode(module, bn)
    try:
        while len(lrs) < steps:
            for batch in step.loader:
                if batch.images is None:
                    continue
                for g, r in zip(groups, ratios):
                    g["lr"] = lr * r
                x, _, target = step_inputs(step, batch)
                with step.on.autocast():
                    loss = step.criterion(module(x).float(), target)
                step.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], 1e3)
                step.optimizer.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    break
                avg = SMOOTHING * avg + (1 - SMOOTHING) * value
                now = avg / (1 - SMOOTHING ** (len(lrs) + 1))
                lrs.append(lr)
                smoothed.append(now)
                best = min(best, now)
                lr *= growth
                if now > DIVERGED * best or len(lrs) >= steps:
                    break
            else:
                continue
            break
    finally:
        module.load_state_dict(saved_model)
        step.optimizer.load_state_dict(saved_opt)
        step.optimizer.zero_grad(set_to_none=True)
        restore_rng(saved_rng)
    if len(lrs) < 3:
        from cnncli.core.errors import UsageError

        raise UsageError("--lr auto: the range test saw fewer than 3 readable batches; give --lr a number.")
    return RangeTest(lrs, smoothed, choose(lrs, smoothed))


def plot(test: RangeTest, path: Path) -> None:
    """lr_find.png: the smoothed loss against the rate (log scale), the chosen rate marked."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    from cnncli.core.atomic import write_bytes_atomic

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(test.lrs, test.losses)
    ax.axvline(test.lr, color="tab:red", linestyle="--", label=f"chosen {test.lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title("LR range test")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
