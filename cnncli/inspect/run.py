"""``cnncli inspect MODEL``: opens a registry name, a cnncli model file or an ONNX file and gathers its layer
summary (:mod:`.summary`; :mod:`.onnx_summary` for ONNX, torch-free) and pictures (:mod:`.pictures`)."""

from __future__ import annotations

from pathlib import Path

from cnncli.models.names import BUILTIN_ARCHS, DEFAULT_ARCH

ONNX_SUFFIX = ".onnx"
PICTURES = ("filters", "features", "saliency", "gradcam")


def is_onnx(spec: str) -> bool:
    return spec.lower().endswith(ONNX_SUFFIX)


def default_weights(spec: str, pictures: bool) -> str:
    """Weights for a registry name when the user gave none.

    The default model's ImageNet weights ship with cnncli, so it always gets them. For other names the
    summary does not depend on the weights (shapes, parameters, MACs, receptive field), so it needs no
    download: ``none``. Pictures are only meaningful with trained weights: ``default`` (downloaded from the
    torchvision / timm hub, which fails with one sentence when offline). The from-scratch built-ins (lenet5,
    simplecnn) have no pretrained weights: ``none``.
    """
    if spec == DEFAULT_ARCH or (pictures and spec not in BUILTIN_ARCHS):
        return "default"
    return "none"


def open_for_inspection(spec: str, weights: str | None = None, pictures: bool = False):
    """(model in eval mode, card, trainable record or None) for a registry name or a cnncli model file."""
    from cnncli.inspect.summary import apply_trainable_record
    from cnncli.models.spec import load_for_inference

    if not Path(spec).exists() and not spec.endswith(".safetensors"):
        weights = weights or default_weights(spec, pictures)
    model, card = load_for_inference(spec, weights=weights, device="cpu")
    for p in model.parameters():
        p.requires_grad_(True)
    record = apply_trainable_record(model, card)
    return model, card, record


def inspect_model(
    spec: str,
    what: tuple[str, ...] | list[str] = ("summary",),
    input_size: int | None = None,
    depth: int = 3,
    weights: str | None = None,
    image: str | Path | None = None,
    layer: str | None = None,
    out_dir: str | Path = ".",
) -> dict:
    """Everything ``cnncli inspect MODEL`` shows: {"summary": ModelSummary | OnnxSummary | None,
    "pictures": [Picture]} for a registry name, a cnncli model file or an ONNX file (summary only)."""
    from cnncli.core.errors import UsageError

    unknown = [k for k in what if k != "summary" and k not in PICTURES]
    if unknown or not what:
        raise UsageError(f"unknown --what {unknown[0] if unknown else ''!r}; choose from: summary, "
                         f"{', '.join(PICTURES)}.")
    pictures = [k for k in what if k != "summary"]
    if is_onnx(spec):
        if pictures:
            raise UsageError("pictures need a PyTorch model; pass the .safetensors file or registry name, not ONNX.")
        from cnncli.inspect.onnx_summary import summarize_onnx

        return {"summary": summarize_onnx(spec), "pictures": []}
    model, card, record = open_for_inspection(spec, weights, pictures=bool(pictures))
    if input_size:
        from cnncli.models.min_input import check_image_size

        check_image_size(card.arch, input_size, card.preprocessing.channels)
    summary = summary_of(model, card, record, spec, input_size, depth) if "summary" in what else None
    drawn = []
    if pictures:
        from cnncli.inspect.pictures import render_pictures

        if not card.weights and not Path(spec).is_file():  # a registry name built without weights
            from cnncli.core.console import warn

            warn(f"{spec} has random weights: its pictures show an untrained network (pass --weights).")
        if input_size:
            card.preprocessing = card.preprocessing.replace(input_size=(input_size, input_size))
        drawn = render_pictures(model, card, pictures, out_dir, spec, image=image, layer=layer)
    return {"summary": summary, "pictures": drawn}


def summary_of(model, card, record, spec: str, input_size: int | None, depth: int):
    from cnncli.inspect.summary import summarize_model

    size = (input_size, input_size) if input_size else card.preprocessing.input_size
    try:
        summary = summarize_model(model, size, card.preprocessing.channels, depth, card=card, name=spec)
    except RuntimeError as exc:  # e.g. the maps shrink below a kernel, or a fixed-size model
        from cnncli.core.errors import UsageError

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{spec} cannot run on a {size[0]}x{size[1]} input ({first}); choose another "
                         "--input-size.") from None
    if record is not None and "trainable_params" in record and record.get("trainable_names") is None \
            and record.get("policy") != "head":
        summary.trainable_params = int(record["trainable_params"])  # per-layer flags unknown: trust the record
    return summary
