"""Helpers shared by the subcommand modules, and the shared option vocabulary: the same option has the same
name, short form, parser and help in every command (``-o/--output``, ``--image-size/--imgsz``, ``--device``,
``--batch-size``, ``--workers``, ``--threads``, ``--seed``). Choices are ``Literal`` types so --help lists them.
"""

from __future__ import annotations

import re
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


def usage_line(exc) -> str:
    """One sentence for a click usage error (printed after ``error:``): which option or argument, what is wrong,
    where the help is."""
    command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "cnncli"
    return f"{problem_phrase(exc)}. See `{command} --help`."


def problem_phrase(exc) -> str:
    """What a click usage error says is wrong, as a phrase: ``unknown --optimizer 'x'; choose one of: ...`` or
    ``invalid --epochs: must be ...`` (no final period)."""
    from typer._click.exceptions import BadParameter, MissingParameter

    message = exc.format_message()
    if isinstance(exc, BadParameter) and not isinstance(exc, MissingParameter) and exc.param is not None:
        opts = [o for o in getattr(exc.param, "opts", []) if o.startswith("--")] or [exc.param.human_readable_name]
        name, detail = max(opts, key=len), exc.message.replace("Value error, ", "").strip()
        choice = re.fullmatch(r"'(.*)' is not one of (.*?)\.?", detail)
        if choice:
            allowed = ", ".join(c.strip().strip("'") for c in choice.group(2).split(","))
            message = f"unknown {name} {choice.group(1)!r}; choose one of: {allowed}"
        else:
            message = f"invalid {name}: {detail}"
    return message.rstrip(".")
