"""The multi-label training run: :class:`cnncli.train.run.TrainingRun` over a multi-label manifest.

What changes from the single-label run: the data (:mod:`cnncli.data.multilabel`, an iteratively stratified
hold-out), multi-hot targets, a sigmoid per class with BCE (or ``--loss asl``; ``--balance weights`` as per-class
positive weights), mixup / cutmix / label smoothing on multi-hot targets, validation by mAP (which picks the best
epoch and stops early), per-class thresholds tuned on the validation images each epoch (maximum F1) and stored in
the model card with ``task: multilabel``, and a multi-label metrics.json. :func:`run_class_for` decides which run
a configuration gets.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

from cnncli.core.console import warn
from cnncli.core.errors import UsageError
from cnncli.train.augment import size_record
from cnncli.train.config import TrainConfig
from cnncli.train.final_outputs import FinishedRun
from cnncli.train.run import RunFolder, TrainingRun

MULTILABEL = "multilabel"


def wants_multilabel(cfg: TrainConfig) -> bool:
    """--task multilabel, a resumed multi-label run, or (task auto) a CSV manifest with a row of two labels."""
    if cfg.resume:
        args = Path(cfg.resume).expanduser() / "args.json"
        try:
            return json.loads(args.read_text()).get("task") == MULTILABEL
        except (OSError, ValueError, AttributeError):
            return False  # resume_config says what is wrong with the folder
    if cfg.task != "auto":
        return cfg.task == MULTILABEL
    from cnncli.data.multilabel import manifest_is_multilabel

    return bool(cfg.data) and manifest_is_multilabel(cfg.data, cfg.val_csv)


def run_class_for(cfg: TrainConfig, default: type[TrainingRun]) -> type[TrainingRun]:
    if wants_multilabel(cfg):
        return MultiLabelTrainingRun
    if cfg.loss in ("bce", "asl"):
        raise UsageError(f"--loss {cfg.loss} is for multi-label data (a CSV manifest whose rows hold several labels "
                         "separated by '|', or --task multilabel); use --loss ce or hinge here.")
    return default


class MultiLabelTrainingRun(TrainingRun):
    """See the module docstring; every stage not overridden here is the single-label run's."""

    def _setup_device(self, cfg: TrainConfig, log) -> None:
        super()._setup_device(cfg, log)
        cfg = self.cfg
        if self.dist.enabled:
            raise UsageError("multi-label training runs in one process (its mAP is not a sum over ranks); run it "
                             "without torchrun.")
        if cfg.loss == "hinge":
            raise UsageError("--loss hinge is single-label; multi-label training uses --loss bce (the default) or asl.")
        if cfg.balance == "sampler":
            raise UsageError("--balance sampler draws images by their one class; for multi-label data use --balance "
                             "weights (per-class positive weights).")
        if cfg.cache_features:
            raise UsageError("--cache-features is single-label only; drop it for multi-label data.")
        if cfg.ema or cfg.teacher:
            raise UsageError(f"--{'ema' if cfg.ema else 'teacher'} is single-label only for now; drop it for "
                             "multi-label data.")
        self.cfg = replace(cfg, task=MULTILABEL, head_epochs=0)  # the head phase is single-label

    def _load_data(self) -> None:
        from cnncli.data.multilabel import load_multilabel_dataset
        from cnncli.train.multilabel import target_samples

        cfg = self.cfg
        self.labelled = load_multilabel_dataset(cfg.data, val_split=cfg.val_split, seed=cfg.seed, val_csv=cfg.val_csv,
                                                allow_outside=cfg.allow_outside)
        for message in self.labelled.warnings:
            warn(message)
        self.classes = list(self.labelled.classes)
        n = len(self.classes)
        self.splits = SimpleNamespace(root=self.labelled.root, layout="csv", classes=self.classes,
                                      train=target_samples(self.labelled.train, n),
                                      val=target_samples(self.labelled.val, n), warnings=self.labelled.warnings,
                                      stream=None)  # multi-label data is read from files, never streamed
        self.folder = RunFolder(Path(cfg.resume or cfg.out or _next_run_dir(cfg.command)),
                                default_named=not (cfg.resume or cfg.out))
        self.cfg = replace(cfg, out=str(self.folder.path))

    def _build_model(self) -> None:
        super()._build_model()
        self.card.task = MULTILABEL
        self.card.thresholds = [0.5] * len(self.classes)

    def _build_optimisation(self) -> None:
        from cnncli.train.multilabel import criteria, multihot_mixer, positive_weights

        cfg = self.cfg
        self.cfg = replace(cfg, balance="none", loss="ce", mixup=0.0, cutmix=0.0, label_smoothing=0.0)
        try:  # the optimiser and schedule as for single-label; the losses and mixer are the multi-label ones
            super()._build_optimisation()
        finally:
            self.cfg = cfg
        weights = (positive_weights(self.labelled.train, len(self.classes), self.device)
                   if cfg.balance == "weights" else None)
        criterion, val_criterion = criteria(cfg.loss, cfg.label_smoothing, weights)
        self.step.criterion = criterion
        self.step.mixer = multihot_mixer(cfg.mixup, cfg.cutmix)
        self.val = replace(self.val, criterion=val_criterion)

    def _wrap_for_training(self) -> None:
        from cnncli.data.multilabel import label_matrix

        cfg, labelled = self.cfg, self.labelled
        self.step.forward = torch.compile(self.step_module) if cfg.compile else self.step_module
        self.ddp_wrap = None
        record = {"dataset": str(Path(cfg.data).resolve()), "layout": "csv", "task": MULTILABEL,
                  "val_split": cfg.val_split, "seed": cfg.seed,
                  "val_csv": str(Path(cfg.val_csv).resolve()) if cfg.val_csv else None,
                  "n_train": len(labelled.train), "n_val": len(labelled.val)}
        first = [s.path for s in labelled.train[:64]]
        root = Path(labelled.root).resolve().parent
        calibration = {"root": str(root), "files": [str(Path(p).resolve().relative_to(root))
                                                    if Path(p).resolve().is_relative_to(root) else str(p)
                                                    for p in first]}
        self.summary_base = {"command": cfg.command, "dataset": record["dataset"], "layout": "csv",
                             "task": MULTILABEL, "n_train": len(labelled.train), "n_val": len(labelled.val),
                             "policy": cfg.trainable, "freeze_epochs": cfg.freeze_epochs, "seed": cfg.seed,
                             "optimizer": cfg.optimizer, "lr": cfg.learning_rate, "augment": self.augment.preset,
                             "flip": self.augment.flip,
                             **size_record(self.augment, self.card.preprocessing.input_size, cfg.epochs),
                             "loss": "asl" if cfg.loss == "asl" else "bce",
                             "calibration": calibration, "split": record}
        cardinality = float(label_matrix(labelled.train, len(self.classes)).sum(axis=1).mean())
        how = labelled.notes[0] if labelled.notes else f"val: {len(labelled.val)} images from --val-csv"
        self.say(f"multi-label task: {len(self.classes)} classes, {cardinality:.2f} labels per image; sigmoid outputs "
                 f"with {'asymmetric loss' if cfg.loss == 'asl' else 'binary cross-entropy'}; best epoch by val "
                 f"mAP; {how}")
        self.say(f"{cfg.command} {self.card.arch} on {len(labelled.train)} train / {len(labelled.val)} val images, "
                 f"{len(self.classes)} classes, trainable {cfg.trainable} ({self.final_params:,} parameters), "
                 f"device {self.device}, out {self.folder.path}; "
                 f"{self.augment.describe(self.card.preprocessing, cfg.epochs)}")
        for note in self.resume_notes:
            self.say(note)

    def _validate(self) -> dict:
        from cnncli.train.multilabel import validate_multilabel

        return validate_multilabel(self.val)

    def _scored_row(self, row: dict, val: dict) -> tuple[dict, float]:
        row["val_map"] = val["map"]
        if val["thresholds"] is not None:
            self.card.thresholds = val["thresholds"]  # saved with this epoch's weights
        return row, val["map"]

    def _final_outputs(self, finished: FinishedRun, val) -> dict:
        from cnncli.train.multilabel_outputs import write_multilabel_outputs

        return write_multilabel_outputs(finished, self.model, val, self.val_ds, self.card)


def _next_run_dir(command: str) -> Path:
    from cnncli.train.config import next_run_dir

    return next_run_dir(command)
