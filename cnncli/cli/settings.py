"""A run's saved settings (``--config ARGS_JSON``, and ``RUN/args.json`` on ``--resume``) read through the same
validators as the command line: each value goes through its option's own parser (numbers, choices, flags,
lists), so ``"epochs": "ten"`` or ``"lr": inf`` in a file gets the sentence ``--epochs ten`` gets, before any
work; a key that names no setting is refused with the nearest known name."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from cnncli.core.errors import UsageError

NOT_OPTIONS = {"command", "data", "out", "resume"}  # recorded by the run itself, not taken from an option here
MAX_SETTINGS_BYTES = 1 << 20


def checked_settings(path: str | Path, ctx, known: set[str]) -> dict:
    """The settings object in ``path``, every value checked by its option's parser in ``ctx.command``; ``known``
    are the setting names a file may hold. One sentence naming the file, the key and the value otherwise."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SETTINGS_BYTES:
            raise UsageError(f"{path} is over {MAX_SETTINGS_BYTES >> 20} MB; a run's settings file is a few KB.")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"cannot read the run's settings {path} ({reason}); is this a cnncli run's args.json?") \
            from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path} holds a JSON {type(raw).__name__}, not the settings object a run's args.json "
                         "holds.")
    params = {p.name: p for p in ctx.command.params}
    for key, value in raw.items():
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else "."
            raise UsageError(f"{path}: {key!r} is not a setting of cnncli {ctx.command.name}{hint}")
        param = params.get(key)
        if key in NOT_OPTIONS or param is None:
            if key in ("command", "data") and not isinstance(value, str) or key in ("out", "resume") and not (
                    value is None or isinstance(value, str)):
                raise UsageError(f"{path}: {key!r} must be a string, not {json.dumps(value)}.")
            continue
        _check(path, param, ctx, key, value)
    return raw


def _check(path: Path, param, ctx, key: str, value) -> None:
    """``value`` as the command line would give it (``--epochs ten``), parsed by the command's own parser."""
    from typer._click.exceptions import ClickException

    from cnncli.cli.common import problem_phrase

    option = max(param.opts, key=len) if param.opts else key
    shown = json.dumps(value)
    if value is None:
        if param.default is None:
            return
        raise UsageError(f"{path}: {key!r} must be set (the option {option}), not null.")
    if getattr(param, "is_flag", False):
        if not isinstance(value, bool):
            raise UsageError(f"{path}: {key!r} must be true or false (the flag {option}), not {shown}.")
        return
    items = value if param.multiple else [value]
    if param.multiple and not isinstance(value, list):
        raise UsageError(f"{path}: {key!r} must be a list (the option {option} is repeatable), not {shown}.")
    for item in items:
        if isinstance(item, (bool, list, dict)):
            raise UsageError(f"{path}: {key!r} must be {'plain values' if param.multiple else 'one value'} (the "
                             f"option {option}), not {shown}.")
    argv = [part for item in items for part in (option, str(item))]
    try:
        ctx.command.make_context(ctx.info_name, argv, parent=ctx.parent)
    except ClickException as exc:
        raise UsageError(f"{path}: {key!r} is {shown}: {problem_phrase(exc)}.") from None
