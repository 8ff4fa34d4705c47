"""Helpers shared by the subcommand modules."""

from __future__ import annotations

import typer

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def not_built(command: str) -> None:
    """What a command that is not built yet says: one line, exit 2."""
    typer.echo(f"error: `cnncli {command}` is not available in this version of cnncli yet.", err=True)
    raise typer.Exit(2)
