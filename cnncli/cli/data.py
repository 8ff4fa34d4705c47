"""``cnncli data``: dataset tools. ``cnncli data pack DATA OUT`` writes WebDataset tar shards and a dataset.json
(:mod:`cnncli.data.pack`) that train, finetune, evaluate and inspect stream from a folder or an object store."""

from __future__ import annotations

import typer

from cnncli.cli import validate as v
from cnncli.cli.common import seed_option

data_app = typer.Typer(name="data", help="Dataset tools: pack a dataset into WebDataset shards.",
                       no_args_is_help=True, rich_markup_mode=None)


@data_app.command("pack", short_help="Pack a dataset into WebDataset tar shards and a dataset.json.")
def pack(
    data: str = typer.Argument(..., metavar="DATA",
                               help="What train reads: a folder of class sub-folders, train/ + val/ (+ test/), a CSV "
                                    "manifest path,label, or an object-store prefix of class folders (s3://...)."),
    out: str = typer.Argument(..., metavar="OUT", help="A folder or a URI (s3://bucket/prefix) for the shards."),
    shard_size: int = typer.Option(1000, "--shard-size", parser=v.POSITIVE_INT, metavar="N",
                                   help="Images per shard (aim for 100 MB - 1 GB shards)."),
    val_split: float = typer.Option(0.2, "--val-split", parser=v.FRACTION_OPEN, metavar="FRACTION",
                                    help="Held-out fraction for a class-folder dataset (as train's)."),
    seed: int = seed_option("Seed of the val split (as train's)."),
    val_csv: str | None = typer.Option(None, "--val-csv", metavar="CSV", help="Validation manifest for a CSV dataset."),
    allow_outside: bool = typer.Option(False, "--allow-outside",
                                       help="A CSV manifest may name files outside its own folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary line."),
) -> None:
    """Pack a dataset into WebDataset tar shards per split (the original image bytes and the label index) and one
    dataset.json. Unreadable images are reported and left out; a re-run skips the shards already complete."""
    from cnncli.data.pack import pack_dataset

    pack_dataset(data, out, shard_size=shard_size, val_split=val_split, seed=seed, val_csv=val_csv,
                 allow_outside=allow_outside, quiet=quiet)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
