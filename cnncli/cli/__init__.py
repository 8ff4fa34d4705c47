"""The command-line interface: one thin module per subcommand. Nothing here imports torch at import time."""
