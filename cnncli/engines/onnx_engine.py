"""The onnxruntime engine: runs an exported ``.onnx`` file on CPU or CUDA without importing torch.

The model card (classes, preprocessing) comes from the file's ``metadata_props`` (key ``"cnncli"``); a file
without it still runs, with classes labelled by index and ImageNet-style preprocessing at the graph's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnncli.core.errors import ModelFileError, UsageError
from cnncli.core.numeric import to_probabilities
from cnncli.export.onnx_io import CPU, CUDA, INPUT_NAME, OUTPUT_NAME, run_onnx, session_options  # noqa: F401 - re-exported
from cnncli.models.card import METADATA_KEY, ModelCard, Preprocessing


def providers_for(device: str) -> list[str]:
    """Execution providers for ``device``; UsageError when CUDA is asked for and onnxruntime has none."""
    from cnncli.export.onnx_io import BOTH_BUILDS, both_builds_installed, onnxruntime_module

    ort = onnxruntime_module()

    from cnncli.core.devices import cuda_index, parse_device

    device = parse_device(device)
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if CUDA not in available and both_builds_installed():
        raise UsageError(f"--device cuda was asked for, but {BOTH_BUILDS}.")
    if CUDA not in available:
        raise UsageError(
            "--device cuda was asked for, but this onnxruntime has no CUDA provider; install cnncli[gpu] "
            "(onnxruntime-gpu) on a machine with an NVIDIA GPU, or use --device cpu."
        )
    return [(CUDA, {"device_id": cuda_index(device)})]


def _card_without_metadata(session, path: Path) -> ModelCard:
    inp = session.get_inputs()[0]
    shape = inp.shape
    channels = shape[1] if len(shape) == 4 and shape[1] in (1, 3) else 3
    h = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else 224
    w = shape[3] if len(shape) == 4 and isinstance(shape[3], int) else 224
    n = session.get_outputs()[0].shape[-1]
    if not isinstance(n, int):
        n = run_onnx(session, np.zeros((1, channels, h, w), np.float32)).shape[-1]
    pre = Preprocessing(input_size=(h, w)).replace(channels=channels)
    return ModelCard(arch=f"onnx:{path.name}", classes=[f"class_{i}" for i in range(n)], preprocessing=pre)


def read_onnx_card(path: str | Path) -> ModelCard | None:
    """The cnncli card in an ONNX file, or None if it has none (opens the file with onnxruntime)."""
    session = _open_session(Path(path), [CPU], session_options())
    return _card_from_session(session, Path(path))


def read_onnx_card_or_default(path: str | Path) -> ModelCard:
    """The cnncli card in an ONNX file, or one made from the graph (classes by index) when it has none."""
    session = _open_session(Path(path), [CPU], session_options())
    check_io(session, Path(path))
    return _card_from_session(session, Path(path)) or _card_without_metadata(session, Path(path))


def _card_from_session(session, path: Path | None = None) -> ModelCard | None:
    meta = session.get_modelmeta().custom_metadata_map
    text = meta.get(METADATA_KEY)
    return ModelCard.from_json(text, str(path) if path else None) if text else None


FLOAT_INPUTS = ("tensor(float)", "tensor(float16)")


def check_io(session, path: Path) -> None:
    """Refuse, before running anything, a graph that is not an image classifier: one float input (N, C, H, W) with
    C 1 or 3, and a first output (N, classes)."""
    from cnncli.core.limits import MAX_INPUT_SIZE_ENV, max_input_size

    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs[:4])
        raise ModelFileError(f"{path} has {len(inputs)} inputs ({names}); cnncli runs image classifiers with one "
                             "image input (N, C, H, W).")
    inp = inputs[0]
    shape = list(inp.shape or [])
    if len(shape) != 4:
        raise ModelFileError(f"{path}'s input '{inp.name}' has shape {shape}, not one image batch (N, C, H, W).")
    if inp.type not in FLOAT_INPUTS:
        raise ModelFileError(f"{path}'s input '{inp.name}' is {inp.type}, not float pixels; cnncli feeds float32 "
                             "(N, C, H, W) images.")
    if isinstance(shape[1], int) and shape[1] not in (1, 3):
        raise ModelFileError(f"{path}'s input '{inp.name}' has {shape[1]} channels; cnncli feeds 1 (gray) or 3 (RGB).")
    limit = max_input_size()
    if any(isinstance(side, int) and not 1 <= side <= limit for side in shape[2:]):
        raise ModelFileError(f"{path}'s input is {shape[2]}x{shape[3]} pixels, outside 1..{limit} (set "
                             f"{MAX_INPUT_SIZE_ENV} higher if you trust this model).")
    if not outputs or len(outputs[0].shape or []) != 2:
        shape_out = list(outputs[0].shape or []) if outputs else "none"
        raise ModelFileError(f"{path}'s output has shape {shape_out}, not class scores (N, classes).")
    classes = outputs[0].shape[1]
    if isinstance(classes, int) and classes < 1:
        raise ModelFileError(f"{path}'s output has {classes} classes.")


def check_card_matches_graph(card: ModelCard, session, path: Path) -> None:
    """The card's classes, channels and size agree with the graph's static shapes (a card with 100 classes on a
    6-output graph would label every prediction wrongly)."""
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    classes = out.shape[1]
    if isinstance(classes, int) and classes != card.num_classes:
        raise ModelFileError(f"{path}: the model card lists {card.num_classes} classes but the graph outputs {classes} "
                             "scores; the card does not belong to this graph: re-export the model.")
    channels = inp.shape[1]
    if isinstance(channels, int) and channels != card.preprocessing.channels:
        raise ModelFileError(f"{path}: the model card says {card.preprocessing.channels} input channels but the graph "
                             f"takes {channels}; re-export the model.")
    h, w = inp.shape[2], inp.shape[3]
    if isinstance(h, int) and isinstance(w, int) and (h, w) != tuple(card.preprocessing.input_size):
        ch, cw = card.preprocessing.input_size
        raise ModelFileError(f"{path}: the model card's input size {ch}x{cw} differs from the graph's {h}x{w}; "
                             "re-export the model.")


def _open_session(path: Path, providers: list[str], options):
    from cnncli.export.onnx_io import onnxruntime_module

    ort = onnxruntime_module()

    from cnncli.core.paths import require_regular_file

    require_regular_file(path, "model file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes); re-export it with `cnncli export`.")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own (pybind) exception types
        first = " ".join(str(exc).split())[:160]
        raise ModelFileError(
            f"{path} is not a loadable ONNX model (truncated, corrupt or another file type: {first}); "
            "re-export it with `cnncli export`."
        ) from None


class OnnxEngine:
    """An exported model on onnxruntime: ``predict_proba`` takes (N, C, H, W) float32, returns probabilities."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None,
                 allow_spinning: bool | None = None, verbose: bool = True) -> None:
        from cnncli.core.console import info, warn
        from cnncli.core.devices import parse_device

        self.path = Path(path)
        device = parse_device(device)
        providers = providers_for(device)
        self.session = _open_session(self.path, providers, session_options(threads, allow_spinning))
        check_io(self.session, self.path)
        self.provider = self.session.get_providers()[0]
        if device.startswith("cuda") and self.provider != CUDA:
            raise UsageError(
                "--device cuda was asked for, but onnxruntime could not start its CUDA provider here (no GPU, or "
                "CUDA/cuDNN libraries missing); use --device cpu."
            )
        card = _card_from_session(self.session, self.path)  # a damaged card is refused before a word of output
        self.has_metadata = card is not None
        if card is not None:
            check_card_matches_graph(card, self.session, self.path)
        if device == "auto" and verbose:
            info(f"onnxruntime provider: {self.provider}")
        if card is None:
            card = _card_without_metadata(self.session, self.path)
            if verbose:
                h, w = card.preprocessing.input_size
                warn(f"{self.path.name} has no cnncli metadata: classes are labelled by index (class_0 ...) and "
                     f"images get ImageNet preprocessing at {h}x{w}; export with `cnncli export` to keep labels.")
        self.card = card
        self.input = self.session.get_inputs()[0]
        self.name = f"onnxruntime ({self.provider})"
        self.threads = threads

    def replica_recipe(self) -> tuple | None:
        """How a worker process re-opens this engine (:mod:`cnncli.predict.replicas`); None on CUDA."""
        return ("onnx", str(self.path), "fp32") if self.provider == CPU else None

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        return run_onnx(self.session, np.ascontiguousarray(batch, dtype=np.float32))

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        return to_probabilities(self.predict_logits(batch), self.card.task)
