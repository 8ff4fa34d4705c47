"""``cnncli train`` and ``cnncli finetune``."""

from __future__ import annotations

import typer

def register(app: typer.Typer) -> None:
    from cnncli.cli.common import PASS_THROUGH as _PASS, not_built

    @app.command(context_settings=_PASS, help="Train a CNN from scratch on a folder dataset. (Not built yet.)")
    def train(ctx: typer.Context) -> None:
        not_built("train")

    @app.command(context_settings=_PASS, help="Transfer learning from a pretrained backbone. (Not built yet.)")
    def finetune(ctx: typer.Context) -> None:
        not_built("finetune")
