"""When a predict command goes to :mod:`cnncli.scale`: URIs (``s3://``, ``memory://``...), parquet output and
Ray addresses recognised without importing fsspec or Ray."""

from __future__ import annotations

import os
import re

from cnncli.data.stores import is_uri

_RAY_ADDRESS = re.compile(r"^(ray://)?(\[[0-9A-Fa-f:]+\]|[^\s/:]+):\d+/?$|^(auto|local)$")
RAY_FROM_ENVIRONMENT = ""  # a bare --ray: RAY_ADDRESS when it is set, else a local Ray


def wants_scale(inputs: list[str], output: str | None, fmt: str, ray: str | None) -> bool:
    """Whether a predict command needs this package rather than the plain local path."""
    return fmt == "parquet" or ray is not None or is_uri(output) or any(is_uri(i) for i in inputs)


def _meant_as_address(arg: str) -> bool:
    """Whether the word after ``--ray`` is its ADDRESS: a Ray address, or something with a colon that is not an
    existing path or another URI (``garbage::::`` is then refused as an address, not read as an input)."""
    if _RAY_ADDRESS.match(arg) or arg.startswith("ray://"):
        return True
    return ":" in arg and not arg.startswith("-") and not is_uri(arg) and not os.path.lexists(arg)


def with_ray_address(argv: list[str]) -> list[str]:
    """``--ray`` takes an optional ADDRESS: a bare ``--ray`` (last, or followed by an input folder or another
    option) becomes ``--ray=`` (:data:`RAY_FROM_ENVIRONMENT`) before the command line is parsed."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--ray" and not (i + 1 < len(argv) and _meant_as_address(argv[i + 1])):
            out.append("--ray=" + RAY_FROM_ENVIRONMENT)
        else:
            out.append(arg)
    return out
