"""``cnncli train`` (random initialisation) and ``cnncli finetune`` (pretrained backbone, new head): options ->
:class:`cnncli.train.config.TrainConfig` -> :func:`cnncli.train.loop.run_training` -> a one-line summary.

``--config runs/x/args.json`` starts from a run's saved settings; options given on the command line override them
(click's parameter source tells which were given)."""

from __future__ import annotations

from typing import Literal

import typer

from cnncli.cli import validate as v
from cnncli.cli.common import (
    batch_size_option,
    choices,
    device_option,
    image_size_option,
    output_option,
    seed_option,
    workers_option,
)
from cnncli.train.config import AMP_MODES, AUGMENTS, BALANCES, BN_MODES, INITS, LOSSES, MONITORS, OPTIMIZERS, SCHEDULES
from cnncli.train.recipe import FINETUNE_DEFAULTS as FT

DATA_HELP = ("A folder of class sub-folders, a folder with train/ and val/ (valid/, validation/), a CSV manifest "
             "path,label, a packed dataset (a folder or URI with dataset.json, from `cnncli data pack`), or an "
             "object-store prefix of class folders (s3://...): the last two are streamed.")

Optimizer = Literal[OPTIMIZERS]
Schedule = Literal[SCHEDULES]
Augment = Literal[AUGMENTS]
Loss = Literal[LOSSES]
Balance = Literal[BALANCES]
BnMode = Literal[BN_MODES]
Init = Literal[INITS]
Monitor = Literal[MONITORS]
Amp = Literal[AMP_MODES]

SHORT_HELP = {
    "train": "Train a CNN from scratch on a labelled image dataset.",
    "finetune": "Fine-tune a pretrained backbone with a new head.",
}
LONG_HELP = {
    "train": "Train a CNN from scratch (random initialisation) on a labelled image dataset.",
    "finetune": "Transfer learning: a pretrained backbone, a new head, and a trainable-part policy.",
}


def _options(command: str):
    """The shared option set; ``finetune`` changes only some defaults."""
    finetune = command == "finetune"

    def run(
        ctx: typer.Context,
        data: str | None = typer.Argument(None, metavar="DATA",
                                          help=DATA_HELP + " Optional with --resume or --config (the run records it)."),
        config: str | None = typer.Option(None, "--config", metavar="ARGS_JSON",
                                          help="Start a new run from a run's settings (runs/NAME/args.json); options "
                                               "given here override them."),
        arch: str | None = typer.Option(None if finetune else "simplecnn", "--arch", "-a", "--model", "-m",
                                        metavar="ARCH",
                                        help="Registry architecture (`cnncli models`)" + (
                                            "; default: the --weights model file's, else efficientnet_lite0."
                                            if finetune else ".")),
        weights: str = typer.Option("default" if finetune else "none", "--weights", metavar="WEIGHTS",
                                    help="Pretrained weights: default, an enum name, or a weights / cnncli model "
                                         "file." if finetune else "none (train from scratch); use finetune for "
                                         "pretrained weights."),
        init: Init = typer.Option("default", "--init", metavar=choices(*INITS), help="Initialisation for train."),
        out: str | None = output_option(f"Run folder (default runs/{command}-N)."),
        exist_ok: bool = typer.Option(False, "--exist-ok",
                                      help="Replace a previous run in --output (its files are removed first); without "
                                           "it an existing run folder is refused."),
        resume: str | None = typer.Option(None, "--resume", metavar="RUN",
                                          help="Continue the run in this folder from its last saved epoch, with its "
                                               "saved settings and data; a larger --epochs extends it (the schedule is"
                                               " re-planned), other differing options are refused."),
        epochs: int = typer.Option(FT["epochs"] if finetune else 10, "--epochs", "-e", parser=v.POSITIVE_INT,
                                   metavar="N",
                                   help="Epochs to train" + (" (after the --head-epochs)." if finetune else ".")),
        batch_size: int = batch_size_option(),
        optimizer: Optimizer = typer.Option("adamw", "--optimizer", metavar=choices(*OPTIMIZERS),
                                            help="The optimizer."),
        lr: str | None = typer.Option(None, "--lr", parser=v.learning_rate, metavar="LR|auto",
                                      help="Learning rate (default: 0.01 for sgd and adagrad, 1e-3 otherwise); auto: "
                                           "an LR range test picks it (steepest descent of the smoothed loss; "
                                           "the curve in RUN/lr_find.png)."),
        momentum: float = typer.Option(0.9, "--momentum", parser=v.UNIT_INTERVAL, metavar="M",
                                       help="Momentum (sgd, rmsprop), in [0, 1]."),
        nesterov: bool = typer.Option(False, "--nesterov", help="Nesterov momentum (sgd)."),
        weight_decay: float = typer.Option(FT["weight_decay"] if finetune else 1e-4, "--weight-decay",
                                           parser=v.NON_NEGATIVE_FLOAT, metavar="WD",
                                           help="Weight decay, >= 0 (not on biases and normalisation parameters "
                                                "unless --decay-norm-bias)."),
        decay_norm_bias: bool = typer.Option(False, "--decay-norm-bias/--no-decay-norm-bias",
                                             help="Weight decay on biases and normalisation parameters too."),
        layer_decay: float | None = typer.Option(None, "--layer-decay", parser=v.DECAY_FACTOR, metavar="X",
                                                 help="Layer-wise LR decay: each backbone stage trains at X times "
                                                      "the rate of the stage after it, in (0, 1]."),
        ema: bool = typer.Option(FT["ema"] if finetune else False, "--ema/--no-ema",
                                 help="Keep a model EMA (with warm-up); each epoch scores both, best keeps the "
                                      "better."),
        ema_decay: float = typer.Option(0.9998, "--ema-decay", parser=v.EMA_DECAY, metavar="D",
                                        help="EMA decay per optimiser step, in (0, 1)."),
        schedule: Schedule = typer.Option("cosine", "--schedule", metavar=choices(*SCHEDULES),
                                          help="Learning-rate schedule."),
        warmup_epochs: float = typer.Option(FT["warmup_epochs"] if finetune else 0.0, "--warmup-epochs",
                                            parser=v.NON_NEGATIVE_FLOAT, metavar="N",
                                            help="Linear warm-up epochs, >= 0."),
        step_epochs: int = typer.Option(10, "--step-epochs", parser=v.POSITIVE_INT, metavar="N",
                                        help="step schedule: decay every N epochs."),
        gamma: float = typer.Option(0.1, "--gamma", parser=v.POSITIVE_FLOAT, metavar="G",
                                    help="step/exponential schedule: decay factor (per step / per epoch)."),
        label_smoothing: float = typer.Option(FT["label_smoothing"] if finetune else 0.0, "--label-smoothing",
                                              parser=v.PROBABILITY_HALF_OPEN, metavar="E",
                                              help="Label smoothing, in [0, 1)."),
        dropout: float | None = typer.Option(None, "--dropout", parser=v.PROBABILITY_HALF_OPEN, metavar="P",
                                             help="Dropout on the head's input while training, in [0, 1)."),
        clip_grad: float | None = typer.Option(None, "--clip-grad", parser=v.POSITIVE_FLOAT, metavar="NORM",
                                               help="Clip the gradient norm to this value (> 0)."),
        accumulate: int = typer.Option(1, "--accumulate", parser=v.POSITIVE_INT, metavar="N",
                                       help="Accumulate gradients over N batches."),
        loss: Loss = typer.Option("ce", "--loss", metavar=choices(*LOSSES),
                                  help="ce: cross-entropy (multi-label data: binary cross-entropy per class, also "
                                       "bce); hinge: multi-class hinge; asl: asymmetric loss (multi-label)."),
        task: str = typer.Option("auto", "--task", metavar="[auto|single|multilabel]",
                                 help="multilabel: several labels per image (a sigmoid per class); auto: multilabel "
                                      "when a CSV manifest row holds two labels (a|b)."),
        balance: Balance = typer.Option("none", "--balance", metavar=choices(*BALANCES), help="Imbalanced classes."),
        augment: Augment = typer.Option(FT["augment"] if finetune else "light", "--augment", metavar=choices(*AUGMENTS),
                                        help="auto (finetune's default: standard when fine-tuning ImageNet weights on"
                                             " colour images, else light); light (train's default, safe for any "
                                             "task: small shifts, scaling and rotation "
                                             "scaled to the input size); standard (random-resized crops, colour "
                                             "jitter: natural photos); strong (+ TrivialAugment, random erasing: large"
                                             " photo datasets, long runs); none."),
        flip: bool | None = typer.Option(None, "--flip/--no-flip",
                                         help="Random horizontal flip (default: only when fine-tuning ImageNet weights"
                                              " on colour images; mirrored digits and text change meaning)."),
        mixup: float = typer.Option(0.0, "--mixup", parser=v.NON_NEGATIVE_FLOAT, metavar="ALPHA",
                                    help="MixUp alpha (0: off)."),
        cutmix: float = typer.Option(0.0, "--cutmix", parser=v.NON_NEGATIVE_FLOAT, metavar="ALPHA",
                                     help="CutMix alpha (0: off)."),
        trainable: str = typer.Option(FT["trainable"] if finetune else "all", "--trainable", metavar="head|last:N|all",
                                      help="last:N: the last N backbone stages and the head."),
        freeze_epochs: int = typer.Option(0, "--freeze-epochs", parser=v.NON_NEGATIVE_INT, metavar="K",
                                          help="Train the head only for K epochs, then everything."),
        backbone_lr_mult: float = typer.Option(FT["backbone_lr_mult"] if finetune else 1.0, "--backbone-lr-mult",
                                               parser=v.NON_NEGATIVE_FLOAT, metavar="X",
                                               help="Learning-rate factor for the unfrozen backbone."),
        head_epochs: int = typer.Option(FT["head_epochs"] if finetune else 0, "--head-epochs",
                                        parser=v.NON_NEGATIVE_INT, metavar="K",
                                        help="First train the head alone for K epochs on cached backbone features "
                                             "(seconds), then the --epochs of --trainable."),
        teacher: str | None = typer.Option(None, "--teacher", metavar="MODEL",
                                           help="Distil from this model (a cnncli .safetensors or a registry name "
                                                "with weights) with the same classes."),
        distill_weight: float = typer.Option(0.5, "--distill-weight", parser=v.UNIT_INTERVAL, metavar="W",
                                             help="Weight of the distillation term (the label loss weighs 1 - W)."),
        distill_temperature: float = typer.Option(2.0, "--distill-temperature", parser=v.POSITIVE_FLOAT,
                                                  metavar="T", help="Softmax temperature of the distillation term."),
        bn: BnMode = typer.Option("frozen", "--bn", metavar=choices(*BN_MODES),
                                  help="BatchNorm in frozen parts: eval mode or training mode."),
        cache_features: bool = typer.Option(False, "--cache-features",
                                            help="Compute the frozen backbone's features once (needs --trainable head "
                                                 "--augment none)."),
        val_split: float = typer.Option(0.2, "--val-split", parser=v.FRACTION_OPEN, metavar="FRACTION",
                                        help="Held-out fraction for a class-folder dataset."),
        val_csv: str | None = typer.Option(None, "--val-csv", metavar="CSV",
                                           help="Validation manifest for a CSV dataset."),
        allow_outside: bool = typer.Option(False, "--allow-outside",
                                           help="A CSV manifest may name files outside its own folder (.. or absolute "
                                                "paths)."),
        grayscale: bool = typer.Option(False, "--grayscale", help="1-channel input."),
        image_size: int | None = image_size_option(),
        train_size: int | None = typer.Option(None, "--train-size", parser=v.IMAGE_SIZE, metavar="PIXELS",
                                              help="Size of the training images in every epoch (default: 176 "
                                                   "for a 224 model under random-resized crops, as torchvision "
                                                   "trains; light: 176 first, the last third of the epochs at "
                                                   "the model's size; models below 128 px: their size)."),
        workers: int | None = workers_option("DataLoader worker processes (default: 0 for small datasets)."),
        shuffle_buffer: int = typer.Option(1000, "--shuffle-buffer", parser=v.POSITIVE_INT, metavar="N",
                                           help="Streamed data (packed shards, an object store): samples each "
                                                "loader worker mixes at random."),
        cache_size: str = typer.Option("20GB", "--cache-size", metavar="SIZE",
                                       help="Streamed data: local cache of downloaded shards, least recently used "
                                            "evicted (e.g. 20GB, 500MB; 0: none)."),
        patience: int | None = typer.Option(None, "--patience", parser=v.POSITIVE_INT, metavar="P",
                                            help="Early stopping after P epochs without improvement."),
        monitor: Monitor = typer.Option("val_loss", "--monitor", metavar=choices(*MONITORS),
                                        help="What picks the best checkpoint and stops early."),
        seed: int = seed_option("Random seed (same seed, same results.csv on CPU)."),
        device: str = device_option(),
        amp: Amp = typer.Option("auto", "--amp", metavar=choices(*AMP_MODES), help="CUDA mixed precision."),
        channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last",
                                           help="channels_last memory format on CUDA."),
        compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or per-epoch lines."),
        ray: str | None = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                       help="Train on Ray (Ray Train, DDP): a bare --ray starts a local Ray on this "
                                            "machine's cores (or joins RAY_ADDRESS when set); ADDRESS (HOST:PORT, "
                                            "ray://HOST:PORT, auto) joins a cluster."),
        ray_workers: int = typer.Option(2, "--ray-workers", parser=v.POSITIVE_INT, metavar="N",
                                        help="--ray: DDP workers (one CPU each, or one GPU each with --device cuda)."),
        max_failures: int = typer.Option(3, "--max-failures", parser=v.NON_NEGATIVE_INT, metavar="N",
                                         help="--ray: restarts of the worker group from the last epoch's checkpoint "
                                              "after a lost worker or node."),
        log: list[str] = typer.Option([], "--log", metavar="[tensorboard|mlflow]",
                                      help="Track the run: tensorboard (event files in RUN/tensorboard) or mlflow "
                                           "($MLFLOW_TRACKING_URI, else ./mlruns); repeat for both."),
    ) -> None:
        from cnncli.core.console import info
        from cnncli.train.config import TrainConfig

        fields = TrainConfig.__dataclass_fields__
        values = {k: v for k, v in dict(locals()).items() if k in fields and k not in ("command", "explicit")}
        cfg = config_from(command, values, config, given=given_on_command_line(ctx), ctx=ctx)
        check_machine_limits(cfg)
        from cnncli.core.paths import check_run_outputs
        from cnncli.scale.run_store import is_store_run, train_to_store

        if not is_store_run(cfg.out or cfg.resume):  # a run in object storage is checked there (cnncli/scale)
            check_run_outputs(cfg.out or cfg.resume, ["tensorboard"] if "tensorboard" in cfg.log else [])
        if cfg.log:
            from cnncli.train.tracking import probe_backends

            probe_backends(cfg.log)
        if ray is not None:
            from cnncli.scale.ray_train import RayTraining, train_on_ray

            result = train_on_ray(cfg, RayTraining(ray, ray_workers, max_failures))
        elif is_store_run(cfg.out or cfg.resume):
            result = train_to_store(cfg)
        else:
            from cnncli.train.loop import run_training

            result = run_training(cfg)
        if result.history and result.metrics.get("task") == "multilabel":
            info(f"best epoch {result.best_epoch}: val mAP {result.metrics['val_map']:.4f}, exact match "
                 f"{result.best_val_acc:.4f} ({result.stopped}); model: {result.out_dir}/best.safetensors")
        elif result.history:
            info(f"best epoch {result.best_epoch}: val acc {result.best_val_acc:.4f}, val loss "
                 f"{result.best_val_loss:.4f} ({result.stopped}); model: {result.out_dir}/best.safetensors")
        if result.skipped_images:
            info(f"{result.skipped_images} unreadable image(s) skipped (listed in {result.out_dir}/metrics.json).")

    run.__doc__ = LONG_HELP[command]
    return run


def given_on_command_line(ctx: typer.Context) -> frozenset[str]:
    """The parameters the user gave (on the command line or through an environment variable), not defaults:
    --config lets them override the saved settings and --resume checks them against the run's."""
    sources = {"COMMANDLINE", "ENVIRONMENT", "PROMPT"}
    return frozenset(name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") in sources)


def config_from(command: str, values: dict, config: str | None, given: frozenset[str], ctx=None):
    """The run's TrainConfig: the options, or with --config the saved settings overridden by the given options.
    A settings file (--config, or the run's args.json on --resume) is read through the options' own parsers
    first (:mod:`cnncli.cli.settings`).

    A re-run gets a new run folder unless --output names one; --resume is never taken from a saved run."""
    from dataclasses import fields, replace
    from pathlib import Path

    from cnncli.cli.settings import checked_settings
    from cnncli.core.errors import UsageError
    from cnncli.train.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)} - {"explicit"}
    settings_file = config or (Path(values["resume"]).expanduser() / "args.json" if values.get("resume") else None)
    if ctx is not None and settings_file is not None and (config or Path(settings_file).is_file()):
        checked_settings(settings_file, ctx, known)
    if config is None:
        if values.get("data") is None and not values.get("resume"):
            raise UsageError(f"{command} needs DATA (a dataset folder or CSV manifest), --resume RUN to continue a "
                             "run, or --config runs/NAME/args.json to repeat one.")
        return TrainConfig(command=command, explicit=given, **{**values, "data": values.get("data") or ""})
    saved = TrainConfig.load(config)
    if saved.command != command:
        raise UsageError(f"{config} holds the settings of a `{saved.command}` run; repeat it with "
                         f"`cnncli {saved.command} --config {config}`.")
    settings = saved.to_dict()
    settings.update(out=None, resume=None)
    settings.update({k: values[k] for k in given if k in values})
    if not settings.get("data"):
        raise UsageError(f"{config} names no dataset; pass DATA.")
    return replace(TrainConfig.from_dict(settings), explicit=given)


def check_machine_limits(cfg) -> None:
    """Refuse, before any work, an --image-size the architecture cannot take and a batch that cannot fit."""
    from cnncli.models.min_input import check_image_size
    from cnncli.predict.decode import default_workers

    channels = 1 if cfg.grayscale else 3
    arch = cfg.arch or ("efficientnet_lite0" if not str(cfg.weights).endswith(".safetensors") else None)
    for given in (cfg.image_size, cfg.train_size):
        if given is not None:
            check_image_size(arch, given, channels)
    size = cfg.image_size
    if size is None and arch is not None:
        from cnncli.models.registry import check_arch, default_preprocessing

        check_arch(arch)
        size = default_preprocessing(arch).input_size
    if size is not None:
        workers = default_workers() if cfg.workers is None else cfg.workers
        v.check_batch_memory(cfg.batch_size, size, channels, in_flight=2 * workers + 2)


def register(app: typer.Typer) -> None:
    for command in ("train", "finetune"):
        app.command(command, help=LONG_HELP[command], short_help=SHORT_HELP[command])(_options(command))
