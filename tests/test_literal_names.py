"""Issue 19 item 2, "every string from a user or a file is printed literally": class folders and file names with
rich markup (`[bold red]`, a closing `[/x]` with nothing open), `[`, `]`, a backslash, an emoji code (`:smile:`),
a newline, an ANSI escape and a non-UTF-8 byte go through train, predict (table, JSON Lines, JSON, CSV),
evaluate, inspect and export. People's output shows each name as it is, with control characters and the
non-UTF-8 byte in their documented visible form (:func:`cnncli.core.text.visible`: ``\\n``, ``\\x1b``, ``\\xff``)
and no raw escape reaching the terminal; machine formats keep the exact string. On the old main `[/x]` in a path
aborted predict with a MarkupError, `[bold red]boom.png` was listed as `boom.png`, and the non-UTF-8 class
folder crashed train."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from pathlib import Path

import pytest
from train_data import write_digits

from cnncli.core.text import visible

BYTE_FF, BYTE_FE = os.fsdecode(b"\xff"), os.fsdecode(b"\xfe")  # how Python carries non-UTF-8 bytes of a name
CLASSES = ["a[", "[bold red]b\\c", "n\nl\x1b[31m:smile:" + BYTE_FF]  # "a[" holds its images in "x]": a[/x]/...
FILES = ["x[i].png", "[bold red]boom.png", "e\x1b[2J:smile:.png", "b\\s\nq" + BYTE_FE + ".png"]
WIDE = 250  # table cells are not folded at this width, so each name is on one line


def flat(text: str) -> str:
    """stderr messages wrap at the console's width; a name folded across lines is whole again."""
    return text.replace("\n", "")


def run_in_process(*args) -> tuple[int, str, str]:
    """The CLI entry point in this process (for module-scope fixtures, where capsys is not available)."""
    from cnncli.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A three-class dataset whose class folders and files have hostile names (and one unreadable image), and a
    lenet5 trained on it for one epoch by `cnncli train` into a hostile run folder."""
    base = tmp_path_factory.mktemp("hostile")
    digits = write_digits(base / "digits", per_class=8, size=32, classes=3)
    data = base / "data"
    images = []
    for label, name in enumerate(CLASSES):
        folder = data / name / "x]" if name == "a[" else data / name
        folder.mkdir(parents=True)
        for i, source in enumerate(sorted((digits / str(label)).iterdir())):
            images.append(folder / f"{i}{FILES[i % len(FILES)]}")
            images[-1].write_bytes(source.read_bytes())
    bad = data / "a[" / "x]" / "bad[i]\x1b[5m.png"
    bad.write_bytes(b"not a png")
    run = base / "run[" / "x]\x1b[7m"
    trained = run_in_process("train", data, "--arch", "lenet5", "--grayscale", "--epochs", "1", "--augment", "none",
                             "--batch-size", "8", "-o", run)
    assert trained[0] == 0, trained[2]
    return {"data": data, "images": images, "bad": bad, "run": run, "model": run / "best.safetensors",
            "train": trained, "base": base}


@pytest.fixture(autouse=True)
def wide_tables(monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDE))


def assert_no_raw_controls(text: str) -> None:
    assert "\x1b" not in text and "\r" not in text, repr(text[:300])


def test_train_logs_the_names_as_given(hostile):
    code, out, err = hostile["train"]
    assert_no_raw_controls(out + err)
    assert visible(hostile["run"] / "best.safetensors") in flat(err)  # "model: RUN/best.safetensors"
    assert visible(hostile["bad"]) in flat(err)  # the skipped unreadable image, named
    from cnncli.models.checkpoint import read_card

    assert sorted(read_card(hostile["model"]).classes) == sorted(CLASSES)  # the folder names, exact


def test_predict_table_shows_every_path_and_label(run_cli, hostile):
    data = hostile["data"]
    code, out, err = run_cli("predict", data, "-m", hostile["model"], "--engine", "torch", "--workers", "0",
                             "-k", "3")
    assert code == 1, err  # the one unreadable image
    assert_no_raw_controls(out + err)
    for image in hostile["images"]:
        assert visible(image.relative_to(data)) in out, visible(image.relative_to(data))
    for name in CLASSES:
        assert visible(name) in out
    assert "boom.png" in out and "[bold red]boom.png" in out  # not swallowed as markup
    assert visible(hostile["bad"]) in flat(err) and "MarkupError" not in err
    # a folder holding `[/x]` given directly, and one image by its name
    code, out, err = run_cli("predict", data / "a[" / "x]", "-m", hostile["model"], "--engine", "torch",
                             "--workers", "0")
    assert code == 1 and "x[i].png" in out and "MarkupError" not in err, err
    code, out, err = run_cli("predict", hostile["images"][-1], "-m", hostile["model"], "--engine", "torch")
    assert code == 0 and visible(hostile["images"][-1]) in flat(out), err  # the title: the path, folded


def test_predict_machine_formats_keep_the_exact_strings(run_cli, hostile, tmp_path):
    data, wanted = hostile["data"], {str(p) for p in hostile["images"]} | {str(hostile["bad"])}
    model = ("-m", hostile["model"], "--engine", "torch", "--workers", "0", "-k", "3")
    code, _, err = run_cli("predict", data, *model, "-f", "jsonl", "-o", tmp_path / "p.jsonl")
    assert code == 1, err
    text = (tmp_path / "p.jsonl").read_bytes().decode("utf-8")  # valid UTF-8: the byte is a JSON escape
    rows = [json.loads(line) for line in text.splitlines()]
    assert {r["path"] for r in rows} == wanted
    assert {t["label"] for r in rows for t in r.get("top", [])} == set(CLASSES)
    assert "\\udcfe" in text and "\\u001b" in text and "\\n" in text

    code, _, err = run_cli("predict", data, *model, "-f", "json", "-o", tmp_path / "p.json")
    assert code == 1, err
    assert {r["path"] for r in json.loads((tmp_path / "p.json").read_bytes().decode("utf-8"))} == wanted

    code, _, err = run_cli("predict", data, *model, "-f", "csv", "-o", tmp_path / "p.csv")
    assert code == 1, err
    raw = (tmp_path / "p.csv").read_bytes()
    assert os.fsencode(hostile["images"][3])[-12:] in raw  # the file name's own bytes, 0xfe and all
    with open(tmp_path / "p.csv", encoding="utf-8", errors="surrogateescape", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert {r["path"] for r in table} == wanted and {r["label"] for r in table if r["label"]} == set(CLASSES)


def test_csv_to_stdout_on_a_strict_utf8_terminal(hostile, monkeypatch):
    """CSV on a stdout that encodes strictly (Python's stdout under a desktop's UTF-8 locale): the name's bytes
    as they are, no UnicodeEncodeError."""
    from cnncli.cli.app import main

    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", newline="")
    monkeypatch.setattr(sys, "stdout", stdout)
    with pytest.raises(SystemExit) as done:
        main(["predict", str(hostile["images"][3]), "-m", str(hostile["model"]), "--engine", "torch", "-f", "csv"])
    stdout.flush()
    assert done.value.code == 0
    assert os.fsencode(hostile["images"][3]) in stdout.buffer.getvalue()


def test_evaluate_shows_class_names_and_json_keeps_them(run_cli, hostile):
    code, out, err = run_cli("evaluate", hostile["model"], hostile["data"], "--engine", "torch", "--workers", "0",
                             "--split", "all", "--errors", "all")
    assert code == 0, err
    assert_no_raw_controls(out + err)
    for name in CLASSES:
        assert visible(name) in out, visible(name)
    assert "[bold red]b\\c" in out and "\\x1b[31m:smile:\\xff" in out  # markup, emoji code, ESC, byte: visible
    assert visible(hostile["bad"]) in flat(err)  # "skipped: ..."
    code, out, err = run_cli("evaluate", hostile["model"], hostile["data"], "--engine", "torch", "--workers", "0",
                             "--split", "all", "-f", "json")
    assert code == 0, err
    report = json.loads(out)
    assert sorted(report["per_class"]) == sorted(CLASSES)
    assert {e["path"] for e in report["errors"]} <= {str(p) for p in hostile["images"]}


def test_inspect_dataset_lists_names_as_given(run_cli, hostile):
    data = hostile["data"]
    code, out, err = run_cli("inspect", data)
    assert code == 1, err  # the unreadable image is a problem
    assert_no_raw_controls(out + err)
    for name in CLASSES:
        assert visible(name) in out
    assert visible(hostile["bad"].relative_to(data)) in out  # "unreadable images": the file, by its name
    code, out, err = run_cli("inspect", data, "-f", "json")
    report = json.loads(out)
    assert sorted(report["classes"]) == sorted(CLASSES)
    assert str(hostile["bad"]) in {u["path"] for u in report["unreadable"]}


def test_export_names_its_file_and_keeps_the_labels(run_cli, hostile):
    target = hostile["base"] / "e[" / "x]\x1b[1m.onnx"
    code, out, err = run_cli("export", hostile["model"], "-o", target)
    assert code == 0, err
    assert_no_raw_controls(out + err)
    assert visible(target) in flat(err)
    code, out, err = run_cli("inspect", target)
    assert code == 0, err
    assert_no_raw_controls(out)
    assert "[bold red]b\\c" in out and "a[" in out  # "cnncli card ... (a[, [bold red]b\c, n\nl\x1b...)"
    from cnncli.engines.onnx_engine import OnnxEngine

    assert sorted(OnnxEngine(str(target)).card.classes) == sorted(CLASSES)


def test_an_error_naming_a_hostile_path_is_one_literal_line(run_cli, hostile):
    spec = str(hostile["data"] / "missing[/x]\x1b[2J.jpg")
    code, out, err = run_cli("predict", spec, "-m", hostile["model"])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert visible(spec) in err and "\x1b" not in err


def test_visible_form():
    assert visible("plain [bold] a\\b :smile: é") == "plain [bold] a\\b :smile: é"
    assert visible("a\nb\tc\x1b[0m\x7f\x9b") == "a\\nb\\tc\\x1b[0m\\x7f\\x9b"
    assert visible("x" + BYTE_FF + "\u202e" + "\u2028") == "x\\xff\\u202e\\u2028"
    assert visible(Path("p") / ("q" + BYTE_FE)) == "p/q\\xfe"
