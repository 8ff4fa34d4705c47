"""When a predict command goes to :mod:`cnncli.scale`: URIs (``s3://``, ``memory://``...), parquet output and
Ray addresses recognised without importing fsspec or Ray."""

from __future__ import annotations

import re

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_RAY_ADDRESS = re.compile(r"^(ray://)?(\[[0-9A-Fa-f:]+\]|[^\s/:]+):\d+/?$|^(auto|local)$")


def is_uri(spec: object) -> bool:
    """Whether ``spec`` names a location with a scheme (``s3://bucket/key``, ``memory://x``, ``file:///tmp``)."""
    return isinstance(spec, str) and bool(_URI.match(spec))


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
