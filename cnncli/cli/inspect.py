"""``cnncli inspect``: look inside a model (layer table, parameters, MACs, receptive field, pictures) or a
dataset (folder or CSV manifest)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cnncli.cli import validate as v
from cnncli.cli.common import TableOrJson, choices, image_size_option, output_option, seed_option

WHAT_HELP = "Comma-separated: summary, filters, features, saliency, gradcam (pictures go to --output as PNG)."


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def command(
        target: str = typer.Argument(..., metavar="MODEL_OR_DATA",
                                     help="A registry name, a cnncli .safetensors file, an .onnx file, "
                                          "or a dataset folder / CSV manifest."),
        input_size: int | None = image_size_option("Input height and width (default: the model's own)."),
        depth: int = typer.Option(3, "--depth", parser=v.POSITIVE_INT, metavar="N",
                                  help="How many levels of nested layers to list."),
        fmt: TableOrJson = typer.Option("table", "--format", "-f", metavar=choices("table", "json"),
                                        help="Output format."),
        what: str = typer.Option("summary", "--what", metavar="KINDS", help=WHAT_HELP),
        image: Path | None = typer.Option(None, "--image", metavar="IMAGE",
                                          help="The image for features, saliency and gradcam."),
        layer: str | None = typer.Option(None, "--layer", metavar="NAME",
                                         help="Layer for features (default: one in the middle)."),
        out: Path = output_option("Folder for the pictures.", default=Path(".")),
        weights: str | None = typer.Option(
            None, "--weights", metavar="WEIGHTS",
            help="Weights for a registry name. Default: the default model's shipped ImageNet weights; for other "
                 "names none for a summary (no download needed) and the hub's default for pictures."),
        val_split: float = typer.Option(0.2, "--val-split", parser=v.FRACTION_OPEN, metavar="FRACTION",
                                        help="Dataset: share of each class held out as val (class-folder layout)."),
        seed: int = seed_option("Dataset: seed of the val split."),
        val_csv: str | None = typer.Option(None, "--val-csv", metavar="CSV",
                                           help="Dataset: CSV manifest of the val images."),
        allow_outside: bool = typer.Option(False, "--allow-outside",
                                           help="A CSV manifest may name files outside its own folder (.. or "
                                                "absolute paths)."),
        task: str = typer.Option("auto", "--task", metavar="[auto|single|multilabel]",
                                 help="Dataset: multilabel reads several labels per image (label cardinality, "
                                      "co-occurrence); auto: multilabel when a manifest row holds two labels."),
    ) -> None:
        """Look inside a model or a dataset.

        For a model: layers, output shapes, parameters (trainable / frozen), MACs, receptive field, and pictures
        (filters, feature maps, saliency, Grad-CAM). For a dataset: layout, classes and counts per split, sizes,
        modes, unreadable files, duplicates and train/val leaks; for multi-label data the label cardinality and
        co-occurrence. Exit 0 when clean, 1 when problems were found."""
        from cnncli.data.layout import looks_like_dataset
        from cnncli.data.stream_source import is_stream_source

        if is_stream_source(target):  # packed shards, or an object-store prefix of class folders
            from cnncli.data.stream_check import check_stream
            from cnncli.inspect.dataset_report import render_dataset_report

            report = check_stream(target, val_split=val_split, seed=seed)
            render_dataset_report(report, fmt, sys.stdout)
            if report.problems:
                typer.echo(f"{len(report.problems)} problems found in {target}.", err=True)
                raise typer.Exit(1)
            return
        if looks_like_dataset(target):
            from cnncli.data.multilabel_check import check_any_dataset
            from cnncli.inspect.dataset_report import render_dataset_report

            report = check_any_dataset(target, task=task, val_split=val_split, seed=seed, val_csv=val_csv,
                                       allow_outside=allow_outside)
            render_dataset_report(report, fmt, sys.stdout)
            if report.problems:
                from cnncli.core.console import info

                info(f"{len(report.problems)} problems found in {target}.")
                raise typer.Exit(1)
            return
        from cnncli.inspect.run import inspect_model

        kinds = [k.strip() for k in what.split(",") if k.strip()]
        if any(kind != "summary" for kind in kinds):  # pictures go to --output
            from cnncli.core.paths import check_output_location

            check_output_location(out, "--output", folder=True)
        result = inspect_model(target, kinds, input_size=input_size, depth=depth, weights=weights, image=image,
                               layer=layer, out_dir=out)
        _render(result, fmt)


def _render(result: dict, fmt: str) -> None:
    summary, drawn = result["summary"], result["pictures"]
    if fmt == "json":
        from cnncli.core.console import to_text

        data = summary.to_dict() if summary is not None else {}
        if drawn:
            data["pictures"] = [p.to_dict() for p in drawn]
        typer.echo(to_text(data))
        return
    if summary is not None:
        from cnncli.inspect.onnx_summary import OnnxSummary
        from cnncli.inspect.render import render_model_summary, render_onnx_summary

        (render_onnx_summary if isinstance(summary, OnnxSummary) else render_model_summary)(summary)
    from cnncli.core.text import visible

    for picture in drawn:
        typer.echo(visible(f"{picture.kind}: {picture.path}"))
