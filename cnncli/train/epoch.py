"""One epoch of training and one validation pass.

:func:`train_epoch` follows one batch at a time: images to the device (channels_last when asked), mixup/cutmix,
the forward pass under autocast, the loss (a NaN guard stops the run), the scaled backward pass, and every
``accumulate`` batches the optimiser step (with gradient clipping) and the schedule's step. Everything it needs is
one :class:`TrainStep`; :func:`validate` takes one :class:`ValStep`. Both sum their counts over the torchrun ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from cnncli.core.progress import progress_bar
from cnncli.evaluate.run import TOP5_MIN_CLASSES
from cnncli.train.distributed import Dist
from cnncli.train.interrupt import StopFlag


@dataclass(frozen=True)
class DeviceSettings:
    """Where tensors run and in what form: the device, channels_last memory format, and the autocast dtype
    (bfloat16 / float16 on CUDA, None for full precision)."""

    device: torch.device
    channels_last: bool
    amp_dtype: torch.dtype | None

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


@dataclass
class TrainStep:
    """Everything a training epoch uses, built once by the run (``forward`` changes when DDP re-wraps the model
    after unfreezing; ``scheduler`` when --resume re-plans it)."""

    forward: Callable[[torch.Tensor], torch.Tensor]  # the trained module: compiled and / or DDP-wrapped
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # float16 loss scaling; a pass-through when disabled
    criterion: nn.Module
    mixer: Callable | None  # mixup / cutmix of (images, labels), or None
    on: DeviceSettings
    accumulate: int  # batches per optimiser step
    clip_grad: float | None  # max gradient norm
    dist: Dist
    note_errors: Callable[[list[str]], None]  # unreadable images of a batch
    on_diverged: Callable[[str], None]  # raises: a NaN or infinite loss
    epochs: int  # the run's total, for the progress bar's "epoch N/M"
    show_progress: bool
    after_step: Callable[[], None] | None = None  # after each optimiser step: the model EMA's update


@dataclass(frozen=True)
class EpochTotals:
    loss: float  # mean training loss per image
    acc: float  # training accuracy (against the hard labels of mixed targets)
    seen: float  # images trained on, over all ranks


def train_epoch(step: TrainStep, epoch: int, flag: StopFlag) -> EpochTotals:
    """Train one epoch (or until Ctrl-C sets ``flag.stop``, after the current batch); the model must already be
    in training mode."""
    params = [p for g in step.optimizer.param_groups for p in g["params"]]
    loss_sum = correct = seen = 0.0
    n_batches = len(step.loader)
    pending = 0  # batches whose gradients wait for the optimiser step
    with progress_bar(f"epoch {epoch}/{step.epochs}", n_batches, fields={"info": ""},
                      enabled=step.show_progress) as bar:
        step.optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        for i, batch in enumerate(step.loader):
            if batch.errors:
                step.note_errors(batch.errors)
            if batch.images is None:
                continue
            x, y, target = step_inputs(step, batch)
            with step.on.autocast():
                logits = step.forward(x)
                loss = step.criterion(logits.float(), target)
            hard = target.argmax(1) if target.ndim == 2 else target
            # one device sync a step: the loss and the batch's correct count read together
            batch_loss, batch_correct = torch.stack(
                [loss.detach().float(), (logits.argmax(1) == hard).sum().float()]).tolist()
            if not math.isfinite(batch_loss):
                step.on_diverged(f"the loss became {batch_loss} at epoch {epoch}, step {i + 1}")
            step.scaler.scale(loss / step.accumulate).backward()
            pending += 1
            if pending == step.accumulate or i == n_batches - 1:
                _optimiser_step(step, params)
                pending = 0
            n = y.shape[0]
            loss_sum += batch_loss * n
            correct += batch_correct
            seen += n
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.advance(1, info=f"loss {batch_loss:.4f} acc {correct / seen:.3f} {rate:.0f} img/s")
            if flag.stop:
                break
        if pending:  # the epoch's last batches were unreadable (or Ctrl-C): their gradients still count
            _optimiser_step(step, params)
    loss_sum, correct, seen = step.dist.all_sum([loss_sum, correct, seen])
    return EpochTotals(loss_sum / max(seen, 1), correct / max(seen, 1), seen)


def step_inputs(step: TrainStep, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's images and labels on the device (channels_last when asked), and the target the loss sees (the
    labels, or the soft targets of mixup/cutmix)."""
    x = batch.images.to(step.on.device, non_blocking=True)
    y = batch.labels.to(step.on.device, non_blocking=True)
    if step.on.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if step.mixer is not None:
        x, target = step.mixer(x, y)
        return x, y, target
    return x, y, y


def _optimiser_step(step: TrainStep, params: list[torch.Tensor]) -> None:
    """Clip (after unscaling), step the optimiser and the schedule, and clear the gradients."""
    if step.clip_grad:
        step.scaler.unscale_(step.optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], step.clip_grad)
    step.scaler.step(step.optimizer)
    step.scaler.update()
    step.optimizer.zero_grad(set_to_none=True)
    step.scheduler.step()
    if step.after_step is not None:
        step.after_step()


@dataclass(frozen=True)
class ValStep:
    """Everything a validation pass uses: the module (the whole model, or the head over cached features), the
    validation batches, a summed loss, where tensors run, and the number of classes (top-5 only above 5)."""

    module: nn.Module
    loader: DataLoader
    criterion: nn.Module  # reduction="sum"
    on: DeviceSettings
    dist: Dist
    note_errors: Callable[[list[str]], None]
    num_classes: int


def validate(val: ValStep) -> dict:
    """{"loss", "acc", "top5"} over the validation split (all ranks); top5 is None for 5 classes or fewer."""
    logits, labels = predict(val.module, val.loader, val.on, val.note_errors)
    n = len(labels)
    if n:
        loss = val.criterion(logits, labels).item()
        top1 = (logits.argmax(1) == labels).sum().item()
        top5 = (logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]).any(1).sum().item()
    else:
        loss = top1 = top5 = 0.0
    loss, top1, top5, n = val.dist.all_sum([loss, top1, top5, n])
    n = max(n, 1)
    reported = top5 / n if val.num_classes >= TOP5_MIN_CLASSES else None  # top-5 of 5 classes or fewer is always 1
    return {"loss": loss / n, "acc": top1 / n, "top5": reported}


@torch.no_grad()
def predict(module: nn.Module, loader: DataLoader, on: DeviceSettings,
            note_errors: Callable[[list[str]], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 logits (on the CPU) and labels of every readable image of ``loader``, in eval mode."""
    from cnncli.train.datasets import device_batches

    module.eval()
    logits, labels = [], []
    for x, y in device_batches(loader, on.device, on.channels_last, note_errors):
        with on.autocast():
            logits.append(module(x).float().cpu())
        labels.append(y)
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def weights_are_finite(model: nn.Module) -> bool:
    """Every floating-point parameter and buffer is finite: what may be saved as best/last."""
    with torch.no_grad():
        return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
