"""The command line (Typer): one module per command, each parsing options, calling one function of the room
that does the job and rendering its result; :mod:`.validate` and :mod:`.common` hold the shared option
vocabulary. Thin by design, and the only room that may import every other (see the layers in pyproject.toml,
checked by import-linter in the suite)."""
