"""Issue 13, "A folder prediction ends with a summary" and "Input from a pipe": the summary on stderr (images,
failed, seconds, img/s, count per predicted class), --summary-only, `-o FILE` says where it wrote, CSV's error
column, `-` (paths on stdin) and `@list.txt`, web addresses refused in one sentence. All fail on the old main
(no summary, blank CSV rows for failures, `-` and `@list` taken as missing files, a URL as a missing file)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest


@pytest.fixture
def folder(tmp_path, photos):
    """Two photos and one corrupt file."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, path in photos.items():
        (folder / f"{name}.jpg").write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    return folder


def summary_of(err: str) -> str:
    return " ".join(err.split())


def test_folder_prediction_ends_with_a_summary(run_cli, folder, tiny_model_file):
    code, out, err = run_cli("predict", folder, "-m", tiny_model_file, "-f", "jsonl", "--workers", "0")
    assert code == 1
    preds = [json.loads(line) for line in out.splitlines()]
    labels = [p["top"][0]["label"] for p in preds if "top" in p]
    text = summary_of(err)
    assert "3 images, 1 failed," in text and " img/s" in text and " s, " in text
    for label in set(labels):
        assert f"{label} {labels.count(label)}" in text.split("predicted (top-1):")[1]


def test_summary_only_prints_no_rows(run_cli, folder, tiny_model_file):
    code, out, err = run_cli("predict", folder, "-m", tiny_model_file, "--summary-only", "--workers", "0")
    assert code == 1 and out == ""
    assert "3 images, 1 failed" in summary_of(err)
    code, _, err = run_cli("predict", folder, "-m", tiny_model_file, "--summary-only", "-o", folder / "x.csv")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_output_file_says_where_and_csv_has_an_error_column(run_cli, folder, tiny_model_file, tmp_path):
    target = tmp_path / "preds.csv"
    code, out, err = run_cli("predict", folder, "-m", tiny_model_file, "-f", "csv", "-o", target, "-k", "2")
    assert code == 1 and out == ""
    assert f"wrote 3 predictions (csv) to {target}" in summary_of(err)
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert list(rows[0]) == ["path", "rank", "label", "index", "prob", "error"]
    bad = [r for r in rows if r["path"].endswith("broken.jpg")]
    assert len(bad) == 1 and bad[0]["error"] and not bad[0]["label"] and not bad[0]["rank"]
    good = [r for r in rows if not r["path"].endswith("broken.jpg")]
    assert len(good) == 4 and all(r["error"] == "" and r["label"] for r in good)


def test_paths_from_a_pipe(folder, tiny_model_file, tmp_path):
    """`find ... | cnncli predict -` in a real shell pipe."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    command = f"find {folder} -name '*.jpg' -not -name 'broken*' | {sys.executable} -m cnncli predict - " \
              f"-m {tiny_model_file} -f jsonl --workers 0"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    paths = sorted(json.loads(line)["path"] for line in done.stdout.splitlines())
    assert paths == sorted(str(p) for p in folder.glob("*.jpg") if "broken" not in p.name)


def test_paths_from_a_list_file_relative_to_the_current_folder(run_cli, folder, tiny_model_file, tmp_path,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.txt").write_text("imgs/chelsea.jpg\n\n# a comment\nimgs/coffee.jpg\n")
    code, out, err = run_cli("predict", "@list.txt", "-m", tiny_model_file, "-f", "json")
    assert code == 0, err
    assert [p["path"] for p in json.loads(out)] == ["imgs/chelsea.jpg", "imgs/coffee.jpg"]
    code, _, err = run_cli("predict", "@missing.txt", "-m", tiny_model_file)
    assert code == 2 and "missing.txt" in err and len(err.strip().splitlines()) == 1


def test_stdin_list_in_process(run_cli, folder, tiny_model_file, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{folder / 'coffee.jpg'}\n"))
    code, out, err = run_cli("predict", "-", "-m", tiny_model_file, "-f", "json")
    assert code == 0 and json.loads(out)[0]["path"] == str(folder / "coffee.jpg")


def test_dash_twice_is_refused_before_stdin_is_read(run_cli, folder, tiny_model_file, monkeypatch):
    """Issue 25 item 12: `predict - -` said "`-` read no image paths from stdin" though the first `-` had read
    them. stdin holds one list: a second `-` is a usage error, in one sentence, before stdin is read."""
    stdin = io.StringIO(f"{folder / 'coffee.jpg'}\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = run_cli("predict", "-", "-", "-m", tiny_model_file, "-f", "json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "`-` is given 2 times" in err and "read no image paths" not in err
    assert stdin.tell() == 0  # refused before reading: nothing was consumed


@pytest.mark.parametrize("spec", ["https://example.com/cat.jpg", "HTTP://example.com/a.png"])
def test_web_addresses_are_refused_in_one_sentence(run_cli, tiny_model_file, spec, tmp_path):
    code, _, err = run_cli("predict", spec, "-m", tiny_model_file)
    assert code == 2 and "web address" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "urls.txt").write_text(spec + "\n")
    code, _, err = run_cli("predict", f"@{tmp_path / 'urls.txt'}", "-m", tiny_model_file)
    assert code == 2 and "web address" in err
