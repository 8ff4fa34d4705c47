"""Issue 13, "Terminal output that fits and summarises": with COLUMNS=80 no line of predict (folder), evaluate and
inspect (model and dataset) is wider than 80, paths are shown relative to the input folder, and a -k larger than
the table shows says how many were cut. On the old main every table had a 100-column floor (120 for inspect)."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

LONG = ["a_rather_long_class_name_for_bricks_and_mortar_walls", "grass_and_meadows_seen_from_above_in_summer",
        "gravel_paths_of_a_very_old_garden", "d4", "e5", "f6"]
WIDTH = 80


@pytest.fixture(autouse=True)
def columns_80(monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))


def assert_fits(text: str) -> None:
    wide = [line for line in text.splitlines() if len(line) > WIDTH]
    assert not wide, "\n".join(wide)


@pytest.fixture(scope="module")
def long_named(tmp_path_factory):
    """A six-class model with long class names and a dataset with those folder names, deep in a long path."""
    import torch
    from skimage import data

    from cnncli.models.checkpoint import save_model
    from cnncli.models.registry import create_model

    root = tmp_path_factory.mktemp("wide") / "a_folder_with_a_long_name" / "and_another_one_below_it"
    torch.manual_seed(0)
    built = create_model("simplecnn", classes=LONG)
    model = root / "long.safetensors"
    root.mkdir(parents=True)
    save_model(model, built.model, built.card)
    dataset = root / "dataset"
    photo = data.astronaut()
    for split, offset in (("train", 0), ("val", 200)):
        for c, name in enumerate(LONG):
            (dataset / split / name).mkdir(parents=True)
            for i in range(2):
                y, x = offset + c * 40 + i * 10, i * 50
                Image.fromarray(photo[y:y + 64, x:x + 64]).save(
                    dataset / split / name / f"an_image_file_with_a_long_name_number_{i}.png")
    return model, dataset


def test_predict_folder_fits_and_shows_paths_relative_to_the_folder(run_cli, long_named):
    model, dataset = long_named
    code, out, err = run_cli("predict", dataset, "-m", model, "-k", "5", "--workers", "0")
    assert code == 0, err
    assert_fits(out)
    assert_fits(err)
    rows = [line for line in out.splitlines() if "an_image_file" in line or "an_image_fi" in line]
    assert rows and not any(str(dataset) in line for line in rows)  # relative, not the whole tmp path
    assert "3 of the top 5 classes shown per image" in out  # -k 5, the table shows 3: says so


def test_evaluate_fits(run_cli, long_named):
    model, dataset = long_named
    code, out, err = run_cli("evaluate", model, dataset, "--workers", "0")
    assert code == 0, err
    assert_fits(out)
    assert "per class" in out


def test_inspect_model_and_dataset_fit(run_cli, long_named):
    model, dataset = long_named
    for target in (model, "resnet18"):
        code, out, err = run_cli("inspect", target, "--depth", "2")
        assert code == 0, err
        assert_fits(out)
    copy = dataset / "val" / LONG[1] / "the_same_image_under_another_label.png"
    shutil.copy(next((dataset / "val" / LONG[0]).iterdir()), copy)
    try:
        code, out, err = run_cli("inspect", dataset)
    finally:
        copy.unlink()
    assert code == 1
    assert_fits(out)
    assert "the_same_image_under_another_label.png" in out.replace("\n", "")
    assert str(dataset) + "/" not in out  # paths relative to the dataset


def test_a_long_error_wraps_to_the_terminal_and_stays_one_line_in_a_pipe(tmp_path):
    """Issue 19: "the refusal is also one 335-column line". On a terminal (a real pty, 60 columns) the error
    sentence is wrapped at word boundaries to the terminal's width, on stderr; into a pipe it stays one line for
    grep and logs. The words are the same either way."""
    import fcntl
    import os
    import pty
    import re
    import struct
    import subprocess
    import sys
    import termios

    command = [sys.executable, "-m", "cnncli", "predict", "a_missing_photo.jpg", "another_missing_photo.jpg",
               "a_third_missing_photo.jpg"]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update(TERM="xterm", PYTHONPATH=os.getcwd())
    piped = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert piped.returncode == 2 and piped.stderr.count("\n") == 1 and len(piped.stderr) > 120, piped.stderr
    assert piped.stderr.startswith("error: ") and "Nothing to predict." in piped.stderr

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env,
                          cwd=tmp_path, timeout=120)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the other end is closed and everything is read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    shown = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode()).replace("\r\n", "\n")
    lines = shown.strip("\n").split("\n")
    assert done.returncode == 2 and done.stdout == b""
    assert len(lines) >= 3 and all(len(line) <= 60 for line in lines), lines
    assert " ".join(line.strip() for line in lines) == piped.stderr.strip()  # the same sentence, wrapped
