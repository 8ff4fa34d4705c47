"""Issue 19 item 1 "evaluate, any labelled folder" and issue 25 item 11: evaluate scores the folder a user hands it.

The training dataset itself gets the recorded hold-out, as before; a folder inside it (its val/) or any other
labelled folder is scored whole, the first line saying which and why; images byte-identical to a training image
(the model file records their content hashes; an older file is checked against its training dataset when that is
still there) are named, left out and counted. A dataset whose classes are not the model's is refused for that, in
one sentence, before any advice about --split.
"""

from __future__ import annotations

import json
import shutil

import pytest
from test_evaluate_honest import DIGITS, flat, old_card_without_hashes, recorded, save_lenet
from train_data import write_digits


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_cli_module):
    """DATA/train and DATA/val (3 digit classes; val holds 2 renamed copies of train images) and a real
    `cnncli train` run on it: the model file is made by training, not by hand."""
    root = tmp_path_factory.mktemp("any")
    pool = write_digits(root / "pool", per_class=9, classes=3)
    data = root / "DATA"
    for folder in sorted(pool.iterdir()):
        files = sorted(folder.iterdir())
        for split, part in (("train", files[:6]), ("val", files[6:])):
            (data / split / folder.name).mkdir(parents=True)
            for f in part:
                shutil.copy(f, data / split / folder.name / f.name)
    copies = []
    for name in ("0", "2"):
        source = sorted((data / "train" / name).iterdir())[0]
        copies.append(data / "val" / name / f"copy_of_{source.name}")
        shutil.copy(source, copies[-1])
    run = root / "run"
    code, err = run_cli_module("train", data, "--arch", "lenet5", "--grayscale", "--augment", "none", "--epochs", "1",
                               "--batch-size", "8", "--out", run, "--workers", "0", "--quiet")
    assert code == 0, err
    return {"data": data, "model": run / "best.safetensors", "copies": [str(c) for c in copies], "pool": pool}


@pytest.fixture(scope="module")
def run_cli_module():
    """The in-process CLI runner of conftest.py, for module-scoped fixtures (stdout and stderr captured here)."""
    import contextlib
    import io

    from cnncli.cli.app import main

    def run(*args) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code, err.getvalue()

    return run


def test_a_folder_inside_the_training_dataset_is_scored_less_the_copies_of_training_images(trained, run_cli):
    """The issue's case: after `train DATA`, `evaluate best.safetensors DATA/val` was refused ("is not the dataset
    this model was trained on ... its file list differs", exit 2). Now its 9 images are scored, the 2 copies of
    training images are named and left out, and the first line says which images and why. Fails on the old main
    (the refusal)."""
    model, data = trained["model"], trained["data"]
    table = run_cli("evaluate", model, data / "val", "--workers", "0")
    assert table.code == 0, table.err
    assert flat(table.out).startswith(
        f"scored 9 images: every image in {data / 'val'}, a folder inside the dataset the model was trained on "
        f"({data.resolve()}); 2 images identical to training images left out"), table.out
    for copy in trained["copies"]:
        assert f"left out, identical to a training image: {copy}" in flat(table.err)

    from cnncli.models.checkpoint import read_card

    assert read_card(model).training["split"]["train_hashes"]["count"] == 18  # recorded by the training run
    report = run_cli("evaluate", model, data / "val", "-f", "json", "--workers", "0")
    assert report.code == 0, report.err
    scored = json.loads(report.out)
    assert scored["n_images"] == 9 and sorted(scored["split"]["left_out"]) == sorted(trained["copies"])
    assert not {e["path"] for e in scored["errors"]} & set(trained["copies"])
    assert flat(report.err).startswith("scored 9 images: every image in")  # the first line, in JSON mode too

    # --split keeps working: all scores the copies too, and counts them; val has no val/ of its own to rebuild
    everything = json.loads(run_cli("evaluate", model, data / "val", "-f", "json", "--workers", "0",
                                    "--split", "all").out)
    assert everything["n_images"] == 11 and sorted(everything["split"]["training_copies"]) == sorted(trained["copies"])
    assert "2 images identical to training images, scored too" in everything["split"]["description"]
    refused = run_cli("evaluate", model, data / "val", "--split", "val", "--workers", "0")
    assert refused.code == 2 and "no val/ folder" in refused.err and "--split auto" in refused.err

    # the training dataset itself: its val/ folder, as before (copies and all: train warned about them)
    itself = json.loads(run_cli("evaluate", model, data, "-f", "json", "--workers", "0").out)
    assert itself["split"]["name"] == "val" and itself["n_images"] == 11 and itself["split"]["left_out"] == []

    # its train/ folder: nothing unseen is left, which is the one thing that cannot be scored
    train_only = run_cli("evaluate", model, data / "train", "--workers", "0")
    assert train_only.code == 2 and "all 18 images" in train_only.err and "--split all" in train_only.err
    assert len(train_only.err.strip().splitlines()) == 1


def test_any_other_labelled_folder_is_scored_and_an_old_model_file_falls_back_to_the_dataset(trained, tmp_path,
                                                                                            run_cli):
    """A separate labelled folder (its own test/ is preferred) is scored; copies of training images are found by
    the recorded hashes, or, for a model file from before them, by the training dataset while it is still there as
    recorded; once it is not, the first line says the copies could not be checked. Fails on the old main (refused
    as "not the dataset this model was trained on"), and without the recorded hashes (27 scored once the training
    dataset is gone)."""
    data = trained["data"]
    other = tmp_path / "other"
    shutil.copytree(trained["pool"], other / "train")
    shutil.copytree(trained["pool"], other / "test")  # 27 images: 18 of them are DATA/train's
    model = trained["model"]
    report = json.loads(run_cli("evaluate", model, other, "-f", "json", "--workers", "0").out)
    assert report["split"]["name"] == "test" and report["n_images"] == 9 and len(report["split"]["left_out"]) == 18
    assert (f"test/ of {other}, not the dataset the model was trained on ({data.resolve()}); 18 images identical to "
            "training images left out") in report["split"]["description"]

    copied = tmp_path / "DATA"
    shutil.copytree(data, copied)
    new = save_lenet(tmp_path / "new.safetensors", ["0", "1", "2"], recorded(copied))
    old = tmp_path / "old.safetensors"
    shutil.copy(new, old)
    assert "train_hashes" not in old_card_without_hashes(old)
    fallback = json.loads(run_cli("evaluate", old, other, "-f", "json", "--workers", "0").out)
    assert fallback["n_images"] == 9 and len(fallback["split"]["left_out"]) == 18

    shutil.rmtree(copied)  # the training dataset gone: the hashes still know, the old file cannot tell
    hashed = json.loads(run_cli("evaluate", new, other, "-f", "json", "--workers", "0").out)
    assert hashed["n_images"] == 9 and len(hashed["split"]["left_out"]) == 18
    unchecked = run_cli("evaluate", old, other, "-f", "json", "--workers", "0")
    assert unchecked.code == 0 and json.loads(unchecked.out)["n_images"] == 27
    assert ("images identical to training images could not be checked: the model file records no hashes of its "
            f"training images, and its training dataset {copied.resolve()} is not there") in flat(unchecked.err)


def test_a_changed_training_dataset_is_scored_on_its_unseen_images_or_refused_without_hashes(tmp_path, run_cli):
    """The training dataset with an image added since: the seeded hold-out cannot be rebuilt, so every image not
    identical to a training image is scored (the record's hashes say which); without hashes (an older file) that
    cannot be told, and evaluate refuses in one sentence pointing at --split all. Fails on the old main (refused
    even with the hashes, which it did not record)."""
    data = write_digits(tmp_path / "digits", per_class=10)
    model = save_lenet(tmp_path / "m.safetensors", DIGITS, recorded(data))
    shutil.copy(next((data / "3").iterdir()), data / "3" / "extra.png")
    result = run_cli("evaluate", model, data, "-f", "json", "--workers", "0")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    copies = report["split"]["left_out"]
    assert report["n_images"] + len(copies) == 101 and len(copies) in (80, 81)  # 80 trained on (+ extra if a copy)
    assert "which has changed since the model was trained on it (101 images now, 100 recorded)" in flat(result.err)

    old_card_without_hashes(model)
    refused = run_cli("evaluate", model, data, "--workers", "0")
    assert refused.code == 2 and len(refused.err.strip().splitlines()) == 1
    assert "101 images now, 100 recorded" in refused.err and "--split all" in refused.err
    assert json.loads(run_cli("evaluate", model, data, "-f", "json", "--workers", "0",
                              "--split", "all").out)["n_images"] == 101


def test_a_dataset_with_other_classes_is_refused_for_its_classes_first(tmp_path, run_cli):
    """Issue 25 item 11: a 0-9 model on a c0-c4 dataset advised `--split all`, which only led to a second refusal
    about the classes. The class mismatch is named first: on another folder, on the training dataset changed
    under it, and with --split val. Fails on the old main (the --split all advice)."""
    digits = write_digits(tmp_path / "digits", per_class=4, classes=5)
    model = save_lenet(tmp_path / "m.safetensors", DIGITS, recorded(digits))
    old_card_without_hashes(model)  # the file the issue met: no hashes, so a changed dataset cannot be scored
    for folder in sorted(digits.iterdir()):
        folder.rename(digits / f"c{folder.name}")
    other = tmp_path / "other"
    shutil.copytree(digits, other)
    for data, split in ((digits, "auto"), (digits, "val"), (other, "auto"), (other, "val")):
        result = run_cli("evaluate", model, data, "--split", split, "--workers", "0")
        assert result.code == 2 and len(result.err.strip().splitlines()) == 1, (data, split, result.err)
        assert "'c0', 'c1', 'c2', 'c3', 'c4'" in result.err and "not among the model's 10 classes" in result.err
        assert "--split" not in result.err, result.err


def test_shown_cards_summarise_the_training_hashes_instead_of_listing_them():
    """inspect and serve's /v1/model show the card to people: the hashes (kilobytes of base64 for a real dataset)
    appear as their count; the file itself keeps them for evaluate."""
    from cnncli.models.card import ModelCard

    digests = "A" * 4000
    card = ModelCard(arch="lenet5", classes=["a", "b"], training={"split": {"dataset": "/d", "train_hashes": {
        "algorithm": "blake2b-8", "count": 500, "digests": digests}}})
    shown = card.shown_dict()
    assert shown["training"]["split"]["train_hashes"] == {"algorithm": "blake2b-8", "count": 500}
    assert card.to_dict()["training"]["split"]["train_hashes"]["digests"] == digests  # the file keeps them
