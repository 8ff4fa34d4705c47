"""When a predict command goes to :mod:`cnncli.scale`: URIs (``s3://``, ``memory://``...), parquet output and
Ray addresses recognised without importing fsspec or Ray."""

from __future__ import annotations

import re

from cnncli.data.stores import is_uri

_RAY_ADDRESS = re.compile(r"^(ray://)?(\[[0-9A-Fa-f:]+\]|[^\s/:]+):\d+/?$|^(auto|local)$")


def wants_scale(inputs: list[str], output: str | None, fmt: str, ray: str | None) -> bool:
    """Whether a predict command needs this package rather than the plain local path."""
    return fmt == "parquet" or ray is not None or is_uri(output) or any(is_uri(i) for i in inputs)


def with_ray_address(argv: list[str]) -> list[str]:
    """``--ray`` takes an optional ADDRESS: a bare ``--ray`` (last, or followed by something that is not a Ray
    address such as an input folder or another option) becomes ``--ray=local`` before the command line is parsed."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--ray" and not (i + 1 < len(argv) and _RAY_ADDRESS.match(argv[i + 1])):
            out.append("--ray=local")
        else:
            out.append(arg)
    return out
