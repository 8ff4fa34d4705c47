"""The training run: dataset -> model -> epochs -> run folder.

:func:`run_training` is :class:`TrainingRun`'s three steps: ``prepare`` builds the model (random init for ``train``,
pretrained backbone and new head for ``finetune``), the data, the optimiser and the resume state; ``run_epoch``
trains and validates one epoch; ``save_checkpoint`` writes its files. Epochs have gradient accumulation, clipping,
label smoothing or hinge loss, class balancing, mixup/cutmix, AMP and channels_last, optional torch.compile,
early stopping, a NaN guard, and Ctrl-C handling. Each epoch ends with atomic writes of last.safetensors,
train_state.pt (weights_only-loadable), results.csv and, when it improves, best.safetensors. Every epoch's
randomness is seeded from (seed, epoch), so ``--resume`` reaches the same numbers as an uninterrupted run.
Under ``torchrun`` it runs DDP (gloo on CPU); only rank 0 logs and writes.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cnncli.core.atomic import atomic_path
from cnncli.core.console import info, warn
from cnncli.core.cpus import usable_cores
from cnncli.core.errors import CnncliError, UsageError
from cnncli.evaluate.plots import plot_confusion_matrix, plot_curves
from cnncli.evaluate.run import TOP5_MIN_CLASSES
from cnncli.models.card import ModelCard
from cnncli.models.checkpoint import save_model
from cnncli.models.names import DEFAULT_ARCH
from cnncli.train import run_folder
from cnncli.train.config import TrainConfig, next_run_dir
from cnncli.train.datasets import SampleDataset, SkippedImages, collate
from cnncli.train.outputs import write_json, write_results_csv
from cnncli.train.policy import apply_trainable, set_train_mode, trainable_names

STATE_FILE = run_folder.STATE_FILE


class TrainingDiverged(CnncliError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(CnncliError):
    """Ctrl-C: the resumable state is on disk."""

    exit_code = 130


@dataclass
class TrainResult:
    out_dir: Path
    epochs_run: int
    best_epoch: int
    best_val_acc: float
    best_val_loss: float
    stopped: str  # completed | early-stopped
    skipped_images: int
    trainable_params: int
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


# ---------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def setup_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


# ---------------------------------------------------------------- model


def initialise(model: nn.Module, init: str) -> None:
    if init == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if init == "kaiming":
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_model(cfg: TrainConfig, classes: list[str]) -> tuple[nn.Module, ModelCard, list[str]]:
    """The model to train, its card, and notes for the log (e.g. "new head for 3 classes")."""
    from cnncli.models.registry import create_model, replace_head

    in_chans = 1 if cfg.grayscale else 3
    notes = []
    if cfg.command == "train":
        built = create_model(cfg.arch, weights="none", classes=classes, in_chans=in_chans)
        initialise(built.model, cfg.init)
    else:
        file_card = cnncli_card_of(cfg.weights)
        if file_card is not None:  # finetune an existing cnncli model: its architecture and input channels
            if cfg.arch and cfg.arch != file_card.arch:
                raise UsageError(f"{cfg.weights} holds a {file_card.arch} model, not {cfg.arch}; drop --arch or pass --arch {file_card.arch}.")
            cfg.arch = file_card.arch
            in_chans = file_card.preprocessing.channels
        cfg.arch = cfg.arch or DEFAULT_ARCH
        built = create_model(cfg.arch, weights=cfg.weights, in_chans=in_chans)
        if list(built.card.classes) != list(classes):
            replace_head(built.model, len(classes))
            notes.append(f"new {len(classes)}-class head (the pretrained model had {built.card.num_classes} classes)")
            built.card.classes = list(classes)
    card = built.card
    pre = card.preprocessing
    if cfg.image_size:
        pre = pre.replace(input_size=(cfg.image_size, cfg.image_size))
    if pre.channels != in_chans:
        pre = pre.replace(channels=in_chans)
    card.preprocessing = pre
    if cfg.dropout:
        add_head_dropout(built.model, cfg.dropout)
    return built.model, card, notes


def cnncli_card_of(weights: str | None) -> ModelCard | None:
    """The card of a cnncli .safetensors model file given as --weights, else None."""
    from cnncli.models.card import METADATA_KEY
    from cnncli.models.checkpoint import read_metadata

    if not weights or not str(weights).endswith(".safetensors") or not Path(weights).is_file():
        return None
    metadata = read_metadata(weights)
    return ModelCard.from_json(metadata[METADATA_KEY], str(weights)) if METADATA_KEY in metadata else None


def add_head_dropout(model: nn.Module, p: float) -> None:
    """Dropout on the head's input while training (a hook, so the saved weights keep the architecture's names)."""
    from cnncli.models.registry import head_name

    head = model.get_submodule(head_name(model))
    head.register_forward_pre_hook(lambda m, args: (nn.functional.dropout(args[0], p, m.training),) + tuple(args[1:]))


def model_card_for(card: ModelCard, cfg: TrainConfig, summary: dict, plan_spec: str, trainable_params: int) -> ModelCard:
    card.training = summary
    card.extra = dict(card.extra or {}, trainable=plan_spec, trainable_params=trainable_params, bn=cfg.bn)
    return card


# ---------------------------------------------------------------- data


def default_workers(n_images: int) -> int:
    if n_images < 512:
        return 0
    return max(1, min(4, usable_cores() - 1))


def make_loader(dataset, cfg: TrainConfig, dist: Dist, train: bool, generator: torch.Generator, workers: int,
                device: torch.device) -> DataLoader:
    from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler, Subset, WeightedRandomSampler

    if train:
        if dist.enabled:
            sampler = DistributedSampler(dataset, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed)
        elif cfg.balance == "sampler":
            labels = dataset.labels()
            counts = np.bincount(labels).astype(np.float64)
            weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
            sampler = WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)
        else:
            sampler = RandomSampler(dataset, generator=generator)
    else:
        if dist.enabled:  # each rank validates its own share; sums are reduced
            dataset = Subset(dataset, list(range(dist.rank, len(dataset), dist.world)))
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                      generator=generator, pin_memory=device.type == "cuda", persistent_workers=False)


def batch_mixer(cfg: TrainConfig, num_classes: int):
    if not (cfg.mixup or cfg.cutmix):
        return None
    from torchvision.transforms import v2

    options = []
    if cfg.mixup:
        options.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
    if cfg.cutmix:
        options.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
    return options[0] if len(options) == 1 else v2.RandomChoice(options)


# ---------------------------------------------------------------- the run


class _StopFlag:
    """Ctrl-C sets the flag; the loop finishes the current step and stops."""

    def __init__(self) -> None:
        self.stop = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_):
        if self.stop:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_training(cfg: TrainConfig, log=None, on_epoch_end=None) -> TrainResult:
    """Train as ``cfg`` says; returns the summary. Raises CnncliError subclasses for anything the user can fix.

    ``log`` replaces the per-epoch log printer; ``on_epoch_end(epoch, model)`` is called before the first epoch
    (with the last finished epoch, 0 for a new run) and after each epoch's files are written.
    """
    return TrainingRun.prepare(cfg, log).fit(on_epoch_end)


@dataclass
class EpochOutcome:
    row: dict
    improved: bool


class TrainingRun:
    """One training run in three kinds of step: :meth:`prepare` (device, data, model, optimiser, resume state,
    run folder), :meth:`run_epoch` (train one epoch and validate), :meth:`save_checkpoint` (the epoch's files),
    and :meth:`finish` (metrics and plots of the best epoch). :meth:`fit` strings them together."""

    # ------------------------------------------------------------ prepare

    @classmethod
    def prepare(cls, cfg: TrainConfig, log=None) -> TrainingRun:
        run = cls()
        run._setup_device(cfg, log)
        run._load_data()
        run._build_model()
        run._build_loaders()
        run._build_optimisation()
        try:
            run._restore_or_create()
            run._wrap_for_training()
        except BaseException:
            run.abandon()
            raise
        return run

    def _setup_device(self, cfg: TrainConfig, log) -> None:
        from cnncli.engines.torch_engine import resolve_device

        if cfg.resume:
            cfg = resume_config(cfg)
        cfg.validate()
        device = resolve_device(cfg.device)
        dist = setup_distributed(device)
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        self.cfg, self.device, self.dist = cfg, device, dist
        self.say = (log or info) if (dist.main and not cfg.quiet) else (lambda _msg: None)
        if dist.enabled and (cfg.cache_features or cfg.balance == "sampler"):
            raise UsageError("--cache-features and --balance sampler are single-process options; drop them under torchrun.")
        seed_everything(cfg.seed)

    def _load_data(self) -> None:
        from cnncli.data.layout import load_dataset

        cfg = self.cfg
        cfg.data = str(Path(cfg.data).expanduser().resolve())  # args.json: resumable from any folder
        if cfg.val_csv:
            cfg.val_csv = str(Path(cfg.val_csv).expanduser().resolve())
        self.splits = load_dataset(cfg.data, val_split=cfg.val_split, seed=cfg.seed, val_csv=cfg.val_csv,
                                   allow_outside=cfg.allow_outside)
        if self.dist.main:
            from cnncli.data.check import duplicate_warnings

            for message in self.splits.warnings + duplicate_warnings(self.splits):  # as `cnncli inspect DATA` says
                warn(message)
        self.classes = list(self.splits.classes)
        self.default_named = not (cfg.resume or cfg.out)
        self.out = Path(cfg.resume or cfg.out or next_run_dir(cfg.command))
        cfg.out = str(self.out)

    def _build_model(self) -> None:
        cfg = self.cfg
        model, self.card, notes = build_model(cfg, self.classes)
        for note in notes:
            self.say(note)
        self.final_plan = trainable_names(model, cfg.trainable)
        self.phase_plan = trainable_names(model, "head") if cfg.freeze_epochs else self.final_plan
        self.trainable_params = apply_trainable(model, self.phase_plan)
        self.final_params = sum(p.numel() for n, p in model.named_parameters() if n in set(self.final_plan.trainable))
        model.to(self.device)
        self.channels_last = cfg.channels_last and not cfg.cache_features
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model

        amp = cfg.amp
        if self.device.type != "cuda":
            amp = "off"
        elif amp == "auto":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")

    def note_errors(self, errors: list[str]) -> None:
        for message in self.skipped.add(errors):
            if self.skipped.count <= self.skipped.keep and self.dist.main:
                warn(f"skipping an unreadable image: {message}")

    def _build_loaders(self) -> None:
        cfg, dist, device = self.cfg, self.dist, self.device
        pre = self.card.preprocessing
        self.workers = cfg.workers if cfg.workers is not None else default_workers(len(self.splits.train))
        self.generator = torch.Generator()
        from cnncli.train.augment import plan_augmentation

        self.augment = plan_augmentation(cfg.augment, cfg.flip, cfg.command, cfg.weights, pre.channels)
        self.train_ds = SampleDataset(self.splits.train, pre, None if cfg.augment == "none" else self.augment)
        self.val_ds = SampleDataset(self.splits.val, pre)
        self.skipped = SkippedImages()

        self.step_module: nn.Module = self.model
        if cfg.cache_features:
            from cnncli.models.registry import head_name
            from cnncli.train.features import FeatureDataset, head_inputs

            t0 = time.perf_counter()
            loader_args = dict(cfg=cfg, dist=dist, train=False, generator=self.generator, workers=self.workers, device=device)
            train_feats = head_inputs(self.model, make_loader(self.train_ds, **loader_args), device, False, self.note_errors)
            val_feats = head_inputs(self.model, make_loader(self.val_ds, **loader_args), device, False, self.note_errors)
            self.train_ds, self.val_ds = FeatureDataset(*train_feats), FeatureDataset(*val_feats)
            self.workers = 0
            self.step_module = self.model.get_submodule(head_name(self.model))
            self.say(f"cached the backbone's features of {len(self.train_ds) + len(self.val_ds)} images in "
                     f"{time.perf_counter() - t0:.1f} s")

        self.train_loader = make_loader(self.train_ds, cfg, dist, True, self.generator, self.workers, device)
        self.val_loader = make_loader(self.val_ds, cfg, dist, False, self.generator, self.workers, device)

    def _build_optimisation(self) -> None:
        from cnncli.train.optim import build_optimizer, build_scheduler, param_groups

        cfg, model, classes = self.cfg, self.model, self.classes
        steps_per_epoch = max(1, math.ceil(len(self.train_loader) / cfg.accumulate))
        # with gradual unfreezing every parameter is in the optimiser from the start; frozen ones get no gradient
        in_optimizer = [n for n, _ in model.named_parameters()] if cfg.freeze_epochs else self.final_plan.trainable
        groups = param_groups(model, self.final_plan.head, in_optimizer, cfg.learning_rate, cfg.backbone_lr_mult)
        self.optimizer = build_optimizer(groups, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch

        class_weights = None
        if cfg.balance == "weights":
            counts = np.bincount([s.label for s in self.splits.train], minlength=len(classes)).astype(np.float64)
            class_weights = torch.as_tensor(counts.sum() / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32,
                                            device=self.device)
        if cfg.loss == "hinge":
            self.criterion = nn.MultiMarginLoss(weight=class_weights)
            self.val_criterion = nn.MultiMarginLoss(reduction="sum")
        else:
            self.criterion = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=cfg.label_smoothing)
            self.val_criterion = nn.CrossEntropyLoss(reduction="sum")
        self.mixer = batch_mixer(cfg, len(classes))

    def _restore_or_create(self) -> None:
        """A resumed run locks its folder and loads its saved state; a new one claims its run folder (refusing a
        previous run there unless --exist-ok) and writes args.json. Only rank 0 touches the folder."""
        self.history: list[dict] = []
        self.start_epoch, self.best_epoch, self.best_score, self.bad_epochs = 1, 0, None, 0
        self.state_path = self.out / STATE_FILE
        self.resume_notes: list[str] = []
        self.lock, self.created_folder, self.claimed, self.saved_epoch = None, False, False, 0
        if self.cfg.resume:
            if self.dist.main:
                self.lock = run_folder.lock_for_resume(self.out)
            self.state_path = self.out / STATE_FILE
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.cfg.epochs < int(state["epoch"]):
                raise UsageError(f"{self.out} has already trained {state['epoch']} epochs; --epochs must be at least "
                                 f"{state['epoch']} to resume it.")
            planned = getattr(self.cfg, "planned_epochs", self.cfg.epochs)
            if planned == self.cfg.epochs:
                self.scheduler.load_state_dict(state["scheduler"])
            else:
                self._replan_schedule(planned, int(state["scheduler"].get("last_epoch", 0)))
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.history = list(state["history"])
            self.start_epoch = int(state["epoch"]) + 1
            self.best_epoch, self.best_score = int(state["best_epoch"]), state["best_score"]
            self.bad_epochs = int(state["bad_epochs"])
            self.say(f"resuming {self.out} after epoch {self.start_epoch - 1}")
        elif self.dist.main:
            if self.default_named:
                self.out = run_folder.claim_new_run_folder(self.cfg.command)
                self.cfg.out = str(self.out)
                self.lock, self.created_folder = run_folder.claim_run_folder(self.out, exist_ok=False, created=True)
            else:
                self.lock, self.created_folder = run_folder.claim_run_folder(self.out, self.cfg.exist_ok)
            self.claimed = True
            self.cfg.save(self.out / "args.json")
        self.state_path = self.out / STATE_FILE
        self.saved_epoch = self.start_epoch - 1  # the last epoch whose files are on disk

    def _replan_schedule(self, planned: int, steps_done: int) -> None:
        """--resume with another --epochs: the schedule is planned again over the new total, as if the run had been
        started with it, and continues at the saved step; args.json records the new total."""
        from cnncli.train.optim import build_scheduler

        was = self.optimizer.param_groups[0]["lr"]
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("initial_lr", group["lr"])
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.steps_per_epoch)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": replaying the plan
            for _ in range(steps_done):
                self.scheduler.step()
        now = self.optimizer.param_groups[0]["lr"]
        self.resume_notes.append(
            f"--epochs {self.cfg.epochs} (the run was planned for {planned}): the {self.cfg.schedule} schedule is "
            f"re-planned over {self.cfg.epochs} epochs and continues at its step {steps_done}, learning rate "
            f"{now:.3g} (it was {was:.3g})")
        if self.dist.main:
            self.cfg.save(self.out / "args.json")

    def _wrap_for_training(self) -> None:
        from cnncli.data.eval_split import split_record
        from cnncli.data.layout import calibration_record

        cfg, splits, dist, device = self.cfg, self.splits, self.dist, self.device
        self.train_fn = torch.compile(self.step_module) if cfg.compile else self.step_module
        self.ddp_wrap = None
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = self.model

            def ddp_wrap():
                return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

            self.ddp_wrap = ddp_wrap
            self.train_fn = ddp_wrap()

        record = split_record(cfg.data, splits.layout, cfg.val_split, cfg.seed, cfg.val_csv, len(splits.train),
                              len(splits.val), allow_outside=cfg.allow_outside)
        self.summary_base = {"command": cfg.command, "dataset": record["dataset"], "layout": splits.layout,
                             "n_train": len(splits.train), "n_val": len(splits.val), "policy": cfg.trainable,
                             "freeze_epochs": cfg.freeze_epochs, "seed": cfg.seed, "optimizer": cfg.optimizer,
                             "lr": cfg.learning_rate, "augment": cfg.augment, "flip": self.augment.flip,
                             "calibration": calibration_record(splits), "split": record}
        self.say(f"{cfg.command} {self.card.arch} on {len(splits.train)} train / {len(splits.val)} val images, "
                 f"{len(self.classes)} classes, trainable {cfg.trainable} ({self.final_params:,} parameters), "
                 f"device {device}, out {self.out}; {self.augment.describe(self.card.preprocessing)}")
        for note in self.resume_notes:
            self.say(note)

    # ------------------------------------------------------------ one epoch

    def _maybe_unfreeze(self, epoch: int) -> None:
        cfg = self.cfg
        if cfg.freeze_epochs and epoch > cfg.freeze_epochs and self.phase_plan is not self.final_plan:
            self.phase_plan = self.final_plan
            self.trainable_params = apply_trainable(self.model, self.final_plan)
            if self.ddp_wrap is not None:
                self.train_fn = self.ddp_wrap()
            self.say(f"epoch {epoch}: unfreezing, now training {cfg.trainable} ({self.trainable_params:,} parameters)")

    def run_epoch(self, epoch: int, flag: _StopFlag) -> EpochOutcome:
        """Train epoch ``epoch`` and validate; raises TrainingInterrupted when Ctrl-C stopped it."""
        cfg, dist = self.cfg, self.dist
        self._maybe_unfreeze(epoch)
        epoch_seed = cfg.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)
        self.generator.manual_seed(epoch_seed)
        if dist.enabled:
            self.train_loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]  # the rate of the epoch's first step, before the scheduler moves it
        set_train_mode(self.model, cfg.bn)
        train_loss, train_acc, n_seen = _train_epoch(
            cfg, epoch, self.train_fn, self.train_loader, self.optimizer, self.scheduler, self.scaler, self.criterion,
            self.mixer, self.device, self.channels_last, self.amp_dtype, flag, self.note_errors, dist, self.say,
            len(self.splits.train), self._diverged)
        train_seconds = time.perf_counter() - t0
        if flag.stop:
            self._interrupted(epoch)
        val = _validate(self.step_module, self.val_loader, self.val_criterion, self.device, self.channels_last,
                        self.amp_dtype, dist, self.note_errors, len(self.classes))
        if not (math.isfinite(train_loss) and math.isfinite(val["loss"])):
            self._diverged(f"the {'validation' if math.isfinite(train_loss) else 'training'} loss became "
                           f"{val['loss'] if math.isfinite(train_loss) else train_loss} at epoch {epoch}")
        if not weights_are_finite(self.model):
            self._diverged(f"the weights became NaN or infinite at epoch {epoch}")
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss,
               "train_acc": train_acc, "val_loss": val["loss"], "val_acc": val["acc"], "val_top5": val["top5"],
               "seconds": round(time.perf_counter() - t0, 2), "train_img_s": n_seen / max(train_seconds, 1e-9)}
        self.history.append(row)
        score = -val["loss"] if cfg.monitor == "val_loss" else val["acc"]
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_epoch, self.best_score, self.bad_epochs = epoch, score, 0
        else:
            self.bad_epochs += 1
        return EpochOutcome(row, improved)

    def _interrupted(self, epoch: int) -> None:
        if not self.dist.main:
            raise TrainingInterrupted("interrupted.")
        if self.saved_epoch:
            raise TrainingInterrupted(f"interrupted during epoch {epoch}; the state after epoch {self.saved_epoch} is "
                                      f"in {self.out}; continue with --resume {self.out}.")
        raise TrainingInterrupted(f"interrupted during epoch {epoch}, before any epoch finished, so there is nothing "
                                  "to resume and nothing was kept; run the same command again to start over.")

    def _diverged(self, what: str) -> None:
        if self.saved_epoch:
            kept = f"the last good checkpoint (epoch {self.saved_epoch}) is kept in {self.out}"
        else:
            kept = "no epoch had finished, so no checkpoint was written"
        raise TrainingDiverged(f"{what}; stopped: {kept}; lower --lr, add --clip-grad or check the data and options.")

    # ------------------------------------------------------------ checkpoint

    def save_checkpoint(self, epoch: int, outcome: EpochOutcome) -> None:
        """The epoch's files (rank 0 only): best/last weights, the resumable state, results.csv, and its log line."""
        if not self.dist.main:
            return
        cfg, out, history, best_epoch = self.cfg, self.out, self.history, self.best_epoch
        summary = dict(self.summary_base, epochs=epoch, best_epoch=best_epoch,
                       val_acc=history[best_epoch - 1]["val_acc"], val_loss=history[best_epoch - 1]["val_loss"])
        self.card = model_card_for(self.card, cfg, summary, cfg.trainable, self.final_params)
        if outcome.improved:
            save_model(out / "best.safetensors", self.model, self.card)
        save_model(out / "last.safetensors", self.model, self.card)
        _save_state(self.state_path, self.model, self.optimizer, self.scheduler, self.scaler, epoch, history,
                    best_epoch, self.best_score, self.bad_epochs)
        write_results_csv(out / "results.csv", history)
        self.saved_epoch = epoch
        row = outcome.row
        self.say(f"epoch {epoch}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  val loss "
                 f"{row['val_loss']:.4f} acc {row['val_acc']:.4f}"
                 + (f" top5 {row['val_top5']:.4f}" if row["val_top5"] is not None else "")
                 + f"  {row['seconds']:.1f} s "
                 f"(train {row['train_img_s']:.1f} img/s){'  *' if outcome.improved else ''}")

    # ------------------------------------------------------------ the whole run

    def fit(self, on_epoch_end=None) -> TrainResult:
        from cnncli.train.tracking import Trackers

        cfg = self.cfg
        stopped = "completed"
        trackers = None
        try:
            trackers = Trackers(cfg.log if self.dist.main else (), self.out, self.say, warn)
            trackers.start({k: v for k, v in cfg.to_dict().items() if k not in ("quiet",)})
            if on_epoch_end is not None:
                on_epoch_end(self.start_epoch - 1, self.model)
            with _StopFlag() as flag:
                for epoch in range(self.start_epoch, cfg.epochs + 1):
                    outcome = self.run_epoch(epoch, flag)
                    self.save_checkpoint(epoch, outcome)
                    trackers.log_epoch(epoch, outcome.row)
                    self.dist.barrier()
                    if on_epoch_end is not None:
                        on_epoch_end(epoch, self.model)
                    if cfg.patience is not None and self.bad_epochs >= cfg.patience:
                        stopped = "early-stopped"
                        self.say(f"early stop: {cfg.monitor} has not improved for {cfg.patience} epochs")
                        break
            result = self.finish(stopped)
        except BaseException as exc:
            if trackers is not None:
                trackers.finish(self.out, "KILLED" if isinstance(exc, (TrainingInterrupted, KeyboardInterrupt)) else "FAILED")
            self.abandon()
            raise
        finally:
            self.release()
        trackers.finish(self.out, "FINISHED")
        return result

    def abandon(self) -> None:
        """The run stops with an error: a new run with no saved epoch leaves nothing behind (so the same command
        can simply be run again); the lock goes."""
        if self.claimed and not self.saved_epoch:
            run_folder.forget_unstarted_run(self.out, self.created_folder, self.lock)
        self.release()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def finish(self, stopped: str) -> TrainResult:
        """metrics.json and the plots for the best epoch (rank 0), the summary, and the process group's end."""
        dist, history, best_epoch, skipped = self.dist, self.history, self.best_epoch, self.skipped
        best = history[best_epoch - 1] if best_epoch else {}
        result = TrainResult(out_dir=self.out, epochs_run=len(history), best_epoch=best_epoch,
                             best_val_acc=best.get("val_acc", 0.0), best_val_loss=best.get("val_loss", float("nan")),
                             stopped=stopped, skipped_images=skipped.count, trainable_params=self.final_params,
                             history=history)
        if dist.main and history:
            full_val = (make_loader(self.val_ds, self.cfg, Dist(), False, self.generator, self.workers, self.device)
                        if dist.enabled else self.val_loader)
            result.metrics = _final_outputs(self.out, self.model, self.step_module, self.val_ds, full_val, self.device,
                                            self.channels_last, self.amp_dtype, self.classes, history, best_epoch,
                                            self.cfg, skipped, self.final_params, stopped)
            if skipped.count:
                warn(f"{skipped.count} unreadable image(s) were skipped; first: {'; '.join(skipped.first(3))}")
        dist.barrier()
        if dist.enabled:
            import torch.distributed as tdist

            tdist.destroy_process_group()
        return result


# options --resume may change; every other option given must match the saved run
RESUME_CHANGEABLE = ("epochs", "patience", "workers", "device", "amp", "compile", "channels_last", "quiet", "log")


def resume_config(cfg: TrainConfig) -> TrainConfig:
    """The saved run's settings (args.json), with what --resume may change taken from ``cfg``. DATA is optional
    (the run records it); any other option given on the command line (``cfg.explicit``) that differs from the
    run's is refused in one sentence, never ignored."""
    run = Path(cfg.resume).expanduser()
    if not (run / STATE_FILE).is_file() or not (run / "args.json").is_file():
        raise UsageError(f"{run} has no {STATE_FILE} and args.json to resume from; pass a run folder made by cnncli train.")
    saved = TrainConfig.load(run / "args.json")
    if cfg.out and Path(cfg.out).expanduser().resolve() != run.resolve():
        raise UsageError(f"--resume continues the run in {run}; drop --out {cfg.out} (or start a new run there without --resume).")
    recorded = Path(saved.data).expanduser()
    if cfg.data:
        if recorded.is_absolute() and Path(cfg.data).expanduser().resolve() != recorded.resolve():
            raise UsageError(f"--resume {run} trains on {saved.data}, not {cfg.data}; drop DATA to continue the run, "
                             "or start a new run on the new data.")
        saved.data = str(Path(cfg.data).expanduser().resolve())
    elif not recorded.exists():
        raise UsageError(f"the dataset of {run}, {saved.data}, is not found from here; pass it as DATA.")
    differing = [name for name in sorted(cfg.explicit) if name not in RESUME_CHANGEABLE + ("data", "out", "resume")
                 and getattr(cfg, name) != getattr(saved, name)]
    if differing:
        name = differing[0]
        more = f" (and {len(differing) - 1} more)" if len(differing) > 1 else ""
        raise UsageError(
            f"--resume continues {run} with its saved settings, but --{name.replace('_', '-')} {getattr(cfg, name)} "
            f"differs from the run's {getattr(saved, name)}{more}; only --{', --'.join(n.replace('_', '-') for n in RESUME_CHANGEABLE)} "
            "can change on resume: drop it, or start a new run.")
    planned = saved.epochs
    for name in RESUME_CHANGEABLE:
        if name in cfg.explicit:
            setattr(saved, name, getattr(cfg, name))
    saved.quiet = cfg.quiet
    saved.resume, saved.out = str(run), str(run)
    saved.planned_epochs = planned
    return saved


def weights_are_finite(model: nn.Module) -> bool:
    """Every floating-point parameter and buffer is finite: what may be saved as best/last."""
    with torch.no_grad():
        return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def _save_state(path, model, optimizer, scheduler, scaler, epoch, history, best_epoch, best_score, bad_epochs) -> None:
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "epoch": epoch, "history": history,
        "best_epoch": best_epoch, "best_score": best_score, "bad_epochs": bad_epochs,
        "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _autocast(device: torch.device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


def _train_epoch(cfg, epoch, train_fn, loader, optimizer, scheduler, scaler, criterion, mixer, device, channels_last,
                 amp_dtype, flag, note_errors, dist, say, n_total, on_diverged):
    params = [p for g in optimizer.param_groups for p in g["params"]]
    loss_sum = correct = seen = 0.0
    progress = _progress(cfg, dist, epoch, len(loader))
    optimizer.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    pending = 0
    try:
        for i, batch in enumerate(loader):
            if batch.errors:
                note_errors(batch.errors)
            if batch.images is None:
                continue
            x, y = batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            target = y
            if mixer is not None:
                x, target = mixer(x, y)
            with _autocast(device, amp_dtype):
                logits = train_fn(x)
                loss = criterion(logits.float(), target)
            if not torch.isfinite(loss):
                on_diverged(f"the loss became {loss.item()} at epoch {epoch}, step {i + 1}")
            scaler.scale(loss / cfg.accumulate).backward()
            pending += 1
            if pending == cfg.accumulate or i == len(loader) - 1:
                if cfg.clip_grad:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                pending = 0
            n = y.shape[0]
            loss_sum += loss.item() * n
            hard = target.argmax(1) if target.ndim == 2 else target
            correct += (logits.argmax(1) == hard).sum().item()
            seen += n
            if progress is not None:
                elapsed = time.perf_counter() - t0
                progress.update(progress.task_ids[0], advance=1,
                                info=f"loss {loss.item():.4f} acc {correct / seen:.3f} {seen / elapsed:.0f} img/s")
            if flag.stop:
                break
    finally:
        if progress is not None:
            progress.stop()
    loss_sum, correct, seen = dist.all_sum([loss_sum, correct, seen])
    return loss_sum / max(seen, 1), correct / max(seen, 1), seen


def _progress(cfg, dist, epoch, total):
    from cnncli.core.console import err_console

    if cfg.quiet or not dist.main or not err_console.is_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(f"epoch {epoch}/{cfg.epochs}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=err_console, transient=True)
    progress.add_task("train", total=total, info="")
    progress.start()
    return progress


@torch.no_grad()
def _predict(module, loader, device, channels_last, amp_dtype, note_errors):
    module.eval()
    logits, labels = [], []
    from cnncli.train.datasets import device_batches

    for x, y in device_batches(loader, device, channels_last, note_errors):
        with _autocast(device, amp_dtype):
            logits.append(module(x).float().cpu())
        labels.append(y)
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def _validate(module, loader, criterion, device, channels_last, amp_dtype, dist, note_errors, num_classes) -> dict:
    logits, labels = _predict(module, loader, device, channels_last, amp_dtype, note_errors)
    n = len(labels)
    if n:
        loss = criterion(logits, labels).item()
        top1 = (logits.argmax(1) == labels).sum().item()
        top5 = (logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]).any(1).sum().item()
    else:
        loss = top1 = top5 = 0.0
    loss, top1, top5, n = dist.all_sum([loss, top1, top5, n])
    n = max(n, 1)
    reported = top5 / n if num_classes >= TOP5_MIN_CLASSES else None  # top-5 of 5 classes or fewer is always 1
    return {"loss": loss / n, "acc": top1 / n, "top5": reported}


def _final_outputs(out, model, step_module, val_ds, val_loader, device, channels_last, amp_dtype, classes, history,
                   best_epoch, cfg, skipped, trainable_params, stopped) -> dict:
    """metrics.json, curves.png and confusion_matrix.png for the best epoch's weights."""
    from safetensors.torch import load_file

    from cnncli.evaluate.run import compute_metrics

    best_state = load_file(str(out / "best.safetensors"))
    model.load_state_dict(best_state, strict=False)  # tied weights dropped by safetensors stay as they are
    logits, labels = _predict(step_module, val_loader, device, channels_last, amp_dtype, lambda _e: None)
    paths = [str(s.path) for s in getattr(val_ds, "samples", [])]
    if len(paths) != len(labels):  # unreadable images were skipped, or features were cached
        paths = None
    result = compute_metrics(torch.softmax(logits, 1).numpy(), labels.numpy(), classes, paths)
    best = history[best_epoch - 1]
    metrics = {
        "best_epoch": best_epoch, "epochs_run": len(history), "stopped": stopped, "val_loss": best["val_loss"],
        "val_acc": best["val_acc"], "val_top5": best["val_top5"], "train_loss": best["train_loss"],
        "train_acc": best["train_acc"], "trainable": cfg.trainable, "trainable_params": trainable_params,
        "skipped_images": skipped.count, "skipped_examples": skipped.first(),
        "evaluation": result.to_dict(),
    }
    write_json(out / "metrics.json", metrics)
    plot_curves(out / "curves.png", history, best_epoch)
    plot_confusion_matrix(out / "confusion_matrix.png", result.confusion_matrix, classes)
    return metrics
