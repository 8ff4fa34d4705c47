"""Training augmentation: presets that are safe for any image classification task by default, and the rule that
decides the horizontal flip.

``light`` (the default) keeps the eval preprocessing's framing and adds geometric jitter scaled to the input size
(shift up to 10% of it, scale 0.9-1.1, rotation up to 10 degrees) with the border replicated, so digits, text,
signs and medical images keep their meaning. ``standard`` adds random-resized crops (down to 8% of the area, as
timm and torchvision train ImageNet) and colour jitter 0.4; ``strong`` adds TrivialAugment and random erasing: both
suit natural photos and large datasets. ``none`` is the eval preprocessing alone. ``auto`` (the ``finetune``
default) is ``standard`` when the data are presumed natural photos (below) and ``light`` otherwise.

Random-resized crops train at a smaller size than the model is evaluated at (:func:`training_size`: 176 px for
224, torchvision's 2021 recipe): the crops make objects look larger than in the eval framing, so testing at the
larger size matches their apparent size again (Touvron et al., FixRes), and each step costs 0.62x the pixels.
``light`` keeps the eval framing, so there the smaller size is progressive resizing (fastai's): the first epochs
at 176, the last third (at least one) at the eval size, where the model ends on what it will be shown
(:func:`epoch_train_size`). ``--train-size`` sets the size for every epoch under any preset.

The horizontal flip changes the meaning of anything with a handedness (digits, letters, traffic signs), so it is
off unless asked for (``--flip``) or the data are presumed natural photos: ``finetune`` from ImageNet weights on
3-channel images that have colour (``--no-flip`` turns it off there). Grey images saved as RGB (digits, scans,
documents: :func:`looks_greyscale` samples 16 training images) are not presumed photos.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from cnncli.models.card import Preprocessing

PRESETS = ("none", "light", "standard", "strong")
SHIFT = 0.10  # of the input size
SCALE = (0.9, 1.1)
DEGREES = 10.0
CROP_AREA = {"standard": 0.08, "strong": 0.08}  # timm's and torchvision's ImageNet floor
TRAIN_SIZE_RATIO = 176 / 224  # torchvision's recipe: random-resized crops at 176 px, evaluation at 224
TRAIN_SIZE_FLOOR = 128  # eval sizes below it train at the eval size (their last feature maps are small already)
FULL_SIZE_SHARE = 1 / 3  # light's progressive resizing: the last third of the epochs (at least one) at the eval size


@dataclass(frozen=True)
class AugmentPlan:
    preset: str
    flip: bool
    flip_reason: str
    auto: bool = False  # --augment auto chose the preset
    train_size: tuple[int, int] | None = None  # (height, width) of the training images; None: the eval size
    train_size_asked: bool = False  # --train-size gave it
    progressive: bool = False  # train_size until the last epochs, then the eval size (light)

    def describe(self, pre: Preprocessing, epochs: int | None = None) -> str:
        """One sentence for the log line that opens the run (``epochs``: the run's, for progressive resizing)."""
        size = max(pre.input_size)
        if self.preset == "none":
            what = "augment none (the eval preprocessing only)"
        elif self.preset == "light":
            what = (f"augment light: shift up to {SHIFT * size:.0f} px ({SHIFT:.0%} of {size} px), scale "
                    f"{SCALE[0]:g}-{SCALE[1]:g}, rotation up to {DEGREES:g} degrees")
        else:
            what = (f"augment {self.preset}: random-resized crop down to {CROP_AREA[self.preset]:.0%} of the area, "
                    "colour jitter" + (", TrivialAugment, random erasing" if self.preset == "strong" else ""))
        if self.auto:
            what = what.replace("augment ", "augment auto -> ", 1)
        if self.train_size is not None and tuple(self.train_size) != tuple(pre.input_size):
            height, width = self.train_size
            shown = height if height == width else f"{height}x{width}"
            if self.progressive:
                smaller = smaller_size_epochs(epochs or 1)
                if smaller:
                    what += (f"; trains at {shown} px for {smaller} of {epochs} epochs, then at {size} (progressive "
                             "resizing)")
            else:
                why = ("--train-size" if self.train_size_asked
                       else "crops train smaller, evaluation sees the larger size")
                what += f"; trains at {shown} px, evaluates at {size} ({why})"
        if self.preset == "none":
            return what
        return what + ("; horizontal flip" if self.flip else "; no horizontal flip") + f" ({self.flip_reason})"


def is_imagenet_weights(weights: str | None) -> bool:
    """Registry weights ("default", a torchvision enum name): ImageNet. A file (state dict, cnncli model) or
    "none": unknown origin, so not presumed natural photos."""
    if not weights or weights == "none":
        return False
    return "/" not in weights and "." not in weights


GREY_SAMPLE = 16  # training images looked at by looks_greyscale
GREY_SPREAD = 8  # channel spread (0-255) under which a pixel has no colour (JPEG chroma noise stays under it)


def looks_greyscale(paths, sample: int = GREY_SAMPLE) -> bool:
    """True when every one of up to ``sample`` images, spread over ``paths``, has no colour: 99% of its pixels
    within GREY_SPREAD between their largest and smallest channel (grey scans, digits or documents saved as RGB).
    An unreadable image counts as colour (the check only ever takes the photo recipe away)."""
    from cnncli.data.images import ImageError, load_image

    paths = list(paths)
    if not paths:
        return False
    for index in np.unique(np.linspace(0, len(paths) - 1, min(len(paths), sample)).round().astype(int)):
        path = paths[index]  # spread from the first to the last (sorted by class: every part of the data)
        try:
            img = load_image(path, 3, draft_size=(64, 64))
        except ImageError:
            return False
        img.thumbnail((64, 64))
        pixels = np.asarray(img, dtype=np.int16)
        if np.percentile(pixels.max(axis=2) - pixels.min(axis=2), 99) > GREY_SPREAD:
            return False
    return True


def presumed_photos(command: str, weights: str | None, channels: int, greyscale: bool = False) -> bool:
    """``finetune`` from ImageNet weights on 3-channel images that have colour: the data are presumed natural
    photos (``greyscale``: :func:`looks_greyscale` found no colour in the training images)."""
    return command == "finetune" and is_imagenet_weights(weights) and channels == 3 and not greyscale


def training_size(preset: str, eval_size: tuple[int, int], asked: int | None = None) -> tuple[int, int]:
    """(height, width) of the (smaller) training images: ``asked`` (square) when given; at an eval size of
    TRAIN_SIZE_FLOOR or more, the eval size times TRAIN_SIZE_RATIO rounded to 8 px (224 -> 176); else the eval
    size. ``light`` uses it for its first epochs only (:func:`epoch_train_size`)."""
    if preset == "none":
        return tuple(eval_size)
    if asked is not None:
        return (asked, asked)
    if min(eval_size) >= TRAIN_SIZE_FLOOR:
        return tuple(max(8, int(round(n * TRAIN_SIZE_RATIO / 8)) * 8) for n in eval_size)
    return tuple(eval_size)


def smaller_size_epochs(epochs: int) -> int:
    """Progressive resizing: how many of ``epochs`` train at the smaller size (the last third, at least one, at
    the eval size)."""
    return max(0, epochs - max(1, round(epochs * FULL_SIZE_SHARE)))


def size_record(plan: AugmentPlan, eval_size: tuple[int, int], epochs: int) -> dict:
    """What the model card records: the training size and in how many epochs it was used (the rest: the eval
    size)."""
    size = tuple(plan.train_size or eval_size)
    used = sum(epoch_train_size(plan, eval_size, epoch, epochs) == size for epoch in range(1, epochs + 1))
    return {"train_size": list(size), "train_size_epochs": used}


def epoch_train_size(plan: AugmentPlan, eval_size: tuple[int, int], epoch: int, epochs: int) -> tuple[int, int]:
    """The training images' (height, width) in epoch ``epoch`` (1-based) of ``epochs``."""
    if plan.train_size is None:
        return tuple(eval_size)
    if plan.progressive and epoch > smaller_size_epochs(epochs):
        return tuple(eval_size)
    return tuple(plan.train_size)


def plan_augmentation(preset: str, flip: bool | None, command: str, weights: str | None, channels: int,
                      greyscale: bool = False, eval_size: tuple[int, int] | None = None,
                      train_size: int | None = None) -> AugmentPlan:
    """The preset (``auto``: ``standard`` for presumed photos, else ``light``), the flip decision with its
    reason and, given the eval size, the training size (see the module docstring)."""
    if preset == "auto":
        chosen = "standard" if presumed_photos(command, weights, channels, greyscale) else "light"
        return replace(plan_augmentation(chosen, flip, command, weights, channels, greyscale, eval_size, train_size),
                       auto=True)
    if eval_size is not None:
        plan = plan_augmentation(preset, flip, command, weights, channels, greyscale)
        return replace(plan, train_size=training_size(preset, eval_size, train_size),
                       train_size_asked=train_size is not None, progressive=preset == "light" and train_size is None)
    if flip is True:
        return AugmentPlan(preset, True, "asked for with --flip")
    if flip is False:
        return AugmentPlan(preset, False, "--no-flip")
    if presumed_photos(command, weights, channels, greyscale):
        return AugmentPlan(preset, True, "fine-tuning ImageNet weights on colour images: natural photos presumed; "
                                         "--no-flip if mirroring changes the class")
    if greyscale and presumed_photos(command, weights, channels):
        return AugmentPlan(preset, False, "the training images have no colour (digits, scans, documents presumed); "
                                          "--flip adds it")
    return AugmentPlan(preset, False, "mirrored digits, letters and signs change meaning; --flip adds it")


class EvalFraming:
    """PIL image -> the eval preprocessing's resized, cropped or padded PIL image (no normalisation)."""

    def __init__(self, pre: Preprocessing) -> None:
        self.pre = pre

    def __call__(self, img):
        from PIL import Image

        from cnncli.data.images import preprocess_pixels

        arr = preprocess_pixels(img, self.pre)
        return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def resize_for_epoch(dataset, plan: AugmentPlan, pre: Preprocessing, epoch: int, epochs: int) -> None:
    """Give a training dataset (one with a ``transform``) the transform of epoch ``epoch``'s size; the loader's
    workers start each epoch, so they pick it up."""
    if getattr(dataset, "transform", None) is None:
        return
    size = epoch_train_size(plan, pre.input_size, epoch, epochs)
    if size != getattr(dataset, "trained_size", None):
        dataset.transform = train_transform(pre, plan, size)
        dataset.trained_size = size


def train_transform(pre: Preprocessing, plan: AugmentPlan, trained_size: tuple[int, int] | None = None):
    """The torchvision v2 pipeline for ``plan`` (PIL image in, normalised float tensor out) making images of
    ``trained_size`` (default: the plan's first epoch's); None for ``none``."""
    if plan.preset == "none":
        return None
    from torchvision.transforms import InterpolationMode, v2

    size = list(pre.input_size)
    trained = list(trained_size or plan.train_size or size)
    interp = InterpolationMode(pre.interpolation)
    if plan.preset == "light":
        # pad by replicating the border, jitter, crop the centre back: the corners a shift or a rotation uncovers
        # show the image's own edge, not a colour it never had
        pad = int(np.ceil(0.3 * max(size)))
        shift = (SHIFT * size[1] / (size[1] + 2 * pad), SHIFT * size[0] / (size[0] + 2 * pad))  # of the padded image
        steps = [EvalFraming(pre), v2.Pad(pad, padding_mode="edge"),
                 v2.RandomAffine(DEGREES, translate=shift, scale=SCALE, interpolation=interp),
                 v2.CenterCrop(size)]
        if trained != size:
            steps.append(v2.Resize(trained, interpolation=interp, antialias=True))
    else:
        steps = [v2.RandomResizedCrop(trained, scale=(CROP_AREA[plan.preset], 1.0), interpolation=interp,
                                      antialias=True),
                 v2.ColorJitter(0.4, 0.4, 0.4, 0.05 if pre.channels == 3 else 0)]
        if plan.preset == "strong":
            steps.append(v2.TrivialAugmentWide(interpolation=interp))
    if plan.flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]
    if plan.preset == "strong":
        steps.append(v2.RandomErasing(p=0.25))
    return v2.Compose(steps)
