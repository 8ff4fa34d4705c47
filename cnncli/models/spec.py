"""What a model spec means: None (the default model), a registry name (with ``--weights``) or a cnncli model file,
loaded as a PyTorch module with its card. Used by the engines, export and inspect; imports torch when called.
"""

from __future__ import annotations

from pathlib import Path

from cnncli.models.names import DEFAULT_ARCH

MODEL_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def load_for_inference(spec: str | None, weights: str | None = None, device: str = "cpu"):
    """A model spec (None = default model, registry name, or .safetensors file) -> (model in eval mode, card)."""
    from cnncli.models.checkpoint import load_model
    from cnncli.models.registry import create_model

    if spec is not None and (spec.endswith(MODEL_FILE_SUFFIXES) or Path(spec).is_file()):
        return load_model(spec, device=device)
    built = create_model(spec or DEFAULT_ARCH, weights=weights or "default")
    return built.model.to(device).eval(), built.card
