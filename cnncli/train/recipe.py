"""The training recipe: the ``finetune`` defaults (what they do, and why), the sentence the run's first line says about
them, and the parts a run adds on top of its optimiser (``--teacher``, ``--lr auto``, ``--ema``).

``finetune`` by default (every part overridable): ``--head-epochs 10``, the new head trained alone on cached
backbone features (seconds on a CPU; :mod:`cnncli.train.head_phase`), then ``--epochs 6`` of every layer
(``--trainable all``) at the head's rate (``--backbone-lr-mult 1``) after ``--warmup-epochs 1``, AdamW with
``--weight-decay 0.05`` (timm's; none on biases and normalisation parameters), label smoothing 0.1, a model EMA
(``--ema``; each epoch keeps the better of the EMA and the raw weights) and ``--augment auto``: the photo
augmentation (random-resized crops down to 8% of the area, colour jitter, flip) when the data are presumed natural
photos (ImageNet weights on colour images, :mod:`cnncli.train.augment`), else ``light``. Chosen by
``benchmarks/bench_recipes.py`` against a loop of timm's own factories on three small real tasks
(benchmarks/README.md): the previous default (5 epochs, backbone at a tenth of the head's rate, crops down to 35%,
no EMA, no warm-up) ended 3.6 points lower on photos (0.859 against 0.895, AMD EPYC); weight decay 1e-4 -> 0.05
moved photos 0.887 -> 0.906, digits 0.900 -> 0.885, faces 1.000 -> 1.000 (pilots, AMD EPYC, 2026-12-04). Nothing
here imports torch at module level (the CLI reads the defaults).
"""
from __future__ import annotations

from dataclasses import replace

from cnncli.train.config import TrainConfig

FINETUNE_DEFAULTS = {"trainable": "all", "head_epochs": 10, "epochs": 6, "label_smoothing": 0.1, "augment": "auto",
                     "backbone_lr_mult": 1.0, "warmup_epochs": 1.0, "ema": True, "weight_decay": 0.05}


def describe_recipe(cfg: TrainConfig) -> str:
    """One clause for the run's first line: the phases, rates and regularisers this run uses."""
    parts = []
    if cfg.head_epochs and cfg.trainable != "head":
        parts.append(f"{cfg.head_epochs} head epochs on cached features, then {cfg.epochs} epochs of {cfg.trainable}")
    else:
        parts.append(f"{cfg.epochs} epochs of {cfg.trainable}")
    if cfg.freeze_epochs:
        parts.append(f"the first {cfg.freeze_epochs} with the backbone frozen")
    lr = "auto (LR range test)" if cfg.lr == "auto" else f"{cfg.learning_rate:g}"
    rate = f"{cfg.optimizer} lr {lr}, {cfg.schedule}"
    if cfg.warmup_epochs:
        rate += f" after {cfg.warmup_epochs:g} warm-up epoch{'' if cfg.warmup_epochs == 1 else 's'}"
    if cfg.trainable != "head" and cfg.command == "finetune" and cfg.backbone_lr_mult != 1:
        rate += f", backbone x{cfg.backbone_lr_mult:g}"
    if cfg.layer_decay:
        rate += f", layer decay {cfg.layer_decay:g}"
    parts.append(rate)
    parts.append(f"weight decay {cfg.weight_decay:g}" + ("" if cfg.decay_norm_bias else " (none on norm/bias)"))
    if cfg.label_smoothing:
        parts.append(f"label smoothing {cfg.label_smoothing:g}")
    if cfg.ema:
        parts.append(f"EMA {cfg.ema_decay:g} (best of EMA and raw)")
    if cfg.teacher:
        parts.append(f"distilling {cfg.teacher} (weight {cfg.distill_weight:g}, T {cfg.distill_temperature:g})")
    return "recipe: " + ", ".join(parts)


def add_recipe_parts(run) -> None:
    """--teacher (the loss), --lr auto (the range test sets the rates) and --ema (the average after each step)."""
    cfg = run.cfg
    if cfg.teacher:
        from cnncli.train.distill import DistillationLoss, load_teacher

        teacher, card = load_teacher(cfg.teacher, run.classes, run.device)
        keep = cfg.augment == "none" and not (cfg.mixup or cfg.cutmix)
        run.step.criterion = DistillationLoss(run.step.criterion, run.step_module, teacher,
                                               run.card.preprocessing, card.preprocessing, cfg.distill_weight,
                                               cfg.distill_temperature, keep_logits=keep)
    run.lr_test = None
    if cfg.lr == "auto":
        from cnncli.train import lr_find

        run.lr_test = test = lr_find.range_test(run.step, run.step_module,
                                                 lr_find.sweep_steps(len(run.train_loader)), cfg.bn)
        from cnncli.train.optim import build_scheduler

        groups = run.step.optimizer.param_groups
        scale = test.lr / groups[0].get("initial_lr", groups[0]["lr"])
        for group in groups:  # every group keeps its ratio to the head's rate; the schedule is planned anew
            group["lr"] = group["initial_lr"] = group.get("initial_lr", group["lr"]) * scale
        run.step.scheduler = build_scheduler(run.step.optimizer, cfg, run.steps_per_epoch)
        run.cfg = replace(cfg, lr=test.lr, lr_find=test.record())
    run.average = None
    if cfg.ema:
        from cnncli.train.ema import ModelAverage

        run.average = ModelAverage(run.model, cfg.ema_decay)
        run.step.after_step = run.average.update

