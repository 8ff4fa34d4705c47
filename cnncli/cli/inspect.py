"""``cnncli inspect``."""

from __future__ import annotations

import typer

def register(app: typer.Typer) -> None:
    from cnncli.cli.common import PASS_THROUGH as _PASS, not_built

    @app.command("inspect", context_settings=_PASS, help="Look inside a model or a dataset: layers, parameters, MACs, receptive field, pictures. (Not built yet.)")
    def command(ctx: typer.Context) -> None:
        not_built("inspect")
