"""Issue 13, README items: the README is executed top to bottom, so it cannot drift; its first command works on a
fresh clone; the "Run the exported ONNX without cnncli" snippet gives cnncli predict's answer.

How the README runs: the tracked files (`git ls-files`) are copied to a temporary folder, the working folder of
every block, as a fresh clone would be. The ```bash blocks run in order with `bash -e -o pipefail`; a block
preceded by `<!-- readme-test: skip (why) -->` is skipped, one preceded by `<!-- readme-test: exit N (why) -->`
must exit N, every other one must exit 0. A ```python block whose first line is `# file: NAME` is written to NAME
when reached (the README tells the reader to save it). `uv run X` must not build a new venv in the copy (slow,
gigabytes) nor re-point this checkout's editable install, so a two-line `uv` shim first on PATH runs X with this
test's own interpreter and its venv's scripts (`uv run` semantics without the sync); any other `uv` command fails
the block. Placeholders made real: `photo.jpg` is written (scikit-image's cat) before the first block.

Shown output: an untagged ``` block whose previous fenced block is a bash block that ran is what that block
prints, and is compared with it (`<!-- readme-test: skip (why) -->` above it opts out). Its text must appear as
one run in the block's stdout or its stderr, compared token by token: whitespace and line wrapping do not count,
every run of table-border characters (box drawing) is one token, integers must be equal, and numbers with a
decimal point (probabilities, accuracies) may differ by NUMBER_TOLERANCE (absolute) or NUMBER_RELATIVE_TOLERANCE
of the shown value, whichever is larger. A line `...` in the shown block stands for any output in between.

On the old main the first README command (`uv run cnncli predict photo.jpg`) failed on a fresh clone.
The whole README takes minutes (it trains digits, fine-tunes, exports): 225 s on a quiet 2-core machine, so the
default suite runs it in full (about half of the suite's time); a quick check also runs first: every runnable block
is valid bash and every option a README `cnncli` command uses is one that command takes.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|exit\s+(\d+))\b.*?-->")
COMMAND_GROUPS = ("data",)  # commands whose first argument is a subcommand
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
SHIM = """#!/bin/sh
# README test shim: `uv run X ...` runs X in the test's venv; anything else is not for the README test.
if [ "$1" = "run" ]; then shift; exec "$@"; fi
echo "uv shim (tests/test_readme.py): only 'uv run' can run here; mark the block with readme-test: skip" >&2
exit 97
"""


def readme_blocks(text: str) -> list[dict]:
    """Every fenced block in order: language, code, and the readme-test marker just above it (if any)."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        marker = MARKER.search(before[-1]) if before else None
        blocks.append({"lang": match.group(1), "code": match.group(2),
                       "line": text[: match.start()].count("\n") + 1,
                       "skip": bool(marker and marker.group(1) == "skip"),
                       "exit": int(marker.group(2)) if marker and marker.group(2) else 0})
    return blocks


def python_file_blocks(text: str) -> dict[str, str]:
    files = {}
    for block in readme_blocks(text):
        first = block["code"].splitlines()[0] if block["code"] else ""
        m = re.match(r"#\s*file:\s*(\S+)", first)
        if block["lang"] == "python" and m:
            files[m.group(1)] = block["code"]
    return files


NUMBER_TOLERANCE = 0.02  # probabilities and accuracies: the last digits move with the CPU's kernels
NUMBER_RELATIVE_TOLERANCE = 0.05
TOKEN = re.compile(r"\d+\.\d+|\d+|[\u2500-\u257f]+|[^\s\d\u2500-\u257f]+")
BORDER = re.compile(r"[\u2500-\u257f]+")
GAP = "..."


def output_tokens(text: str) -> list[str]:
    """Decimals, integers, runs of box-drawing characters (each run one token, "│") and other words."""
    return ["│" if BORDER.fullmatch(t) else t for t in TOKEN.findall(text)]


def same_token(shown: str, printed: str) -> bool:
    if "." in shown and shown[0].isdigit() and "." in printed and printed[0].isdigit():
        expected, actual = float(shown), float(printed)
        return abs(actual - expected) <= max(NUMBER_TOLERANCE, NUMBER_RELATIVE_TOLERANCE * abs(expected))
    return shown == printed


def _match_at(shown: list[str], printed: list[str], start: int) -> int:
    """How many of ``shown``'s tokens match ``printed`` from ``start`` on."""
    n = 0
    while n < len(shown) and start + n < len(printed) and same_token(shown[n], printed[start + n]):
        n += 1
    return n


def shown_output_problem(shown: str, printed: str) -> str | None:
    """None when ``shown`` (a README output block) appears in ``printed`` as described in the module docstring;
    else where the closest match first differs."""
    segments = [output_tokens(part) for part in re.split(rf"^\s*{re.escape(GAP)}\s*$", shown, flags=re.M)]
    tokens, position = output_tokens(printed), 0
    for segment in filter(None, segments):
        starts = [i for i in range(position, len(tokens)) if same_token(segment[0], tokens[i])]
        full = next((i for i in starts if _match_at(segment, tokens, i) == len(segment)), None)
        if full is None:
            best = max(starts, key=lambda i: _match_at(segment, tokens, i), default=None)
            if best is None:
                return f"{segment[0]!r} is not in the output at all"
            n = _match_at(segment, tokens, best)
            got = tokens[best + n] if best + n < len(tokens) else "the end of the output"
            return (f"the closest match differs after {' '.join(segment[max(0, n - 8):n])!r}: the README shows "
                    f"{segment[n]!r}, the command printed {got!r}")
        position = full + len(segment)
    return None


def fresh_clone(dest: Path) -> Path:
    """The tracked files of this checkout, copied as a fresh clone would have them."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def readme_env(tmp_path: Path) -> dict[str, str]:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "uv").write_text(SHIM)
    (shim / "uv").chmod(0o755)
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{venv_bin}{os.pathsep}{os.environ['PATH']}",
           "COLUMNS": "80", "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)
    return env


def test_first_command_is_self_contained():
    """The first runnable block makes the image it classifies (no `photo.jpg` the clone lacks)."""
    first = next(b for b in readme_blocks((ROOT / "README.md").read_text()) if b["lang"] == "bash" and not b["skip"])
    lines = [line for line in first["code"].splitlines() if line.strip()]
    assert "cnncli predict" not in lines[0], "the first command must make its input first"
    image = re.search(r"predict (\S+\.(?:jpg|png))", first["code"]).group(1)
    assert image in lines[0]


def readme_cnncli_commands(text: str) -> list[tuple[int, str, list[str]]]:
    """(README line, subcommand, options) for every `cnncli SUBCOMMAND ...` in the runnable bash blocks."""
    found = []
    for block in readme_blocks(text):
        if block["lang"] != "bash" or block["skip"]:
            continue
        for offset, line in enumerate(block["code"].splitlines()):
            code = line.split(" #")[0]
            for m in re.finditer(r"\bcnncli\s+([a-z]+)((?:\s+(?:'[^']*'|\"[^\"]*\"|[^\s|;&>]+))*)", code):
                options = [tok.split("=")[0] for tok in m.group(2).split()
                           if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", tok)]
                command = m.group(1)
                if command in COMMAND_GROUPS:  # `cnncli data pack ...`: the group's subcommand takes the options
                    command += " " + m.group(2).split()[0]
                found.append((block["line"] + 1 + offset, command, options))
    return found


def shown_output_blocks(text: str) -> list[tuple[dict, dict]]:
    """(bash block, the output block shown right after it) for every output the README shows of a block it runs."""
    pairs, previous = [], None
    for block in readme_blocks(text):
        if block["lang"] == "" and not block["skip"] and previous is not None and previous["lang"] == "bash" \
                and not previous["skip"]:
            pairs.append((previous, block))
        previous = block
    return pairs


def test_shown_output_comparison_tolerates_layout_and_rounding_only():
    """The comparison itself: re-wrapped lines, other column widths and the last digits of a probability pass; a
    different label, count or probability fails."""
    shown = "cat.jpg\n┏━━━┳━━━━━━━┓\n┃ # ┃ label ┃\n│ 1 │ tiger cat │ 282 │ 0.3789 │\nscored 359 images: all of them\n"
    printed = ("note: warming up\ncat.jpg\n┏━━━━┳━━━━━━━━━━┓\n┃  # ┃ label    ┃\n│  1 │ tiger  cat │  282 │ 0.3802 "
               "│\nscored 359\nimages: all of them\nmore\n")
    assert shown_output_problem(shown, printed) is None
    for wrong in (printed.replace("tiger", "tabby"), printed.replace("282", "283"), printed.replace("0.3802", "0.41"),
                  printed.replace("359", "358"), printed.replace("all of them", "all")):
        assert shown_output_problem(shown, wrong) is not None, wrong
    assert shown_output_problem("top-1 0.9889\n...\nengine: onnx\n", "top-1 0.99\nx\ny\nengine: onnx") is None
    assert shown_output_problem("engine: onnx\n...\ntop-1 0.9889\n", "top-1 0.99\nengine: onnx") is not None


def test_readme_blocks_are_bash_and_use_real_options(run_cli):
    """The quick version of the next test: valid bash, existing subcommands, and options each command takes."""
    text = (ROOT / "README.md").read_text()
    for block in readme_blocks(text):
        if block["lang"] == "bash" and not block["skip"]:
            done = subprocess.run(["bash", "-n", "-c", block["code"]], capture_output=True, text=True)
            assert done.returncode == 0, f"README.md line {block['line']}: {done.stderr}"
    shown = shown_output_blocks(text)
    assert len(shown) >= 2, "the README's shown outputs (untagged blocks after a bash block) are not found"
    helps: dict[str, str] = {}
    commands = readme_cnncli_commands(text)
    assert len(commands) > 10
    for line, command, options in commands:
        if command not in helps:
            code, out, err = run_cli(*command.split(), "--help")
            assert code == 0, f"README.md line {line}: `cnncli {command}` is not a command ({err.strip()})"
            helps[command] = out
        for option in options:
            assert re.search(rf"(^|[\s,/]){re.escape(option)}([\s,/]|$)", helps[command], re.M), \
                f"README.md line {line}: `cnncli {command}` has no option {option}"


def test_readme_runs_top_to_bottom(tmp_path):
    text = (ROOT / "README.md").read_text()
    work = fresh_clone(tmp_path / "clone")
    env = readme_env(tmp_path)
    from PIL import Image
    from skimage import data

    Image.fromarray(data.chelsea()).save(work / "photo.jpg")  # the placeholder a reader substitutes
    timings, compared = [], 0
    shown_after = {bash["line"]: output for bash, output in shown_output_blocks(text)}
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for block in readme_blocks(text):
        first = block["code"].splitlines()[0] if block["code"] else ""
        m = re.match(r"#\s*file:\s*(\S+)", first)
        if block["lang"] == "python" and m:
            (work / m.group(1)).write_text(block["code"])
            continue
        if block["lang"] != "bash" or block["skip"]:
            continue
        start = time.monotonic()
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block["code"]], cwd=work, env=env,
                              capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        timings.append((block["line"], round(time.monotonic() - start, 1)))
        assert done.returncode == block["exit"], (
            f"README.md line {block['line']} exited {done.returncode}, expected {block['exit']}:\n{block['code']}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        output = shown_after.get(block["line"])
        if output is not None:  # what the README says this block prints
            problems = [shown_output_problem(output["code"], printed) for printed in (done.stdout, done.stderr)]
            assert None in problems, (
                f"README.md line {output['line']}: the output shown there is not what line {block['line']}'s block "
                f"printed: {problems[0]} (stdout); {problems[1]} (stderr)\n--- shown\n{output['code']}"
                f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
            compared += 1
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = cpu.ru_utime + cpu.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    print("README blocks (line, seconds):", timings, "total", round(sum(t for _, t in timings), 1),
          "s; CPU (user+sys)", round(cpu_s, 1), "s")
    assert timings, "no bash block ran"
    assert compared == len(shown_after) >= 2


def test_onnx_snippet_matches_cnncli_predict(tmp_path, tiny_model_file, run_cli):
    """The README's run_onnx.py, extracted and run on an exported model, prints cnncli predict's top classes
    with the same probabilities (PNG inputs: no JPEG draft decoding on either side)."""
    from PIL import Image
    from skimage import data

    snippet = python_file_blocks((ROOT / "README.md").read_text())["run_onnx.py"]
    script = tmp_path / "run_onnx.py"
    script.write_text(snippet)
    onnx_file = tmp_path / "tiny.onnx"
    code, _, err = run_cli("export", tiny_model_file, "-o", onnx_file)
    assert code == 0, err
    images = []
    for name in ("chelsea", "coffee", "astronaut", "camera"):
        path = tmp_path / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        images.append(path)
    code, out, err = run_cli("predict", *images, "-m", onnx_file, "-f", "json", "-k", "3")
    assert code == 0, err
    for image, expected in zip(images, json.loads(out)):
        done = subprocess.run([sys.executable, str(script), str(onnx_file), str(image)], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        rows = [line.split("\t") for line in done.stdout.splitlines()]
        assert rows[0][0] == expected["top"][0]["label"]
        for (label, prob), top in zip(rows, expected["top"]):
            assert label == top["label"] and abs(float(prob) - top["prob"]) < 2e-4
