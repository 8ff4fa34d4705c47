"""Limits that keep a file or a value from eating the machine, each raisable by an environment variable:
pixels per decoded image (``CNNCLI_MAX_PIXELS``) and a model's input side (``CNNCLI_MAX_INPUT_SIZE``).

A malformed value is one usage error when cnncli starts, not a failure per image. Imports nothing heavy.
"""

from __future__ import annotations

import os

from cnncli.core.errors import UsageError

MAX_PIXELS_ENV = "CNNCLI_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS)
MAX_INPUT_SIZE_ENV = "CNNCLI_MAX_INPUT_SIZE"
DEFAULT_MAX_INPUT_SIZE = 4096  # a model input side above this needs gigabytes per image


def _positive_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{name} must be a positive whole number (e.g. {default}), not {text!r}; fix or unset it.")
    return value


def max_pixels() -> int:
    """Largest image (in pixels) cnncli decodes; larger ones are refused as possible decompression bombs."""
    return _positive_int(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)


def max_input_size() -> int:
    """Largest model input height or width a model card may ask for."""
    return _positive_int(MAX_INPUT_SIZE_ENV, DEFAULT_MAX_INPUT_SIZE)


def check_environment() -> None:
    """Refuse malformed limit variables up front (UsageError, exit 2)."""
    max_pixels()
    max_input_size()
