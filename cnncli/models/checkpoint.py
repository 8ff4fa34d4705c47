"""cnncli model files: one ``.safetensors`` file whose metadata holds the model card as JSON.

Writes are atomic (temporary file in the same folder, fsync, rename), so a kill at any moment leaves the
previous file intact. Reading never unpickles: a pickle or PyTorch ``.pt`` handed to us is refused before
anything in it runs. :func:`read_card` needs neither torch nor the weights.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from cnncli.core.atomic import atomic_path
from cnncli.core.errors import ModelFileError
from cnncli.models.card import METADATA_KEY, ModelCard
from cnncli.models.weights import is_pickle

SAFETENSORS_SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024


def _refuse_if_not_safetensors(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(9)
    if is_pickle(head):
        raise ModelFileError(
            f"{path} is a pickle / PyTorch checkpoint, which cnncli does not load because unpickling can run code; "
            "use a cnncli .safetensors model file (or pass a plain state dict with --weights)."
        )
    if len(head) < 9:
        raise ModelFileError(f"{path} is too short to be a safetensors model file; it is empty or truncated.")
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > MAX_HEADER_BYTES or header_len > path.stat().st_size - 8:
        raise ModelFileError(f"{path} is not a safetensors file (or it is truncated); pass a cnncli model file.")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors ``__metadata__`` of ``path``, read from the header alone (no torch, no tensors)."""
    from cnncli.core.paths import require_regular_file

    path = require_regular_file(path, "model file")
    _refuse_if_not_safetensors(path)
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError(f"{path} has a corrupt safetensors header; the file is damaged.") from None
    return header.get("__metadata__") or {}


def read_card(path: str | Path) -> ModelCard:
    metadata = read_metadata(path)
    if METADATA_KEY not in metadata:
        raise ModelFileError(
            f"{path} is a safetensors file without cnncli metadata (no class names or preprocessing); "
            "load it as weights instead: --arch NAME --weights PATH."
        )
    return ModelCard.from_json(metadata[METADATA_KEY], str(path))


def save_model(path: str | Path, model, card: ModelCard) -> Path:
    """Write ``model``'s weights and ``card`` to ``path`` (.safetensors), atomically."""
    from safetensors.torch import save_model as st_save_model

    path = Path(path)
    if path.suffix != SAFETENSORS_SUFFIX:
        raise ModelFileError(f"model files are .safetensors; {path} has another extension.")
    with atomic_path(path) as tmp:
        st_save_model(model, str(tmp), metadata={METADATA_KEY: card.to_json()})
    return path


def load_model(path: str | Path, device: str = "cpu"):
    """Rebuild the architecture from the card and load the weights: returns (model in eval mode, card)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from cnncli.models.registry import build_architecture, load_weights_into

    path = Path(path)
    card = read_card(path)
    model = build_architecture(card.arch, card.num_classes, card.preprocessing.channels)
    try:
        state = load_file(str(path), device=device)
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{path}: cannot read the weights ({exc}); the file is damaged.") from None
    # save_model drops tensors that share storage; reload them from their surviving twin
    own = model.state_dict()
    for key in own.keys() - state.keys():
        twin = next((k for k, v in own.items() if k in state and v.data_ptr() == own[key].data_ptr()), None)
        if twin is not None:
            state[key] = state[twin]
    load_weights_into(model, state, str(path))
    return model.to(device).eval(), card
