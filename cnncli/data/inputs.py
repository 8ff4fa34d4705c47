"""What the user passed as inputs: files, folders (recursive, hidden names skipped), glob patterns, ``-``
(paths on stdin) and ``@list.txt``, collected into :class:`InputItem` rows in natural order; web addresses are
refused."""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cnncli.core.errors import UsageError
from cnncli.data.images import is_image_file

GLOB_CHARS = set("*?[")


@dataclass
class InputItem:
    path: str
    error: str | None = None  # set when the input itself is bad (missing file)


def natural_key(text: str):
    import re

    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def images_in_folder(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files in ``folder`` (hidden files and folders skipped), in natural order."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key) if recursive else []
        found += [Path(root) / f for f in sorted(files, key=natural_key) if is_image_file(Path(f))]
    return found


def image_files(folder: str | Path, limit: int | None = None) -> list[Path]:
    """The image files in ``folder`` (recursively, natural order); UsageError if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder of images; pass a folder for --calib / --verify-images.")
    files = images_in_folder(folder)
    if not files:
        raise UsageError(f"{folder} holds no image files (.jpg, .png, ...); add some or drop the option.")
    return files[:limit] if limit else files


def collect_inputs(specs: Iterable[str], recursive: bool = True) -> list[InputItem]:
    """Expand files, folders and glob patterns into items; missing paths become error items.

    Raises UsageError when nothing at all was found to work on.
    """
    items: list[InputItem] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            items += [InputItem(str(p)) for p in images_in_folder(path, recursive)]
        elif path.exists():
            items.append(InputItem(str(path)))
        elif GLOB_CHARS & set(spec):
            matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True), key=natural_key)
            for match in matches:
                mp_ = Path(match)
                if mp_.is_dir():
                    items += [InputItem(str(p)) for p in images_in_folder(mp_, recursive)]
                elif is_image_file(mp_):
                    items.append(InputItem(match))
        else:
            items.append(InputItem(str(path), error=f"{path}: no such file or folder."))
    if not items:
        raise UsageError(f"no images found in {', '.join(specs)}; pass image files, folders or glob patterns.")
    if all(item.error for item in items):
        raise UsageError(" ".join(item.error for item in items[:3]) + " Nothing to predict.")
    return items


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
        raise UsageError(f"{origin} is not a text list of paths (it holds NUL bytes; "
                         "with find use -print, not -print0).")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def expand_input_lists(specs: Iterable[str], stdin: IO[str] | None = None) -> list[str]:
    """``specs`` with ``-`` replaced by the paths read from ``stdin`` and ``@FILE`` by the paths in FILE. stdin
    holds one list and is read once, so ``-`` may be given once (refused, before reading, when given again)."""
    specs = list(specs)
    if specs.count("-") > 1:
        raise UsageError(f"`-` is given {specs.count('-')} times, but stdin holds one list of image paths and is "
                         "read once; give `-` once.")
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

