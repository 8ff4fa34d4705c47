"""``cnncli evaluate MODEL DATA``: accuracy, per-class metrics, confusion matrix, confident errors, calibration."""

from __future__ import annotations

import sys
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def command(
        model: str = typer.Argument(..., metavar="MODEL", help="A cnncli model file (.safetensors, or .onnx where supported) or a registry name."),
        data: str = typer.Argument(..., metavar="DATA", help="A dataset folder or CSV manifest (test/ if present, else val/, else all images)."),
        split: str = typer.Option("auto", "--split", help="auto, train, val or test."),
        fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
        batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        plots: Optional[str] = typer.Option(None, "--plots", help="Write confusion_matrix.png, reliability.png and errors.png here."),
        workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoder processes."),
        engine: str = typer.Option("auto", "--engine", help="auto (onnxruntime on CPU from a cached export, PyTorch on CUDA), torch or onnx."),
    ) -> None:
        """Accuracy, per-class metrics and the confusion matrix of a model on a dataset."""
        from cnncli.errors import UsageError

        if fmt not in ("table", "json"):
            raise UsageError(f"unknown --format {fmt!r}; choose table or json.")
        from cnncli.evaluate import evaluate_model, render_evaluation, save_plots
        from cnncli.report import info, to_text, warn

        result = evaluate_model(model, data, split=split, batch_size=batch_size, device=device, workers=workers,
                                engine=engine)
        for bad in result.unreadable[:5]:
            warn(f"skipped: {bad['error']}")
        if fmt == "json":
            sys.stdout.write(to_text(result.to_dict()) + "\n")
        else:
            render_evaluation(result, sys.stdout)
        if plots:
            made = save_plots(result, plots)
            info("plots: " + ", ".join(str(p) for p in made))
