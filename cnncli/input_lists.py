"""Inputs given indirectly: ``-`` reads image paths from stdin one per line (``find . -name '*.jpg' | cnncli
predict -``), ``@list.txt`` reads them from a file. Paths in a list are taken as they are written (relative ones
from the current folder, as ``find`` prints them). Web addresses are refused: cnncli does not download images.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import IO, Iterable

from cnncli.errors import UsageError

WEB_URL = re.compile(r"^https?://", re.IGNORECASE)
MAX_LIST_BYTES = 256 * 2**20  # a list of paths larger than this is not a list of paths


def refuse_web_urls(specs: Iterable[str]) -> None:
    for spec in specs:
        if WEB_URL.match(spec):
            raise UsageError(f"{spec} is a web address; cnncli does not download images: fetch it first "
                             "(e.g. `curl -O URL`) and pass the file.")


def _read_lines(stream: IO[str], origin: str) -> list[str]:
    text = stream.read(MAX_LIST_BYTES + 1)
    if len(text) > MAX_LIST_BYTES:
        raise UsageError(f"{origin} holds more than {MAX_LIST_BYTES // 2**20} MB of text; split the list.")
    if "\0" in text:
        raise UsageError(f"{origin} is not a text list of paths (it holds NUL bytes; with find use -print, not -print0).")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def expand_input_lists(specs: Iterable[str], stdin: IO[str] | None = None) -> list[str]:
    """``specs`` with ``-`` replaced by the paths read from ``stdin`` and ``@FILE`` by the paths in FILE."""
    expanded: list[str] = []
    for spec in specs:
        if spec == "-":
            stream = stdin if stdin is not None else sys.stdin
            if stream is None or stream.isatty():
                raise UsageError("`-` reads image paths from stdin, one per line, but stdin is a terminal; pipe a "
                                 "list in (e.g. `find photos -name '*.jpg' | cnncli predict -`).")
            lines = _read_lines(stream, "stdin")
            if not lines:
                raise UsageError("`-` read no image paths from stdin (an empty list).")
            expanded += lines
        elif spec.startswith("@") and len(spec) > 1:
            path = Path(spec[1:]).expanduser()
            if not path.is_file():
                raise UsageError(f"{spec}: the list file {path} does not exist (or is not a file).")
            try:
                with open(path, encoding="utf-8", errors="replace") as stream:
                    lines = _read_lines(stream, str(path))
            except OSError as exc:
                raise UsageError(f"{spec}: cannot read the list file ({exc.strerror}).") from None
            if not lines:
                raise UsageError(f"{spec}: the list file {path} holds no image paths.")
            expanded += lines
        else:
            expanded.append(spec)
    return expanded
