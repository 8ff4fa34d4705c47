"""``--device``: one parser for every command and engine, with PyTorch's and Ultralytics' spellings.

``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``gpu``, and a bare GPU index (``0``, ``1``) as Ultralytics takes it, all
normalised to ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N``. Imports nothing heavy: the CLI parses with it.
"""

from __future__ import annotations

import re

from cnncli.core.errors import UsageError

DEVICE_HELP = "auto, cpu, cuda, cuda:N or a GPU index N (as in PyTorch and Ultralytics)."


def device_problem(spec: str | int | None) -> tuple[str, str | None]:
    """(the canonical device, None) for a valid ``spec``, else ("", what is wrong with it)."""
    if spec is None:
        return "auto", None
    text = str(spec).strip().lower()
    if text in ("auto", "", "default"):
        return "auto", None
    if text == "cpu":
        return "cpu", None
    if text in ("cuda", "gpu"):
        return "cuda", None
    match = re.fullmatch(r"(?:cuda:|gpu:)?(\d{1,3})", text)
    if match:
        return f"cuda:{int(match.group(1))}", None
    if re.fullmatch(r"\d+(,\d+)+", text):
        return "", ("names several GPUs; cnncli uses one per process: start `torchrun --nproc_per_node N -m cnncli "
                    "train ...` for several")
    return "", f"{str(spec)!r} is not a device; use {DEVICE_HELP[:-1]}"


def parse_device(spec: str | int | None) -> str:
    """The canonical device string for ``spec``; UsageError (one sentence) for anything else."""
    device, problem = device_problem(spec)
    if problem:
        raise UsageError(f"--device {spec}: {problem}.")
    return device


def cuda_index(device: str) -> int:
    """The GPU index of a parsed ``cuda`` / ``cuda:N`` device (0 for plain ``cuda``)."""
    return int(device.split(":", 1)[1]) if ":" in device else 0
