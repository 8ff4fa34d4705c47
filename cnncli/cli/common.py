"""Helpers shared by the subcommand modules, and the shared option vocabulary: the same option has the same
name, short form, parser and help in every command (``-o/--output``, ``--image-size/--imgsz``, ``--device``,
``--batch-size``, ``--workers``, ``--threads``, ``--seed``). Choices are ``Literal`` types so --help lists them.
"""

from __future__ import annotations

from typing import Literal

import typer

from cnncli.cli import validate as v

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

# Choices (Literal types, so --help lists them and a wrong one is refused while parsing).
PREDICT_FORMATS = ("table", "json", "jsonl", "csv", "parquet")  # parquet: cnncli.scale's part files
PredictFormat = Literal["table", "json", "jsonl", "csv", "parquet"]
TableOrJson = Literal["table", "json"]
ModelsFormat = Literal["table", "json", "names"]
ENGINES = ("auto", "torch", "onnx", "openvino")  # as cnncli.engines.ENGINES, without importing numpy here
PRECISIONS = ("fp32", "int8", "bf16")  # as cnncli.engines.PRECISIONS
Source = Literal["torchvision", "timm", "builtin"]


def choices(*values: str) -> str:
    """The metavar that lists an option's choices: ``[table|json]``."""
    return "[" + "|".join(values) + "]"


def not_built(command: str) -> None:
    """What a command that is not built yet says: one line, exit 2."""
    typer.echo(f"error: `cnncli {command}` is not available in this version of cnncli yet.", err=True)
    raise typer.Exit(2)


def _device(value):
    from cnncli.core.devices import device_problem

    device, problem = device_problem(value)
    if problem:
        raise typer.BadParameter(problem)
    return device


def output_option(help: str, default=None):
    return typer.Option(default, "--output", "-o", metavar="PATH", help=help)


def image_size_option(help: str = "Input size in pixels (square).", default=None):
    return typer.Option(default, "--image-size", "--imgsz", parser=v.IMAGE_SIZE, metavar="PIXELS",
                        help=f"{help} At most {v.DEFAULT_MAX_IMAGE_SIZE} unless {v.MAX_IMAGE_SIZE_ENV} raises it.")


def device_option(default: str = "auto"):
    from cnncli.core.devices import DEVICE_HELP

    return typer.Option(default, "--device", parser=_device, metavar="DEVICE", help=DEVICE_HELP)


def batch_size_option(default: int = 32, help: str = "Images per batch."):
    return typer.Option(default, "--batch-size", "-b", parser=v.POSITIVE_INT, metavar="N", help=help)


def workers_option(help: str, default=None):
    return typer.Option(default, "--workers", parser=v.WORKERS, metavar="N",
                        help=f"{help} At most {v.CPU_FACTOR} per CPU.")


def threads_option(help: str = "Threads for the engine (default: the engine's own choice)."):
    return typer.Option(None, "--threads", parser=v.COUNT_PER_CPU, metavar="N",
                        help=f"{help} At most {v.CPU_FACTOR} per CPU.")


def seed_option(help: str, default: int = 0):
    return typer.Option(default, "--seed", parser=v.SEED, metavar="N", help=help)


def engine_option():
    return typer.Option("auto", "--engine", metavar=choices(*ENGINES),
                        help="auto: onnxruntime on CPU (cached export), PyTorch on CUDA; openvino: the same "
                             "cached export compiled by OpenVINO for the CPU.")


def format_option(values: tuple[str, ...], help: str = "Output format."):
    return typer.Option(values[0], "--format", "-f", metavar=choices(*values), help=help)
