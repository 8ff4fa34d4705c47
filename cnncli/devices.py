"""``--device``: one parser for every command and engine, with PyTorch's and Ultralytics' spellings.

``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``gpu``, and a bare GPU index (``0``, ``1``) as Ultralytics takes it, all
normalised to ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N``. Imports nothing heavy: the CLI parses with it.
"""

from __future__ import annotations

import re

from cnncli.errors import UsageError

DEVICE_HELP = "auto, cpu, cuda, cuda:N or a GPU index N (as in PyTorch and Ultralytics)."


def parse_device(spec: str | int | None) -> str:
    """The canonical device string for ``spec``; UsageError (one sentence) for anything else."""
    if spec is None:
        return "auto"
    text = str(spec).strip().lower()
    if text in ("auto", "", "default"):
        return "auto"
    if text == "cpu":
        return "cpu"
    if text in ("cuda", "gpu"):
        return "cuda"
    match = re.fullmatch(r"(?:cuda:|gpu:)?(\d{1,3})", text)
    if match:
        return f"cuda:{int(match.group(1))}"
    if re.fullmatch(r"\d+(,\d+)+", text):
        raise UsageError(f"--device {spec} names several GPUs; cnncli uses one per process: start "
                         "`torchrun --nproc_per_node N -m cnncli train ...` for several.")
    raise UsageError(f"unknown --device {spec!r}; use {DEVICE_HELP[:-1]}.")


def cuda_index(device: str) -> int:
    """The GPU index of a parsed ``cuda`` / ``cuda:N`` device (0 for plain ``cuda``)."""
    return int(device.split(":", 1)[1]) if ":" in device else 0
