"""The ``cnncli`` entry point (the console script, ``python -m cnncli``, and what ``torchrun -m cnncli train ...``
runs). Stop signals are taken over before anything else is imported, so Ctrl-C or SIGTERM at any moment, during
the imports too, ends the command with one line and exit 130 / 143 (:mod:`cnncli.core.signals`)."""

from __future__ import annotations

import sys

from cnncli.core import signals


def main(argv: list[str] | None = None) -> None:
    signals.install()
    try:  # the app reports a signal itself once its console is up; before that (imports), it is said here
        from cnncli.cli.app import main as run_app

        run_app(argv)
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        sys.exit(signals.exit_code())


if __name__ == "__main__":
    main()
