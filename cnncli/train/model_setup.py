"""The model a run trains: a new architecture with its initialisation (``train``), or a pretrained backbone with
a new head when the classes differ (``finetune``, from registry weights or a cnncli model file), the input size
and channels the run asks for, optional head dropout, and the model card the saved files carry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from cnncli.core.errors import UsageError
from cnncli.models.card import ModelCard
from cnncli.models.names import DEFAULT_ARCH
from cnncli.train.config import TrainConfig


@dataclass
class BuiltModel:
    model: nn.Module
    card: ModelCard
    arch: str  # the architecture built: --arch, the --weights file's, or the finetune default (saved in args.json)
    notes: list[str] = field(default_factory=list)  # for the log, e.g. "new 3-class head (...)"


def initialise(model: nn.Module, init: str) -> None:
    """--init kaiming / xavier on every conv and linear layer (biases zeroed); "default" keeps torch's own."""
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


def build_model(cfg: TrainConfig, classes: list[str]) -> BuiltModel:
    """The model to train for ``classes``, its card, the architecture it is, and notes for the log."""
    from cnncli.models.registry import create_model, replace_head

    in_chans = 1 if cfg.grayscale else 3
    notes = []
    arch = cfg.arch
    if cfg.command == "train":
        built = create_model(arch, weights="none", classes=classes, in_chans=in_chans)
        initialise(built.model, cfg.init)
    else:
        file_card = cnncli_card_of(cfg.weights)
        if file_card is not None:  # finetune an existing cnncli model: its architecture and input channels
            if arch and arch != file_card.arch:
                raise UsageError(f"{cfg.weights} holds a {file_card.arch} model, not {arch}; drop --arch or pass "
                                 f"--arch {file_card.arch}.")
            arch = file_card.arch
            in_chans = file_card.preprocessing.channels
        arch = arch or DEFAULT_ARCH
        built = create_model(arch, weights=cfg.weights, in_chans=in_chans)
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
    return BuiltModel(built.model, card, arch, notes)


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


def model_card_for(card: ModelCard, cfg: TrainConfig, summary: dict, trainable_params: int) -> ModelCard:
    """``card`` with the run's training summary and trainable-part record, as best/last.safetensors carry it."""
    card.training = summary
    card.extra = dict(card.extra or {}, trainable=cfg.trainable, trainable_params=trainable_params, bn=cfg.bn)
    return card
