"""`cnncli serve`'s numeric options are refused like every other command's (issue 18, one style of numeric
validation): the same parser and the same one-sentence error, before anything is loaded. Typer's min=/max=,
used before, let ``--max-wait-ms nan`` through and worded its refusals differently."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("option, value, says", [
    ("--port", "70000", "must be in [0, 65535], not 70000"), ("--port", "abc", "must be a whole number"),
    ("--max-batch", "0", "must be in [1, 4096]"), ("--max-wait-ms", "nan", "must be a finite number"),
    ("--max-queue", "-1", "must be in [1, 1000000]"), ("--max-upload-mb", "0", "must be in [0.001, 100000]"),
    ("--max-files", "inf", "must be a whole number"), ("--workers", "0", "must be in [1, 256]"),
    # issue 25 item 12: nan is "not a finite number", not "should be <= 100000"
    ("--max-upload-mb", "nan", "must be a finite number in [0.001, 100000], not nan"),
    ("--timeout", "0", "must be in (0, 86400], not 0"), ("--timeout", "nan", "must be a finite number"),
    ("--timeout", "soon", "must be a number in (0, 86400]"), ("--max-connections", "0", "must be in [1, 1000000]"),
])
def test_serve_refuses_bad_numbers_like_every_command(run_cli, option, value, says):
    code, _, err = run_cli("serve", option, value)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: invalid {option}: {says}"), lines[0]
