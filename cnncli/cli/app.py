"""The ``cnncli`` Typer app: registers the subcommands and turns cnncli errors and usage errors (a bad option
value, a missing argument) into one sentence on stderr (wrapped to a terminal's width) and an exit code.

``--debug`` (anywhere on the command line, or CNNCLI_DEBUG=1) shows the traceback as well, with the same exit
code. Old option spellings kept as hidden aliases (``--out``, ``--input-size``) are rewritten to today's names
before parsing.
"""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperArgument

from cnncli import __version__
from cnncli.cli.common import usage_line

# An argument's help line shows its metavar (DATA, IMAGES...) and no Python type placeholder (<str>, <list[str]>).
TyperArgument.display_type_rich = lambda self, ctx: None

app = typer.Typer(
    name="cnncli",
    help="Image classification with convolutional networks: predict, train, finetune, evaluate, export, "
         "inspect, serve.",
    no_args_is_help=True,
    add_completion=True,
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
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True, help="Show the version."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback when something fails (allowed anywhere on "
                                                      "the command line; or set CNNCLI_DEBUG=1)."),
) -> None:
    """Image classification with convolutional networks.

    Add --debug anywhere to see a traceback when something fails.
    """


# Hidden aliases: the spelling a command used before the shared vocabulary -> today's option.
OPTION_ALIASES = {"--out": "--output", "--input-size": "--image-size"}


def rewrite_aliases(argv: list[str]) -> list[str]:
    """``--out X`` / ``--out=X`` -> ``--output``, and so on, up to a ``--`` that ends the options."""
    result = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return result + argv[i:]
        name, eq, value = arg.partition("=")
        result.append(OPTION_ALIASES[name] + eq + value if name in OPTION_ALIASES else arg)
    return result


def _register() -> None:
    from cnncli.cli import data, evaluate, export, inspect, models, predict, serve, train

    for module in (predict, train, evaluate, export, inspect, models, serve, data):
        module.register(app)


_register()


def _traceback_if(debug: bool) -> None:
    """With --debug, the traceback of the exception being handled goes to stderr; the exit code stays the same."""
    if debug:
        import traceback

        traceback.print_exc()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("CNNCLI_DEBUG", "") not in ("", "0")
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    argv = rewrite_aliases(argv)
    if "--ray" in argv:  # an option with an optional value (Typer has none)
        from cnncli.scale.uris import with_ray_address

        argv = with_ray_address(argv)
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    from cnncli.core import signals
    from cnncli.core.console import error, info
    from cnncli.core.errors import CnncliError

    try:
        from cnncli.core.limits import check_environment

        check_environment()
        code = app(args=argv, prog_name="cnncli", standalone_mode=False)
        if code == 130 and signals.received() is not None:  # Typer turned the signal's KeyboardInterrupt into 130
            raise KeyboardInterrupt
        sys.exit(code if isinstance(code, int) else 0)  # as click's standalone mode: always by SystemExit
    except NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:
        info("aborted.")
        sys.exit(1)
    except ClickException as exc:
        _traceback_if(debug)
        error(usage_line(exc))
        sys.exit(exc.exit_code)
    except CnncliError as exc:
        _traceback_if(debug)
        error(str(exc))  # literal text (a path with `[` or an escape stays as it is), wrapped on a terminal
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        info("interrupted.")
        sys.exit(signals.exit_code())
    except Exception as exc:  # an unexpected failure: still one line (after the traceback with --debug)
        _traceback_if(debug)
        first = str(exc).splitlines()[0] if str(exc) else ""
        error(f"{type(exc).__name__}: {first} (run again with --debug for the traceback).")
        sys.exit(1)
