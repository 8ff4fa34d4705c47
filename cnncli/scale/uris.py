"""Predict at scale: inputs and outputs on object storage (fsspec URIs), parquet part files, deterministic shards
with a manifest so an interrupted job resumes exactly, and the same job on a Ray cluster (``--ray``).

``cnncli predict`` hands a command over to :func:`cnncli.scale.job.run` when an input or ``--output`` is a URI,
``--format parquet`` is asked for, or ``--ray`` is given. Nothing here is imported on the plain local path.
"""

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
