"""``cnncli inspect``: look inside a model (layer table, parameters, MACs, receptive field, pictures) or a
dataset (folder or CSV manifest)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

WHAT_HELP = "Comma-separated: summary, filters, features, saliency, gradcam (pictures go to --out as PNG)."


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def command(
        target: str = typer.Argument(..., metavar="MODEL_OR_DATA",
                                     help="A registry name, a cnncli .safetensors file, an .onnx file, "
                                          "or a dataset folder / CSV manifest."),
        input_size: Optional[int] = typer.Option(None, "--input-size", min=1,
                                                 help="Input height and width (default: the model's own)."),
        depth: int = typer.Option(3, "--depth", min=1, help="How many levels of nested layers to list."),
        fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
        what: str = typer.Option("summary", "--what", help=WHAT_HELP),
        image: Optional[Path] = typer.Option(None, "--image", help="The image for features, saliency and gradcam."),
        layer: Optional[str] = typer.Option(None, "--layer", help="Layer for features (default: one in the middle)."),
        out: Path = typer.Option(Path("."), "--out", help="Folder for the pictures."),
        weights: Optional[str] = typer.Option(
            None, "--weights",
            help="Weights for a registry name. Default: the default model's shipped ImageNet weights; for other "
                 "names none for a summary (no download needed) and the hub's default for pictures."),
    ) -> None:
        """Show a model's layers, output shapes, parameters (trainable / frozen), MACs and receptive field,
        draw its filters, feature maps, saliency and Grad-CAM; or check a dataset."""
        if Path(target).is_dir() or target.lower().endswith(".csv"):
            from cnncli.data.check import check_dataset
            from cnncli.data.report import render_dataset_report

            render_dataset_report(check_dataset(Path(target)), fmt=fmt)
            return

        from cnncli.errors import UsageError
        from cnncli.inspect import inspect_model

        if fmt not in ("table", "json"):
            raise UsageError(f"unknown --format {fmt!r}; choose table or json.")
        kinds = [k.strip() for k in what.split(",") if k.strip()]
        result = inspect_model(target, kinds, input_size=input_size, depth=depth, weights=weights, image=image,
                               layer=layer, out_dir=out)
        _render(result, fmt)


def _render(result: dict, fmt: str) -> None:
    summary, drawn = result["summary"], result["pictures"]
    if fmt == "json":
        from cnncli.report import to_text

        data = summary.to_dict() if summary is not None else {}
        if drawn:
            data["pictures"] = [p.to_dict() for p in drawn]
        typer.echo(to_text(data))
        return
    if summary is not None:
        from cnncli.inspect.onnx_summary import OnnxSummary
        from cnncli.inspect.render import render_model_summary, render_onnx_summary

        (render_onnx_summary if isinstance(summary, OnnxSummary) else render_model_summary)(summary)
    for picture in drawn:
        typer.echo(f"{picture.kind}: {picture.path}")
