"""Strings from users and files (paths, class names, labels, card fields, error texts) kept exactly as they are.

For people, :func:`visible` shows such a string as it is, except what a terminal would not show faithfully:
control characters (newline, tab, ESC of an ANSI escape sequence, the C1 range), line and paragraph
separators, bidirectional overrides, and the bytes of a file name that are not UTF-8 (which Python carries as
lone surrogates, "surrogateescape") become Python-style escapes: ``\\n``, ``\\t``, ``\\x1b``, ``\\u202e``, and
``\\xff`` for the byte 0xff. Everything else, a backslash included, is shown as it is: ``a\\b.jpg`` stays
``a\\b.jpg``. Rich markup is never read from such a string (see :class:`cnncli.core.console.LiteralConsole`).

For programs, :func:`json_text` is ``json.dumps`` that keeps non-ASCII text readable and writes a lone
surrogate as its JSON escape (``"\\udcff"``), so the output is valid UTF-8 and ``json.loads`` gives back the
very string (``os.fsencode`` of it: the very bytes of the file name).
"""

from __future__ import annotations

import json
import re
import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_HIDDEN_CATEGORIES = frozenset(("Cc", "Cs", "Zl", "Zp"))
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(char: str) -> str:
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _hidden(char: str) -> bool:
    return char in _BIDI_CONTROLS or unicodedata.category(char) in _HIDDEN_CATEGORIES


def visible(text: object) -> str:
    """``text`` (``str()`` of it) as a terminal should show it: as it is, with control characters, separators,
    bidirectional overrides and non-UTF-8 bytes of file names as escapes (see the module docstring)."""
    text = text if isinstance(text, str) else str(text)
    if text.isprintable():  # the common case: nothing to escape
        return text
    return "".join(_escape(c) if _hidden(c) else c for c in text)


def json_text(obj, **kwargs) -> str:
    """``json.dumps(obj, ensure_ascii=False, **kwargs)`` with each lone surrogate (a non-UTF-8 byte of a file
    name) written as its ``\\uXXXX`` escape: valid UTF-8 that ``json.loads`` turns back into the same string."""
    kwargs.setdefault("ensure_ascii", False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, **kwargs))
