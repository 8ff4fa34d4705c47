"""The training run: dataset -> model -> epochs -> run folder.

:class:`TrainingRun` has three stages. :meth:`~TrainingRun.prepare` settles the configuration (the saved one on
``--resume``), picks the device and joins torchrun's process group, loads the data, builds the model (random init
for ``train``, pretrained backbone and new head for ``finetune``), the loaders, the optimiser and schedule, and
then either loads train_state.pt or claims a new run folder. :meth:`~TrainingRun.fit` runs the epochs: each trains
(:func:`cnncli.train.epoch.train_epoch`), validates, and ends with atomic writes of last.safetensors,
train_state.pt (weights_only-loadable), results.csv and, when it improves, best.safetensors; early stopping, a NaN
guard and Ctrl-C handling stop it. :meth:`~TrainingRun.finish` writes the best epoch's metrics and plots.

Every epoch's randomness is seeded from (seed, epoch), and ``--resume`` restores the random generators saved
with the last epoch, so a resumed run reaches the same numbers as an uninterrupted one. Under ``torchrun`` it runs
DDP (gloo on CPU); only rank 0 logs and writes.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnncli.core.console import info, warn
from cnncli.core.errors import UsageError
from cnncli.core.memory import keep_freed_memory
from cnncli.models.checkpoint import save_model
from cnncli.train import run_folder
from cnncli.train.augment import resize_for_epoch, size_record
from cnncli.train.config import TrainConfig, next_run_dir
from cnncli.train.datasets import SampleDataset, SkippedImages
from cnncli.train.distributed import Dist, setup_distributed
from cnncli.train.epoch import DeviceSettings, TrainStep, ValStep, validate, weights_are_finite
from cnncli.train.epoch import train_epoch as _train_epoch  # a module-level name, so a test can stand in for it
from cnncli.train.errors import TrainingDiverged, TrainingInterrupted
from cnncli.train.final_outputs import FinishedRun, write_final_outputs
from cnncli.train.interrupt import StopFlag
from cnncli.train.loaders import batch_mixer, class_weights, default_workers, make_loader
from cnncli.train.model_setup import build_model, model_card_for
from cnncli.train.outputs import write_results_csv
from cnncli.train.policy import apply_trainable, set_train_mode, trainable_names
from cnncli.train.resume import (
    STATE_FILE,
    RunRecord,
    check_dataset_unchanged,
    load_state,
    replan_schedule,
    restore_rng,
    resume_config,
    save_state,
)


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


@dataclass(frozen=True)
class EpochOutcome:
    row: dict  # the epoch's results.csv row
    improved: bool  # the best epoch so far


@dataclass
class RunFolder:
    """The run folder and what this process holds of it (rank 0 only locks, claims and writes)."""

    path: Path
    default_named: bool  # runs/<command>-<n>: the number is taken when the folder is claimed
    lock: object = None
    created: bool = False  # the folder was made by this run
    claimed: bool = False  # a new run's folder: removed again if the run stops before its first epoch's files

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def settle_config(cfg: TrainConfig) -> tuple[TrainConfig, int]:
    """The configuration the run uses: the saved one on --resume, validated, with the dataset paths made absolute
    (args.json is resumable from any folder); and the epochs the schedule was planned over."""
    planned = cfg.epochs
    if cfg.resume:
        resumed = resume_config(cfg)
        cfg, planned = resumed.cfg, resumed.planned_epochs
    cfg = cfg.validate()
    cfg = replace(cfg, data=cfg.data if "://" in cfg.data else str(Path(cfg.data).expanduser().resolve()),
                  val_csv=str(Path(cfg.val_csv).expanduser().resolve()) if cfg.val_csv else cfg.val_csv)
    return cfg, planned


class TrainingRun:
    """One training run: :meth:`prepare`, then :meth:`fit` (which ends with :meth:`finish`); see the module
    docstring. ``cfg`` is never changed: the run replaces it with derived copies (dataclasses.replace)."""

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

        cfg, self.planned_epochs = settle_config(cfg)
        device = resolve_device(cfg.device)
        dist = setup_distributed(device)
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        self.cfg, self.device, self.dist = cfg, device, dist
        if device.type == "cpu":
            keep_freed_memory()  # each step's activations reused, not page-faulted in again (cnncli.core.memory)
        self.say = (log or info) if (dist.main and not cfg.quiet) else (lambda _msg: None)
        if dist.enabled and (cfg.cache_features or cfg.balance == "sampler"):
            raise UsageError("--cache-features and --balance sampler are single-process options; drop them under "
                             "torchrun.")
        seed_everything(cfg.seed)

    def _load_data(self) -> None:
        from cnncli.data.layout import load_dataset
        from cnncli.data.stream_source import is_stream_source, stream_splits

        cfg = self.cfg
        if is_stream_source(cfg.data):  # packed shards or an object-store prefix: splits to read as a stream
            self.splits = stream_splits(cfg.data, val_split=cfg.val_split, seed=cfg.seed)
        else:
            self.splits = load_dataset(cfg.data, val_split=cfg.val_split, seed=cfg.seed, val_csv=cfg.val_csv,
                                       allow_outside=cfg.allow_outside)
        if self.dist.main:
            from cnncli.data.check import duplicate_warnings

            for message in self.splits.warnings + duplicate_warnings(self.splits):  # as `cnncli inspect DATA` says
                warn(message)
        self.classes = list(self.splits.classes)
        self.folder = RunFolder(Path(cfg.resume or cfg.out or next_run_dir(cfg.command)),
                                default_named=not (cfg.resume or cfg.out))
        self.cfg = replace(cfg, out=str(self.folder.path))
        if cfg.head_epochs and (self.dist.enabled or self.splits.stream is not None):
            self.cfg = replace(self.cfg, head_epochs=0)
            self.say("the head phase (--head-epochs) runs in one process on files; skipped for this run")

    def _build_model(self) -> None:
        cfg = self.cfg
        built = build_model(cfg, self.classes)
        self.cfg = replace(cfg, arch=built.arch)
        for note in built.notes:
            self.say(note)
        model, self.card = built.model, built.card
        self.final_plan = trainable_names(model, cfg.trainable)
        self.phase_plan = trainable_names(model, "head") if cfg.freeze_epochs else self.final_plan
        self.trainable_params = apply_trainable(model, self.phase_plan)
        self.final_params = sum(p.numel() for n, p in model.named_parameters() if n in set(self.final_plan.trainable))
        model.to(self.device)
        channels_last = cfg.channels_last and not cfg.cache_features
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model

        amp = cfg.amp
        if self.device.type != "cuda":
            amp = "off"
        elif amp == "auto":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        self.on = DeviceSettings(self.device, channels_last, {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp))
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")

    def note_errors(self, errors: list[str]) -> None:
        for message in self.skipped.add(errors):
            if self.skipped.count <= self.skipped.keep and self.dist.main:
                warn(f"skipping an unreadable image: {message}")

    def _greyscale_data(self, channels: int) -> bool:
        """Whether the training images have no colour; only looked at where it decides a default (auto augment
        or the flip, when fine-tuning ImageNet weights on 3 channels) and for images in a folder."""
        from cnncli.train.augment import looks_greyscale, presumed_photos

        cfg = self.cfg
        if self.splits.stream is not None or not presumed_photos(cfg.command, cfg.weights, channels):
            return False
        if cfg.augment != "auto" and cfg.flip is not None:
            return False
        return looks_greyscale(sample.path for sample in self.splits.train)

    def _build_loaders(self) -> None:
        from cnncli.train.augment import plan_augmentation

        cfg, dist, device = self.cfg, self.dist, self.device
        pre = self.card.preprocessing
        self.workers = cfg.workers if cfg.workers is not None else default_workers(len(self.splits.train))
        self.generator = torch.Generator()
        self.augment = plan_augmentation(cfg.augment, cfg.flip, cfg.command, cfg.weights, pre.channels,
                                         self._greyscale_data(pre.channels), eval_size=pre.input_size,
                                         train_size=cfg.train_size)
        if self.splits.stream is not None:  # packed shards or an object store: read as a stream
            from cnncli.train.streaming import stream_datasets

            self.train_ds, self.val_ds = stream_datasets(self.splits, cfg, pre,
                                                         None if cfg.augment == "none" else self.augment)
        else:
            self.train_ds = SampleDataset(self.splits.train, pre, None if cfg.augment == "none" else self.augment)
            self.val_ds = SampleDataset(self.splits.val, pre)
        self.skipped = SkippedImages()

        self.step_module: nn.Module = self.model  # what a training step calls: the model, or its head
        if cfg.cache_features:
            from cnncli.models.registry import head_name
            from cnncli.train.features import FeatureDataset, head_inputs

            t0 = time.perf_counter()
            in_order = dict(cfg=cfg, dist=dist, train=False, generator=self.generator, workers=self.workers,
                            device=device)
            train_feats = head_inputs(self.model, make_loader(self.train_ds, **in_order), device, False,
                                      self.note_errors)
            val_feats = head_inputs(self.model, make_loader(self.val_ds, **in_order), device, False, self.note_errors)
            self.train_ds, self.val_ds = FeatureDataset(*train_feats), FeatureDataset(*val_feats)
            self.workers = 0
            self.step_module = self.model.get_submodule(head_name(self.model))
            self.say(f"cached the backbone's features of {len(self.train_ds) + len(self.val_ds)} images in "
                     f"{time.perf_counter() - t0:.1f} s")

        self.train_loader = make_loader(self.train_ds, cfg, dist, True, self.generator, self.workers, device)
        self.val_loader = make_loader(self.val_ds, cfg, dist, False, self.generator, self.workers, device)

    def _build_optimisation(self) -> None:
        """The optimiser, schedule and losses, as the :class:`TrainStep` and :class:`ValStep` of every epoch."""
        from cnncli.models.registry import backbone_stages
        from cnncli.train.optim import build_optimizer, build_scheduler, param_groups

        cfg, model, classes = self.cfg, self.model, self.classes
        self.steps_per_epoch = max(1, math.ceil(len(self.train_loader) / cfg.accumulate))
        # with gradual unfreezing every parameter is in the optimiser from the start; frozen ones get no gradient
        in_optimizer = [n for n, _ in model.named_parameters()] if cfg.freeze_epochs else self.final_plan.trainable
        groups = param_groups(model, self.final_plan.head, in_optimizer, cfg.learning_rate, cfg.backbone_lr_mult,
                              weight_decay=cfg.weight_decay, decay_norm_bias=cfg.decay_norm_bias,
                              layer_decay=cfg.layer_decay, stages=backbone_stages(model) if cfg.layer_decay else None)
        optimizer = build_optimizer(groups, cfg)
        weights = (class_weights([s.label for s in self.splits.train], len(classes), self.device)
                   if cfg.balance == "weights" else None)
        if cfg.loss == "hinge":
            criterion, val_criterion = nn.MultiMarginLoss(weight=weights), nn.MultiMarginLoss(reduction="sum")
        else:
            criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
            val_criterion = nn.CrossEntropyLoss(reduction="sum")
        self.step = TrainStep(
            forward=self.step_module, loader=self.train_loader, optimizer=optimizer,
            scheduler=build_scheduler(optimizer, cfg, self.steps_per_epoch), scaler=self.scaler, criterion=criterion,
            mixer=batch_mixer(cfg, len(classes)), on=self.on, accumulate=cfg.accumulate, clip_grad=cfg.clip_grad,
            dist=self.dist, note_errors=self.note_errors, on_diverged=self._diverged, epochs=cfg.epochs,
            show_progress=self.dist.main and not cfg.quiet)
        self.val = ValStep(module=self.step_module, loader=self.val_loader, criterion=val_criterion, on=self.on,
                           dist=self.dist, note_errors=self.note_errors, num_classes=len(classes))
        self._add_recipe_parts()  # --teacher, --lr auto, --ema

    def _add_recipe_parts(self) -> None:
        from cnncli.train.recipe import add_recipe_parts

        add_recipe_parts(self)

    def _restore_or_create(self) -> None:
        """A resumed run locks its folder and loads its saved state; a new one claims its run folder (refusing a
        previous run there unless --exist-ok) and writes args.json. Only rank 0 touches the folder."""
        cfg, folder = self.cfg, self.folder
        self.record = RunRecord()
        self.saved_rng: dict | None = None  # put back just before the first epoch
        self.resume_notes: list[str] = []
        if cfg.resume:
            if self.dist.main:
                folder.lock = run_folder.lock_for_resume(folder.path)
            check_dataset_unchanged(folder.path, cfg)
            state = load_state(folder.state_path)
            try:
                self.model.load_state_dict(state["model"])
                self.step.optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise UsageError(f"{folder.state_path} does not fit the model that {folder.path / 'args.json'} "
                                 f"describes ({cfg.arch}, {len(self.classes)} classes): was args.json edited? Put "
                                 "it back as the run wrote it, or start a new run.") from exc
            if cfg.epochs < int(state["epoch"]):
                raise UsageError(f"{folder.path} has already trained {state['epoch']} epochs; --epochs must be at "
                                 f"least {state['epoch']} to resume it.")
            if self.planned_epochs == cfg.epochs:
                self.step.scheduler.load_state_dict(state["scheduler"])
            else:
                steps_done = int(state["scheduler"].get("last_epoch", 0))
                self.step.scheduler, note = replan_schedule(self.step.optimizer, cfg, self.steps_per_epoch,
                                                            self.planned_epochs, steps_done)
                self.resume_notes.append(note)
                if self.dist.main:
                    cfg.save(folder.path / "args.json")  # the new total: what a later --resume plans over
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            if self.average is not None and state.get("ema"):
                self.average.load_state_dict(state["ema"])
            self.record = RunRecord.from_state(state)
            self.saved_rng = state.get("rng")
            self.say(f"resuming {folder.path} after epoch {self.record.saved_epoch}")
        elif self.dist.main:
            if folder.default_named:
                folder.path = run_folder.claim_new_run_folder(cfg.command)
                self.cfg = cfg = replace(cfg, out=str(folder.path))
                folder.lock, folder.created = run_folder.claim_run_folder(folder.path, exist_ok=False, created=True)
            else:
                folder.lock, folder.created = run_folder.claim_run_folder(folder.path, cfg.exist_ok)
            folder.claimed = True
            cfg.save(folder.path / "args.json")
            if self.lr_test is not None:
                from cnncli.train.lr_find import plot

                plot(self.lr_test, folder.path / "lr_find.png")

    def _wrap_for_training(self) -> None:
        from cnncli.data.eval_split import split_record
        from cnncli.data.layout import calibration_record

        cfg, splits, dist, device = self.cfg, self.splits, self.dist, self.device
        self.step.forward = torch.compile(self.step_module) if cfg.compile else self.step_module
        self.ddp_wrap = None
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = self.model

            def ddp_wrap():
                return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

            self.ddp_wrap = ddp_wrap
            self.step.forward = ddp_wrap()

        record = split_record(cfg.data, splits.layout, cfg.val_split, cfg.seed, cfg.val_csv, len(splits.train),
                              len(splits.val), allow_outside=cfg.allow_outside)
        self.summary_base = {"command": cfg.command, "dataset": record["dataset"], "layout": splits.layout,
                             "n_train": len(splits.train), "n_val": len(splits.val), "policy": cfg.trainable,
                             "freeze_epochs": cfg.freeze_epochs, "seed": cfg.seed, "optimizer": cfg.optimizer,
                             "lr": cfg.learning_rate, "augment": self.augment.preset, "flip": self.augment.flip,
                             **size_record(self.augment, self.card.preprocessing.input_size, cfg.epochs),
                             "calibration": calibration_record(splits), "split": record}
        from cnncli.train.recipe import describe_recipe

        self.say(f"{cfg.command} {self.card.arch} on {len(splits.train)} train / {len(splits.val)} val images, "
                 f"{len(self.classes)} classes, trainable {cfg.trainable} ({self.final_params:,} parameters), "
                 f"device {device}, out {self.folder.path}; {describe_recipe(cfg)}; "
                 f"{self.augment.describe(self.card.preprocessing, cfg.epochs)}")
        if self.lr_test is not None:
            test = self.lr_test
            self.say(f"--lr auto: {test.lr:.3g} from an LR range test over {len(test.lrs)} steps ({test.rule}); the "
                     f"curve: {self.folder.path / 'lr_find.png'}")
        for note in self.resume_notes:
            self.say(note)

    # ------------------------------------------------------------ one epoch

    def _maybe_unfreeze(self, epoch: int) -> None:
        cfg = self.cfg
        if cfg.freeze_epochs and epoch > cfg.freeze_epochs and self.phase_plan is not self.final_plan:
            self.phase_plan = self.final_plan
            self.trainable_params = apply_trainable(self.model, self.final_plan)
            if self.ddp_wrap is not None:
                self.step.forward = self.ddp_wrap()
            self.say(f"epoch {epoch}: unfreezing, now training {cfg.trainable} ({self.trainable_params:,} parameters)")

    def run_epoch(self, epoch: int, flag: StopFlag) -> EpochOutcome:
        """Train epoch ``epoch`` and validate; raises TrainingInterrupted when Ctrl-C stopped it."""
        cfg = self.cfg
        self._maybe_unfreeze(epoch)
        epoch_seed = cfg.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)
        self.generator.manual_seed(epoch_seed)
        resize_for_epoch(self.train_loader.dataset, self.augment, self.card.preprocessing, epoch, cfg.epochs)
        if hasattr(self.train_loader.dataset, "set_epoch"):  # a stream orders its shards by (seed, epoch)
            self.train_loader.dataset.set_epoch(epoch)
        elif self.dist.enabled:
            self.train_loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        lr = self.step.optimizer.param_groups[0]["lr"]  # the epoch's first step's rate, before the schedule moves it
        set_train_mode(self.model, cfg.bn)
        trained = _train_epoch(self.step, epoch, flag)
        train_seconds = time.perf_counter() - t0
        if flag.stop:
            self._interrupted(epoch)
        val = self._validate()
        kept = self._score_average(val)
        if kept is not None:
            val = kept
        if not (math.isfinite(trained.loss) and math.isfinite(val["loss"])):
            self._diverged(f"the {'validation' if math.isfinite(trained.loss) else 'training'} loss became "
                           f"{val['loss'] if math.isfinite(trained.loss) else trained.loss} at epoch {epoch}")
        if not weights_are_finite(self.model):
            self._diverged(f"the weights became NaN or infinite at epoch {epoch}")
        row = {"epoch": epoch, "lr": lr, "train_loss": trained.loss,
               "train_acc": trained.acc, "val_loss": val["loss"], "val_acc": val["acc"], "val_top5": val["top5"],
               "seconds": round(time.perf_counter() - t0, 2), "train_img_s": trained.seen / max(train_seconds, 1e-9)}
        if kept is not None:
            row.update(val["ema_columns"])
        row, score = self._scored_row(row, val)
        return EpochOutcome(row, self.record.add(row, score))

    def _score_average(self, raw: dict) -> dict | None:
        """With --ema: the EMA weights' scores too, and the better of the two (with the results.csv columns that
        say which and both accuracies); None without --ema."""
        if self.average is None:
            return None
        from cnncli.train.ema import pick

        averaged = validate(replace(self.val, module=self.average.submodule(self.step_module)))
        self.kept_weights = pick(raw, averaged, self.cfg.monitor)
        better = averaged if self.kept_weights == "ema" else raw
        return dict(better, ema_columns={"kept": self.kept_weights, "val_acc_raw": raw["acc"],
                                         "val_acc_ema": averaged["acc"], "val_loss_raw": raw["loss"],
                                         "val_loss_ema": averaged["loss"]})

    def _validate(self) -> dict:
        """The validation pass of an epoch (the multi-label run scores mAP and tunes thresholds instead)."""
        return validate(self.val)

    def _scored_row(self, row: dict, val: dict) -> tuple[dict, float]:
        """The epoch's results row and the score --monitor picks the best epoch by (higher is better)."""
        return row, (-val["loss"] if self.cfg.monitor == "val_loss" else val["acc"])

    def _interrupted(self, epoch: int, after: bool = False) -> None:
        if not self.dist.main:
            raise TrainingInterrupted("interrupted.")
        saved, out = self.record.saved_epoch, self.folder.path
        when = f"after epoch {epoch}" if after else f"during epoch {epoch}"
        if saved:
            raise TrainingInterrupted(f"interrupted {when}; the state after epoch {saved} is "
                                      f"in {out}; continue with --resume {out}.")
        raise TrainingInterrupted(f"interrupted during epoch {epoch}, before any epoch finished, so there is nothing "
                                  "to resume and nothing was kept; run the same command again to start over.")

    def _diverged(self, what: str) -> None:
        if self.record.saved_epoch:
            kept = f"the last good checkpoint (epoch {self.record.saved_epoch}) is kept in {self.folder.path}"
        else:
            kept = "no epoch had finished, so no checkpoint was written"
        raise TrainingDiverged(f"{what}; stopped: {kept}; lower --lr, add --clip-grad or check the data and options.")

    # ------------------------------------------------------------ checkpoint

    def save_checkpoint(self, epoch: int, outcome: EpochOutcome) -> None:
        """The epoch's files (rank 0 only): best/last weights, the resumable state, results.csv, and its log line."""
        if not self.dist.main:
            return
        cfg, out, record = self.cfg, self.folder.path, self.record
        best = record.history[record.best_epoch - 1]
        summary = dict(self.summary_base, epochs=epoch, best_epoch=record.best_epoch, val_acc=best["val_acc"],
                       val_loss=best["val_loss"])
        self.card = model_card_for(self.card, cfg, summary, self.final_params)
        if outcome.improved:
            chosen = self.average.module if outcome.row.get("kept") == "ema" else self.model
            save_model(out / "best.safetensors", chosen, self.card)
        save_model(out / "last.safetensors", self.model, self.card)
        save_state(self.folder.state_path, epoch, self.model, self.step, record,
                   ema=self.average.state_dict() if self.average is not None else None)
        write_results_csv(out / "results.csv", record.history)
        record.saved_epoch = epoch
        row = outcome.row
        self.say(f"epoch {epoch}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  val loss "
                 f"{row['val_loss']:.4f} acc {row['val_acc']:.4f}"
                 + (f" top5 {row['val_top5']:.4f}" if row["val_top5"] is not None else "")
                 + f"  {row['seconds']:.1f} s "
                 f"(train {row['train_img_s']:.1f} img/s){'  *' if outcome.improved else ''}")

    # ------------------------------------------------------------ the whole run

    def fit(self, on_epoch_end=None) -> TrainResult:
        """The epochs from the first not yet trained to --epochs (or an early stop), then :meth:`finish`."""
        from cnncli.train.tracking import Trackers

        cfg = self.cfg
        stopped = "completed"
        trackers = None
        first = self.record.saved_epoch + 1
        try:
            trackers = Trackers(cfg.log if self.dist.main else (), self.folder.path, self.say, warn)
            trackers.start({k: v for k, v in cfg.to_dict().items() if k not in ("quiet",)})
            if self.saved_rng is not None:  # the generators as they were when the last epoch's files were written
                restore_rng(self.saved_rng)
            if on_epoch_end is not None:
                on_epoch_end(first - 1, self.model)
            with StopFlag() as flag:
                if first == 1 and cfg.head_epochs and cfg.trainable != "head":
                    self._train_head_first(flag)
                for epoch in range(first, cfg.epochs + 1):
                    outcome = self.run_epoch(epoch, flag)
                    self.save_checkpoint(epoch, outcome)
                    trackers.log_epoch(epoch, outcome.row)
                    self.dist.barrier()
                    if on_epoch_end is not None:
                        on_epoch_end(epoch, self.model)
                    if flag.stop:  # the signal came during validation or saving: the epoch is kept, then stop
                        self._interrupted(epoch, after=True)
                    if cfg.patience is not None and self.record.bad_epochs >= cfg.patience:
                        stopped = "early-stopped"
                        self.say(f"early stop: {cfg.monitor} has not improved for {cfg.patience} epochs")
                        break
            result = self.finish(stopped)
        except BaseException as exc:
            if trackers is not None:
                trackers.finish(self.folder.path,
                                "KILLED" if isinstance(exc, (TrainingInterrupted, KeyboardInterrupt)) else "FAILED")
            self.abandon()
            raise
        finally:
            self.release()
        trackers.finish(self.folder.path, "FINISHED")
        return result

    def _train_head_first(self, flag: StopFlag) -> None:
        from cnncli.train.head_phase import train_head_first

        phase = train_head_first(self, flag)
        if phase is None:
            self._interrupted(1)
        self.say(phase.describe())
        if self.average is not None:  # the average starts from the trained head
            from cnncli.train.ema import ModelAverage

            self.average = ModelAverage(self.model, self.cfg.ema_decay)
            self.step.after_step = self.average.update

    def abandon(self) -> None:
        """The run stops with an error: a new run with no saved epoch leaves nothing behind (so the same command
        can simply be run again); the lock goes."""
        folder = self.folder
        if folder.claimed and not self.record.saved_epoch:
            run_folder.forget_unstarted_run(folder.path, folder.created, folder.lock)
        self.release()

    def release(self) -> None:
        if self.folder.lock is not None:
            self.folder.lock.release()
            self.folder.lock = None

    def _final_outputs(self, finished: FinishedRun, val: ValStep) -> dict:
        return write_final_outputs(finished, self.model, val, self.val_ds)

    def finish(self, stopped: str) -> TrainResult:
        """metrics.json and the plots for the best epoch (rank 0), the summary, and the process group's end."""
        dist, record, skipped = self.dist, self.record, self.skipped
        history, best_epoch = record.history, record.best_epoch
        best = history[best_epoch - 1] if best_epoch else {}
        result = TrainResult(out_dir=self.folder.path, epochs_run=len(history), best_epoch=best_epoch,
                             best_val_acc=best.get("val_acc", 0.0), best_val_loss=best.get("val_loss", float("nan")),
                             stopped=stopped, skipped_images=skipped.count, trainable_params=self.final_params,
                             history=history)
        if dist.main and history:
            val = self.val
            if dist.enabled:  # rank 0 evaluates the whole split, not its share
                val = replace(val, loader=make_loader(self.val_ds, self.cfg, Dist(), False, self.generator,
                                                      self.workers, self.device))
            finished = FinishedRun(out=self.folder.path, history=history, best_epoch=best_epoch, stopped=stopped,
                                   trainable=self.cfg.trainable, trainable_params=self.final_params, skipped=skipped,
                                   classes=self.classes)
            result.metrics = self._final_outputs(finished, val)
            if skipped.count:
                warn(f"{skipped.count} unreadable image(s) were skipped; first: {'; '.join(skipped.first(3))}")
        dist.barrier()
        dist.close()
        return result
