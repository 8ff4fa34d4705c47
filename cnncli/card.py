"""The model card: the one metadata record (architecture, classes, preprocessing, training summary) that travels
inside every cnncli model file (safetensors metadata) and every exported ONNX file (metadata_props).

Nothing here imports torch: the card is read on the fast ONNX path too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cnncli import __version__
from cnncli.errors import ModelFileError

FORMAT_VERSION = 1
METADATA_KEY = "cnncli"  # key of the JSON card in safetensors metadata and ONNX metadata_props

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("crop", "pad", "squash")
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

    def replace(self, **changes: Any) -> "Preprocessing":
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
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
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

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def source(self) -> str:
        from cnncli.registry_names import source_of

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
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        version = d.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise ModelFileError(
                f"this model file has format version {version}, newer than this cnncli understands "
                f"({FORMAT_VERSION}); upgrade cnncli to read it."
            )
        try:
            classes = [str(c) for c in d["classes"]]
            card = cls(
                arch=str(d["arch"]),
                classes=classes,
                preprocessing=Preprocessing.from_dict(d.get("preprocessing", {})),
                weights=d.get("weights"),
                training=d.get("training"),
                extra=d.get("extra") or {},
                cnncli_version=d.get("cnncli_version", "unknown"),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"the model's cnncli metadata is malformed ({exc}); re-save the model.") from None
        if "num_classes" in d and int(d["num_classes"]) != len(classes):
            raise ModelFileError(
                f"the model's metadata lists {len(classes)} class names for {d['num_classes']} classes; re-save it."
            )
        return card

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"the model's cnncli metadata is not valid JSON ({exc}).") from None
