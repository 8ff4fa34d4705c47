"""The model card: the one metadata record (architecture, classes, preprocessing, training summary) that travels
inside every cnncli model file (safetensors metadata) and every exported ONNX file (metadata_props).

Nothing here imports torch: the card is read on the fast ONNX path too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cnncli import __version__
from cnncli.core.errors import ModelFileError
from cnncli.core.text import json_text

FORMAT_VERSION = 1
METADATA_KEY = "cnncli"  # key of the JSON card in safetensors metadata and ONNX metadata_props

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("crop", "pad", "squash")
TASKS = ("single", "multilabel")  # single: softmax over classes, one label; multilabel: a sigmoid per class
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor; the single definition every engine applies.

    resize_mode: ``crop`` resizes the shorter side to ``input_size / crop_pct`` then takes the centre
    ``input_size`` crop; ``pad`` letterboxes the whole image into ``input_size`` (nothing is cut off);
    ``squash`` resizes to ``input_size`` ignoring aspect ratio.
    """

    input_size: tuple[int, int] = (224, 224)  # (height, width)
    resize_mode: str = "crop"
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3

    def __post_init__(self) -> None:
        size = self.input_size
        if isinstance(size, int):
            size = (size, size)
        object.__setattr__(self, "input_size", tuple(int(s) for s in size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, not {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not {self.interpolation!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values each")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], not {self.crop_pct}")

    def replace(self, **changes: Any) -> Preprocessing:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in changes.items() if v is not None})
        if values["channels"] != len(values["mean"]) and "mean" not in changes:
            # switching between grayscale and colour: average / repeat the statistics
            m, s = values["mean"], values["std"]
            if values["channels"] == 1:
                values["mean"], values["std"] = (sum(m) / len(m),), (sum(s) / len(s),)
            else:
                values["mean"], values["std"] = (m[0],) * 3, (s[0],) * 3
        return Preprocessing(**values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known})


@dataclass
class ModelCard:
    """Everything needed to use a model besides its weights."""

    arch: str  # registry name: "resnet18", "timm:convnext_tiny", "lenet5", "efficientnet_lite0"
    classes: list[str]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    weights: str | None = None  # the pretrained weights the model started from, e.g. "IMAGENET1K_V1"
    training: dict[str, Any] | None = None  # summary of the run that produced the file
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. trainable policy, calibration set
    cnncli_version: str = __version__
    format_version: int = FORMAT_VERSION
    task: str = "single"  # "multilabel": sigmoid outputs, labels over per-class thresholds
    thresholds: list[float] | None = None  # multilabel: one decision threshold per class (tuned on val for max F1)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def source(self) -> str:
        from cnncli.models.names import source_of

        return source_of(self.arch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "cnncli_version": self.cnncli_version,
            "arch": self.arch,
            "source": self.source,
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "weights": self.weights,
            "training": self.training,
            "extra": self.extra,
            # only multi-label cards carry these, so a single-label file is byte-identical to before
            **({"task": self.task, "thresholds": self.thresholds} if self.multilabel else {}),
        }

    def shown_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` for people and APIs (inspect, serve's /v1/model): the training images' content hashes,
        which evaluate reads from the file, are summarised as their count instead of kilobytes of base64."""
        d = self.to_dict()
        split = (d.get("training") or {}).get("split")
        if isinstance(split, dict) and isinstance(split.get("train_hashes"), dict):
            hashes = {k: v for k, v in split["train_hashes"].items() if k != "digests"}
            d["training"] = {**d["training"], "split": {**split, "train_hashes": hashes}}
        return d

    def to_json(self) -> str:
        return json_text(self.to_dict())  # a class folder's non-UTF-8 byte as its JSON escape

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | None = None) -> ModelCard:
        """A card from its JSON form. Cards in files are data from strangers: every field is checked
        (:func:`check_card_fields`) and a bad one is refused with one sentence naming it."""
        check_card_fields(d, source)
        version = d.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise ModelFileError(
                f"{_where(source)}format version {version} is newer than this cnncli understands "
                f"({FORMAT_VERSION}); upgrade cnncli to read it."
            )
        try:
            classes = [str(c) for c in d["classes"]]
            card = cls(
                arch=str(d["arch"]),
                classes=classes,
                preprocessing=Preprocessing.from_dict(d["preprocessing"]),
                weights=d.get("weights"),
                training=d.get("training"),
                extra=d.get("extra") or {},
                cnncli_version=d.get("cnncli_version", "unknown"),
                format_version=version,
                task=d.get("task", "single"),
                thresholds=[float(t) for t in d["thresholds"]] if d.get("thresholds") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{_where(source)}the model's cnncli metadata is malformed ({exc}); "
                                 "re-save the model.") from None
        return card

    @classmethod
    def from_json(cls, text: str, source: str | None = None) -> ModelCard:
        if not isinstance(text, str) or len(text) > MAX_CARD_CHARS:
            raise ModelFileError(f"{_where(source)}the model card is over {MAX_CARD_CHARS:,} characters; "
                                 "it is not a cnncli card.")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ModelFileError(f"{_where(source)}the model's cnncli metadata is not valid JSON ({exc}).") from None
        return cls.from_dict(data, source)


# ---------------------------------------------------------------- checking a card read from a file

MAX_CARD_CHARS = 50_000_000
MAX_CLASSES = 100_000
MAX_NAME_CHARS = 1_000


def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    import math

    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def check_card_fields(d: Any, source: str | None = None) -> None:
    """Refuse a card (the parsed JSON of a file's metadata) whose fields have the wrong type, range or length,
    with one ModelFileError sentence naming the field. Bounds: CNNCLI_MAX_INPUT_SIZE for the input side."""
    from cnncli.core.limits import MAX_INPUT_SIZE_ENV, max_input_size

    def bad(field_name: str, problem: str) -> ModelFileError:
        return ModelFileError(f"{_where(source)}the model card's '{field_name}' {problem}; the file is damaged or "
                              "was not written by cnncli: re-save or re-export the model.")

    if not isinstance(d, dict):
        raise ModelFileError(f"{_where(source)}the model card is not a JSON object; "
                             "the file was not written by cnncli.")
    version = d.get("format_version", 0)
    if not _is_int(version) or version < 0:
        raise bad("format_version", f"must be a whole number, not {_short(version)}")
    arch = d.get("arch")
    if not isinstance(arch, str) or not arch.strip() or len(arch) > MAX_NAME_CHARS:
        raise bad("arch", f"must be an architecture name, not {_short(arch)}")
    classes = d.get("classes")
    if not isinstance(classes, list) or not classes:
        raise bad("classes", f"must be a non-empty list of class names, not {_short(classes)}")
    if len(classes) > MAX_CLASSES:
        raise bad("classes", f"lists {len(classes):,} classes, over the {MAX_CLASSES:,} cnncli accepts")
    for i, name in enumerate(classes):
        if (not isinstance(name, (str, int)) or isinstance(name, bool) or not str(name).strip()
                or len(str(name)) > MAX_NAME_CHARS):
            raise bad(f"classes[{i}]", f"must be a class name (text), not {_short(name)}")
    if len({str(c) for c in classes}) != len(classes):
        raise bad("classes", "lists the same class name twice")
    if "num_classes" in d and (not _is_int(d["num_classes"]) or d["num_classes"] != len(classes)):
        raise bad("num_classes", f"is {_short(d['num_classes'])} but 'classes' lists {len(classes)} names")
    for name in ("weights", "cnncli_version", "source"):
        value = d.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_NAME_CHARS):
            raise bad(name, f"must be text, not {_short(value)}")
    for name in ("training", "extra"):
        if d.get(name) is not None and not isinstance(d[name], dict):
            raise bad(name, f"must be an object, not {_short(d[name])}")
    task = d.get("task", "single")
    if task not in TASKS:
        raise bad("task", f"must be one of {', '.join(TASKS)}, not {_short(task)}")
    thresholds = d.get("thresholds")
    if thresholds is not None and (not isinstance(thresholds, list) or len(thresholds) != len(classes)
                                   or not all(_is_number(t) and 0 <= t <= 1 for t in thresholds)):
        raise bad("thresholds", f"must be {len(classes)} numbers in [0, 1], one per class, not {_short(thresholds)}")
    if (d.get("training") or {}).get("split") is not None:
        _check_split_record(d["training"]["split"], bad)
    pre = d.get("preprocessing")
    if pre is None:
        raise bad("preprocessing", "is missing (input size, resize, mean and std)")
    if not isinstance(pre, dict):
        raise bad("preprocessing", f"must be an object, not {_short(pre)}")
    channels = pre.get("channels", 3)
    if not _is_int(channels) or channels not in (1, 3):
        raise bad("preprocessing.channels", f"must be 1 or 3, not {_short(channels)}")
    size = pre.get("input_size", [224, 224])
    sides = [size] if _is_int(size) else size
    limit = max_input_size()
    if not isinstance(sides, list) or len(sides) != (1 if _is_int(size) else 2) or not all(_is_int(v) for v in sides):
        raise bad("preprocessing.input_size", f"must be [height, width] in pixels, not {_short(size)}")
    if not all(1 <= v <= limit for v in sides):
        raise bad("preprocessing.input_size", f"{_short(size)} is outside 1..{limit} pixels (set {MAX_INPUT_SIZE_ENV} "
                  "higher if you trust this model)")
    for name, allowed in (("resize_mode", RESIZE_MODES), ("interpolation", INTERPOLATIONS)):
        value = pre.get(name, allowed[0])
        if value not in allowed:
            raise bad(f"preprocessing.{name}", f"must be one of {', '.join(allowed)}, not {_short(value)}")
    crop = pre.get("crop_pct", 0.875)
    if not _is_number(crop) or not 0.05 <= crop <= 1:
        raise bad("preprocessing.crop_pct", f"must be a number in [0.05, 1], not {_short(crop)}")
    for name in ("mean", "std"):
        values = pre.get(name, list(IMAGENET_MEAN if name == "mean" else IMAGENET_STD))
        if not isinstance(values, list) or len(values) != channels or not all(_is_number(v) for v in values):
            raise bad(f"preprocessing.{name}",
                      f"must be {channels} finite number(s), one per channel, not {_short(values)}")
        if name == "std" and not all(v > 0 for v in values):
            raise bad("preprocessing.std", f"must be positive (it divides the pixels), not {_short(values)}")
        if name == "mean" and not all(abs(v) <= 10 for v in values):
            raise bad("preprocessing.mean", f"is out of range: {_short(values)}")
    if "std" in pre and any(v < 1e-6 for v in pre["std"]):
        raise bad("preprocessing.std", f"is too close to 0: {_short(pre['std'])}")
    if max(sides) / crop > limit:
        raise bad("preprocessing.crop_pct",
                  f"{crop:g} with input_size {_short(size)} resizes images to over {limit} pixels "
                  f"a side (set {MAX_INPUT_SIZE_ENV} higher if you trust this model)")


def _check_split_record(record: Any, bad) -> None:
    """``training.split``, which evaluate and export read to rebuild the hold-out (cnncli.data.eval_split)."""
    if not isinstance(record, dict):
        raise bad("training.split", f"must be an object, not {_short(record)}")
    for name in ("dataset", "layout", "fingerprint"):
        if name in record and not (isinstance(record[name], str) and 0 < len(record[name]) <= 10 * MAX_NAME_CHARS):
            raise bad(f"training.split.{name}", f"must be text, not {_short(record[name])}")
    if record.get("val_csv") is not None and not isinstance(record["val_csv"], str):
        raise bad("training.split.val_csv", f"must be text, not {_short(record['val_csv'])}")
    if "val_split" in record and not (_is_number(record["val_split"]) and 0 <= record["val_split"] < 1):
        raise bad("training.split.val_split", f"must be a number in [0, 1), not {_short(record['val_split'])}")
    for name in ("seed", "n_images", "n_train", "n_val"):
        if name in record and not (_is_int(record[name]) and (name == "seed" or record[name] >= 0)):
            raise bad(f"training.split.{name}", f"must be a whole number, not {_short(record[name])}")
    if record.get("train_hashes") is not None:
        try:
            decode_train_hashes(record["train_hashes"])
        except ValueError as exc:
            raise bad("training.split.train_hashes", str(exc)) from None


TRAIN_HASH_ALGORITHM = "sha256-64"  # the first 64 bits of the SHA-256 of an image file's bytes
TRAIN_HASH_BYTES = 8


def decode_train_hashes(record: Any) -> set[bytes]:
    """The set of 8-byte hashes in a card's ``training.split.train_hashes`` (built by
    :func:`cnncli.data.copies.train_hashes_record`); ValueError, saying what is wrong, for a damaged one."""
    import base64
    import binascii

    if not isinstance(record, dict) or record.get("algorithm") != TRAIN_HASH_ALGORITHM:
        raise ValueError(f"must be an object with algorithm {TRAIN_HASH_ALGORITHM!r}")
    count, text = record.get("count"), record.get("digests")
    if not _is_int(count) or count < 0 or not isinstance(text, str):
        raise ValueError("must hold a whole 'count' and a text 'digests'")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("holds 'digests' that are not base64") from None
    if len(raw) != count * TRAIN_HASH_BYTES:
        raise ValueError(f"holds {len(raw) / TRAIN_HASH_BYTES:g} hashes, not the {count} its 'count' says")
    return {raw[i : i + TRAIN_HASH_BYTES] for i in range(0, len(raw), TRAIN_HASH_BYTES)}


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
