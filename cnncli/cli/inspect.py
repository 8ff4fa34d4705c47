"""``cnncli inspect``: a dataset folder or CSV manifest goes to the dataset checker; anything else is a model."""

from __future__ import annotations

import sys
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def command(
        target: str = typer.Argument(..., metavar="MODEL_OR_DATA", help="A model, or a dataset folder / CSV manifest."),
        fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
        val_split: float = typer.Option(0.2, "--val-split", help="Dataset: share of each class held out as val (class-folder layout)."),
        seed: int = typer.Option(0, "--seed", help="Dataset: seed of the val split."),
        val_csv: Optional[str] = typer.Option(None, "--val-csv", help="Dataset: CSV manifest of the val images."),
    ) -> None:
        """Look inside a model or a dataset. For a dataset: layout, classes and counts per split, sizes, modes,
        unreadable files, duplicates and train/val leaks. Exit 0 when clean, 1 when problems were found."""
        from cnncli.data.layout import looks_like_dataset

        if looks_like_dataset(target):
            from cnncli.data.check import check_dataset
            from cnncli.data.report import DATASET_FORMATS, render_dataset_report
            from cnncli.errors import UsageError

            if fmt not in DATASET_FORMATS:
                raise UsageError(f"unknown --format {fmt!r}; choose one of: {', '.join(DATASET_FORMATS)}.")
            report = check_dataset(target, val_split=val_split, seed=seed, val_csv=val_csv)
            render_dataset_report(report, fmt, sys.stdout)
            if report.problems:
                typer.echo(f"{len(report.problems)} problems found in {target}.", err=True)
                raise typer.Exit(1)
            return
        from cnncli.cli.common import not_built

        not_built("inspect MODEL")
