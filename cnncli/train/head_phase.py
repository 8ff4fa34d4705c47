"""``--head-epochs K`` (the finetune recipe's first phase): train the new head alone on the frozen backbone's
features, computed once per image (no augmentation), for K epochs, before the run's own epochs train the
``--trainable`` parts from that head. A linear probe first, then fine-tuning (Kumar et al., 2022, "LP-FT"): the
backbone is not pulled about by the gradients of a random head, and the probe costs one forward pass per image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from cnncli.models.registry import head_name, head_parameter_names
from cnncli.train.epoch import ValStep, train_epoch, validate
from cnncli.train.features import FeatureDataset, head_inputs
from cnncli.train.interrupt import StopFlag
from cnncli.train.loaders import make_loader


@dataclass(frozen=True)
class HeadPhase:
    epochs: int
    seconds: float
    val_acc: float
    val_loss: float

    def describe(self) -> str:
        return (f"head phase: {self.epochs} epochs of the head on cached backbone features in {self.seconds:.1f} s, "
                f"val acc {self.val_acc:.4f}, val loss {self.val_loss:.4f}")


def train_head_first(run, flag: StopFlag) -> HeadPhase | None:
    """Train ``run``'s head on cached features (see the module docstring); None when Ctrl-C stopped it."""
    from cnncli.train.datasets import SampleDataset
    from cnncli.train.optim import build_optimizer, build_scheduler, param_groups

    cfg, model, device = run.cfg, run.model, run.device
    t0 = time.perf_counter()
    in_order = dict(cfg=cfg, dist=run.dist, train=False, generator=run.generator, workers=run.workers, device=device)
    plain_train = SampleDataset(run.splits.train, run.card.preprocessing)
    train = FeatureDataset(*head_inputs(model, make_loader(plain_train, **in_order), device, False, run.note_errors))
    val = FeatureDataset(*head_inputs(model, make_loader(run.val_ds, **in_order), device, False, run.note_errors))
    head = model.get_submodule(head_name(model))
    names = head_parameter_names(model)
    phase_cfg = replace(cfg, epochs=cfg.head_epochs, warmup_epochs=0.0, schedule="cosine")
    loader = make_loader(train, phase_cfg, run.dist, True, run.generator, 0, device)
    groups = param_groups(model, names, names, cfg.learning_rate, 1.0, weight_decay=cfg.weight_decay,
                          decay_norm_bias=cfg.decay_norm_bias)
    optimizer = build_optimizer(groups, phase_cfg)
    step = replace(run.step, forward=head, loader=loader, optimizer=optimizer,
                   scheduler=build_scheduler(optimizer, phase_cfg, len(loader)), mixer=None, accumulate=1,
                   epochs=cfg.head_epochs, show_progress=False, after_step=None,
                   criterion=getattr(run.step.criterion, "label_loss", run.step.criterion))
    step.scaler = torch.amp.GradScaler("cuda", enabled=False)
    head.train()
    for epoch in range(1, cfg.head_epochs + 1):
        run.generator.manual_seed(cfg.seed * 100_003 - epoch)
        train_epoch(step, epoch, flag)
        if flag.stop:
            return None
    scores = validate(ValStep(module=head, loader=make_loader(val, phase_cfg, run.dist, False, run.generator, 0,
                                                              device),
                              criterion=run.val.criterion, on=replace(run.on, channels_last=False), dist=run.dist,
                              note_errors=run.note_errors, num_classes=len(run.classes)))
    for group in run.step.optimizer.param_groups:  # the run's optimiser starts afresh from the trained head
        for p in group["params"]:
            run.step.optimizer.state.pop(p, None)
    return HeadPhase(cfg.head_epochs, time.perf_counter() - t0, scores["acc"], scores["loss"])
