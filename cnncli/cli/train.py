"""``cnncli train`` (random initialisation) and ``cnncli finetune`` (pretrained backbone, new head): options ->
:class:`cnncli.train.config.TrainConfig` -> :func:`cnncli.train.loop.run_training` -> a one-line summary."""

from __future__ import annotations

from typing import List, Optional

import typer

DATA_HELP = "A folder of class sub-folders, a folder with train/ and val/ (valid/, validation/), or a CSV manifest path,label."


def _options(command: str):
    """The shared option set; ``finetune`` changes only some defaults."""
    finetune = command == "finetune"

    def run(
        ctx: typer.Context,
        data: Optional[str] = typer.Argument(None, metavar="DATA", help=DATA_HELP + " Optional with --resume (the run records it)."),
        arch: Optional[str] = typer.Option(None if finetune else "simplecnn", "--arch", "-a", help="Registry architecture (`cnncli models`)" + ("; default: the --weights model file's, else efficientnet_lite0." if finetune else ".")),
        weights: str = typer.Option("default" if finetune else "none", "--weights", help="Pretrained weights: default, an enum name, or a weights / cnncli model file." if finetune else "none (train from scratch); use finetune for pretrained weights."),
        init: str = typer.Option("default", "--init", help="Initialisation for train: default, kaiming or xavier."),
        out: Optional[str] = typer.Option(None, "--out", "-o", help=f"Run folder (default runs/{command}-N)."),
        exist_ok: bool = typer.Option(False, "--exist-ok", help="Replace a previous run in --out (its files are removed first); without it an existing run folder is refused."),
        resume: Optional[str] = typer.Option(None, "--resume", help="Continue the run in this folder from its last saved epoch, with its saved settings and data; a larger --epochs extends it (the schedule is re-planned), other differing options are refused."),
        epochs: int = typer.Option(10, "--epochs", "-e"),
        batch_size: int = typer.Option(32, "--batch-size", "-b"),
        optimizer: str = typer.Option("adamw", "--optimizer", help="sgd, adam, adamw, rmsprop or adagrad."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: 0.01 for sgd and adagrad, 1e-3 otherwise)."),
        momentum: float = typer.Option(0.9, "--momentum"),
        nesterov: bool = typer.Option(False, "--nesterov"),
        weight_decay: float = typer.Option(1e-4, "--weight-decay"),
        schedule: str = typer.Option("cosine", "--schedule", help="cosine, step, exponential, onecycle or constant."),
        warmup_epochs: float = typer.Option(0.0, "--warmup-epochs"),
        step_epochs: int = typer.Option(10, "--step-epochs", help="step schedule: decay every N epochs."),
        gamma: float = typer.Option(0.1, "--gamma", help="step/exponential schedule: decay factor (per step / per epoch)."),
        label_smoothing: float = typer.Option(0.0, "--label-smoothing"),
        dropout: Optional[float] = typer.Option(None, "--dropout", help="Dropout on the head's input while training."),
        clip_grad: Optional[float] = typer.Option(None, "--clip-grad", help="Clip the gradient norm to this value."),
        accumulate: int = typer.Option(1, "--accumulate", help="Accumulate gradients over N batches."),
        loss: str = typer.Option("ce", "--loss", help="ce (cross-entropy) or hinge (multi-class hinge)."),
        balance: str = typer.Option("none", "--balance", help="Imbalanced classes: none, sampler or weights."),
        augment: str = typer.Option("light", "--augment", metavar="[light|standard|strong|none]", help="light (default, safe for any task: small shifts, scaling and rotation scaled to the input size); standard (random-resized crops, colour jitter: natural photos); strong (+ TrivialAugment, random erasing: large photo datasets, long runs); none."),
        flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Random horizontal flip (default: only when fine-tuning ImageNet weights on colour images; mirrored digits and text change meaning)."),
        mixup: float = typer.Option(0.0, "--mixup", help="MixUp alpha (0: off)."),
        cutmix: float = typer.Option(0.0, "--cutmix", help="CutMix alpha (0: off)."),
        trainable: str = typer.Option("head" if finetune else "all", "--trainable", help="head, last:N (last N backbone stages + head) or all."),
        freeze_epochs: int = typer.Option(0, "--freeze-epochs", help="Train the head only for K epochs, then everything."),
        backbone_lr_mult: float = typer.Option(0.1 if finetune else 1.0, "--backbone-lr-mult", help="Learning-rate factor for the unfrozen backbone."),
        bn: str = typer.Option("frozen", "--bn", help="BatchNorm in frozen parts: frozen (eval mode) or train."),
        cache_features: bool = typer.Option(False, "--cache-features", help="Compute the frozen backbone's features once (needs --trainable head --augment none)."),
        val_split: float = typer.Option(0.2, "--val-split", help="Held-out fraction for a class-folder dataset."),
        val_csv: Optional[str] = typer.Option(None, "--val-csv", help="Validation manifest for a CSV dataset."),
        allow_outside: bool = typer.Option(False, "--allow-outside", help="A CSV manifest may name files outside its own folder (.. or absolute paths)."),
        grayscale: bool = typer.Option(False, "--grayscale", help="1-channel input."),
        image_size: Optional[int] = typer.Option(None, "--image-size", help="Input size in pixels (square)."),
        workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader worker processes (default: 0 for small datasets)."),
        patience: Optional[int] = typer.Option(None, "--patience", help="Early stopping after P epochs without improvement."),
        monitor: str = typer.Option("val_loss", "--monitor", help="val_loss or val_acc (best checkpoint and early stopping)."),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        amp: str = typer.Option("auto", "--amp", help="CUDA mixed precision: auto, bf16, fp16 or off."),
        channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last"),
        compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or per-epoch lines."),
        log: List[str] = typer.Option([], "--log", metavar="[tensorboard|mlflow]", help="Track the run: tensorboard (event files in RUN/tensorboard) or mlflow ($MLFLOW_TRACKING_URI, else ./mlruns); repeat for both."),
    ) -> None:
        from cnncli.errors import UsageError
        from cnncli.report import info
        from cnncli.train.config import TrainConfig
        from cnncli.train.loop import run_training

        values = dict(locals())
        if data is None and resume is None:
            raise UsageError(f"{command} needs DATA (a dataset folder or CSV manifest), or --resume RUN to continue a run.")
        values["data"] = data or ""
        # the options typed on the command line (or set through the environment), not defaults: --resume checks them
        given = frozenset(name for name in ctx.params
                          if getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT"))
        fields = TrainConfig.__dataclass_fields__
        cfg = TrainConfig(command=command, explicit=given,
                          **{k: v for k, v in values.items() if k in fields and k not in ("command", "explicit")})
        result = run_training(cfg)
        if result.history:
            info(f"best epoch {result.best_epoch}: val acc {result.best_val_acc:.4f}, val loss {result.best_val_loss:.4f} "
                 f"({result.stopped}); model: {result.out_dir / 'best.safetensors'}")
        if result.skipped_images:
            info(f"{result.skipped_images} unreadable image(s) skipped (listed in {result.out_dir / 'metrics.json'}).")

    return run


def register(app: typer.Typer) -> None:
    app.command("train", help="Train a CNN from scratch (random initialisation) on a labelled image dataset.")(_options("train"))
    app.command("finetune", help="Transfer learning: a pretrained backbone, a new head, and a trainable-part policy.")(_options("finetune"))
