"""The ``cnncli`` Typer app: registers the subcommands and turns cnncli errors into one line and an exit code.

``--debug`` (anywhere on the command line, or CNNCLI_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

from cnncli import __version__

app = typer.Typer(
    name="cnncli",
    help="Image classification with convolutional networks: predict, train, finetune, evaluate, export, inspect, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cnncli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Image classification with convolutional networks.

    Add --debug anywhere to see a traceback when something fails.
    """


def _register() -> None:
    from cnncli.cli import evaluate, export, inspect, models, predict, serve, train

    for module in (predict, train, evaluate, export, inspect, models, serve):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("CNNCLI_DEBUG", "") not in ("", "0")
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    if "--ray" in argv:  # an option with an optional value (Typer has none)
        from cnncli.scale import with_ray_address

        argv = with_ray_address(argv)
    from cnncli.errors import CnncliError

    try:
        from cnncli.limits import check_environment

        check_environment()
        app(args=argv, prog_name="cnncli", standalone_mode=True)
    except CnncliError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: still one line, unless --debug
        if debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        typer.echo(f"error: {type(exc).__name__}: {first} (run again with --debug for the traceback).", err=True)
        sys.exit(1)
