"""``cnncli models``: list the architectures the registry knows."""

from __future__ import annotations

import typer

from cnncli.cli.common import ModelsFormat, Source, choices


def register(app: typer.Typer) -> None:
    @app.command(short_help="List the architectures cnncli can build.")
    def models(
        source: Source | None = typer.Option(None, "--source", "-s", metavar=choices("torchvision", "timm", "builtin"),
                                             help="Only this source."),
        pattern: str | None = typer.Argument(None, metavar="[PATTERN]", help="Only names containing this text."),
        fmt: ModelsFormat = typer.Option("table", "--format", "-f", metavar=choices("table", "json", "names"),
                                         help="names: one per line."),
    ) -> None:
        """List every architecture cnncli can build: torchvision's, timm's (timm:NAME) and the built-ins."""
        import json

        from cnncli.core.console import rich_table
        from cnncli.core.errors import UsageError
        from cnncli.models.registry import list_architectures

        entries = list_architectures(source, pattern)
        if fmt == "json":
            typer.echo(json.dumps([e.__dict__ for e in entries], indent=2))
        elif fmt == "names":
            typer.echo("\n".join(e.name for e in entries))
        elif fmt == "table":
            counts = {s: sum(e.source == s for e in entries) for s in ("builtin", "torchvision", "timm")}
            summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            rich_table(None, ["name", "source", "description"], [(e.name, e.source, e.description) for e in entries])
            typer.echo(f"{len(entries)} architectures ({summary or 'none match'}).")
        else:
            raise UsageError(f"unknown --format {fmt!r}; choose table, json or names.")
