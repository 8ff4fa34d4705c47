"""``cnncli evaluate``."""

from __future__ import annotations

import typer

def register(app: typer.Typer) -> None:
    from cnncli.cli.common import PASS_THROUGH as _PASS, not_built

    @app.command("evaluate", context_settings=_PASS, help="Accuracy, per-class metrics and the confusion matrix of a model on a dataset. (Not built yet.)")
    def command(ctx: typer.Context) -> None:
        not_built("evaluate")
