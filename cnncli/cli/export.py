"""``cnncli export``."""

from __future__ import annotations

import typer

def register(app: typer.Typer) -> None:
    from cnncli.cli.common import PASS_THROUGH as _PASS, not_built

    @app.command("export", context_settings=_PASS, help="Export a model to ONNX for onnxruntime, verified against PyTorch. (Not built yet.)")
    def command(ctx: typer.Context) -> None:
        not_built("export")
