"""The training configuration: one dataclass mirroring the ``train`` / ``finetune`` options, saved as args.json."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cnncli.core.errors import UsageError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("cosine", "step", "exponential", "onecycle", "constant")
AUGMENTS = ("auto", "none", "light", "standard", "strong")  # auto: standard for photos, else light
LOSSES = ("ce", "hinge", "bce", "asl")  # bce, asl: multi-label data only
TASKS = ("auto", "single", "multilabel")  # auto: multilabel when a CSV manifest row holds two labels
BALANCES = ("none", "sampler", "weights")
BN_MODES = ("frozen", "train")
INITS = ("default", "kaiming", "xavier")
MONITORS = ("val_loss", "val_acc")
AMP_MODES = ("auto", "bf16", "fp16", "off")
# settings an args.json from before an option existed is read with: what that cnncli did (a resumed run goes on
# as it started)
LEGACY = {"decay_norm_bias": True}
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3, "adagrad": 1e-2}


@dataclass(frozen=True)
class TrainConfig:
    """The settings of one run, fixed once parsed: derived settings are new copies (``dataclasses.replace``)."""

    data: str
    command: str = "train"  # "train" (random init) or "finetune" (pretrained backbone)
    arch: str | None = "lenet5"  # finetune: None = the --weights file's architecture, else efficientnet_lite0
    weights: str = "none"  # finetune: "default", a torchvision enum name, or a model / weights file
    init: str = "default"
    out: str | None = None
    resume: str | None = None
    exist_ok: bool = False  # replace a previous run in --out (its files are removed first)
    # data
    val_split: float = 0.2
    val_csv: str | None = None
    allow_outside: bool = False  # a CSV manifest may name files outside its folder
    grayscale: bool = False
    image_size: int | None = None
    train_size: int | None = None  # training images' size; None: cnncli.train.augment.training_size's rule
    augment: str = "light"  # cnncli.train.augment: light is safe for any task
    flip: bool | None = None  # horizontal flip: None = the rule in cnncli.train.augment
    mixup: float = 0.0  # alpha; 0 = off
    cutmix: float = 0.0
    balance: str = "none"
    workers: int | None = None
    shuffle_buffer: int = 1000  # a streamed dataset (packed, or in an object store): samples mixed per worker
    cache_size: str = "20GB"  # a streamed dataset: local cache of downloaded shards (least recently used evicted)
    # model and trainable parts
    trainable: str = "all"  # head | last:N | all
    freeze_epochs: int = 0
    backbone_lr_mult: float = 1.0
    bn: str = "frozen"
    dropout: float | None = None
    cache_features: bool = False
    head_epochs: int = 0  # epochs of the head alone on cached backbone features before the run's epochs
    teacher: str | None = None  # knowledge distillation: a cnncli model file or registry name with weights
    distill_weight: float = 0.5  # the KL term's weight; the label loss weighs 1 - this
    distill_temperature: float = 2.0
    # optimisation
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float | str | None = None  # "auto": the LR range test (cnncli.train.lr_find) picks it
    lr_find: dict | None = None  # what --lr auto found: the rate, the rule, the sweep
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    decay_norm_bias: bool = False  # weight decay on biases and normalisation parameters too (timm: off)
    layer_decay: float | None = None  # layer-wise LR decay over the backbone's stages
    ema: bool = False  # keep a model EMA (timm ModelEmaV3, with warm-up); best is the better of EMA and raw
    ema_decay: float = 0.9998
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_epochs: int = 10  # step schedule: decay every N epochs
    gamma: float = 0.1  # step / exponential decay factor
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    accumulate: int = 1
    loss: str = "ce"
    task: str = "auto"
    # lifecycle
    patience: int | None = None
    monitor: str = "val_loss"
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    quiet: bool = False
    log: list[str] = field(default_factory=list)  # tracking: tensorboard, mlflow
    # the option names given on the command line (not saved): --resume refuses those that differ from the run
    explicit: frozenset = field(default_factory=frozenset, repr=False, compare=False)

    @property
    def learning_rate(self) -> float:
        if self.lr == "auto":  # a provisional base until the LR range test sets the rates
            return DEFAULT_LR[self.optimizer]
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.optimizer]

    def validate(self) -> TrainConfig:
        """This configuration, checked and with --log normalised; impossible combinations are refused with one
        sentence each (UsageError, exit 2)."""
        if self.arch is None and self.command == "train":
            raise UsageError("train needs --arch (e.g. --arch simplecnn); `cnncli models` lists them.")
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": AUGMENTS, "loss": LOSSES,
                   "balance": BALANCES, "bn": BN_MODES, "init": INITS, "monitor": MONITORS, "amp": AMP_MODES,
                   "task": TASKS}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise UsageError(f"unknown --{name.replace('_', '-')} {value!r}; choose one of: {', '.join(allowed)}.")
        parse_trainable(self.trainable)
        positive = {"epochs": self.epochs, "batch-size": self.batch_size, "accumulate": self.accumulate}
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"--{name} must be at least 1, not {value}.")
        if not 0 < self.val_split < 1:
            raise UsageError(f"--val-split must be between 0 and 1 (e.g. 0.2), not {self.val_split}.")
        if self.loss == "hinge" and (self.mixup or self.cutmix or self.label_smoothing):
            raise UsageError("--loss hinge takes hard labels; drop --mixup/--cutmix/--label-smoothing or use "
                             "--loss ce.")
        if self.freeze_epochs < 0 or self.freeze_epochs >= self.epochs and self.freeze_epochs:
            raise UsageError(f"--freeze-epochs must be between 0 and --epochs - 1 ({self.epochs - 1}), "
                             f"not {self.freeze_epochs}.")
        if self.train_size is not None and self.augment == "none":
            raise UsageError("--train-size resizes the augmented training images, and --augment none trains on the "
                             "eval preprocessing: drop --train-size or choose an --augment preset.")
        if self.cache_features:
            if self.trainable != "head" or self.freeze_epochs:
                raise UsageError("--cache-features needs a fully frozen backbone: use it with --trainable head and "
                                 "no --freeze-epochs.")
            if self.augment != "none" or self.mixup or self.cutmix:
                raise UsageError("--cache-features computes each image's features once, so it needs --augment none "
                                 "and no --mixup/--cutmix.")
            if self.bn != "frozen":
                raise UsageError("--cache-features needs --bn frozen (with --bn train the backbone's features change "
                                 "every step).")
        if self.lr is not None and self.lr != "auto" and not isinstance(self.lr, (int, float)):
            raise UsageError(f"--lr takes a positive number or auto, not {self.lr!r}.")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise UsageError(f"--layer-decay must be in (0, 1] (e.g. 0.75), not {self.layer_decay}.")
        if not 0 < self.ema_decay < 1:
            raise UsageError(f"--ema-decay must be between 0 and 1 (e.g. 0.9998), not {self.ema_decay}.")
        if not 0 <= self.distill_weight <= 1:
            raise UsageError(f"--distill-weight must be in [0, 1], not {self.distill_weight}.")
        if self.head_epochs < 0:
            raise UsageError(f"--head-epochs must be at least 0, not {self.head_epochs}.")
        if self.teacher and self.cache_features:
            raise UsageError("--teacher needs the images (its own input), not cached features; drop "
                             "--cache-features.")
        from cnncli.train.tracking import check_backends

        log = check_backends(self.log)
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout must be in [0, 1), not {self.dropout}.")
        return replace(self, log=log)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("explicit")
        if d["task"] == "auto":  # not recorded unless decided: a single-label run's args.json is as it was
            d.pop("task")
        return d

    def save(self, path: str | Path) -> None:
        from cnncli.core.atomic import write_bytes_atomic

        write_bytes_atomic(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)} - {"explicit"}
        return cls(**{"data": "", **LEGACY, **{k: v for k, v in d.items() if k in known}})

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise UsageError(f"cannot read the run's settings {path} ({exc}); is this a cnncli run folder?") from None


def parse_trainable(spec: str) -> tuple[str, int]:
    """``head`` -> ("head", 0); ``last:2`` -> ("last", 2); ``all`` -> ("all", 0)."""
    if spec in ("head", "all"):
        return spec, 0
    match = re.fullmatch(r"last:(\d+)", spec)
    if match and int(match.group(1)) >= 1:
        return "last", int(match.group(1))
    raise UsageError(f"unknown --trainable {spec!r}; use head, last:N (N >= 1) or all.")


def next_run_dir(command: str, root: str | Path = "runs") -> Path:
    """runs/<command>-<n> with the first n not taken."""
    root = Path(root)
    n = 1
    while (root / f"{command}-{n}").exists():
        n += 1
    return root / f"{command}-{n}"
