"""Reliability, datasets (issue 14 "say the right thing" and issue 13 "the checks inspect DATA reports are applied
by train/finetune"): symlinks into the dataset and loops, unreadable folders, CSV paths escaping the manifest's
folder, and the duplicate / leak / label-conflict warnings at the start of a training run. Each test fails on
the main before this change."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from cnncli.core.errors import UsageError
from cnncli.train.config import TrainConfig
from cnncli.train.loop import run_training


def write_images(folder: Path, n: int, shade: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.new("L", (16, 16), shade)
        img.putpixel((i % 16, i // 16), 255 - shade)  # each image differs
        img.save(folder / f"{shade}_{i}.png")


def quick_cfg(data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(**dict(dict(data=str(data), arch="lenet5", grayscale=True, augment="none", epochs=1,
                                   batch_size=8, quiet=True, workers=0, image_size=28, out=str(out)), **kw))


def test_train_warns_about_duplicates_leaks_and_conflicting_labels_naming_the_files(tmp_path, capsys):
    """Issue 14 / 13 "train/finetune run the dataset checks that inspect DATA runs (duplicates within a split, the
    same image in train and val, a file under two labels) and warn naming the files". The old main said nothing."""
    data = tmp_path / "data"
    for split in ("train", "val"):
        write_images(data / split / "dark", 4, 30 if split == "train" else 40)
        write_images(data / split / "light", 4, 200 if split == "train" else 210)
    shutil.copy(data / "train" / "dark" / "30_0.png", data / "train" / "light" / "also_dark.png")  # two labels
    shutil.copy(data / "train" / "light" / "200_1.png", data / "val" / "light" / "leaked.png")  # train = val
    capsys.readouterr()
    run_training(quick_cfg(data, tmp_path / "run"))
    err = "".join(capsys.readouterr().err.split())  # the console folds long lines
    assert "differentlabels" in err and "30_0.png" in err and "also_dark.png" in err
    assert "morethanonesplit" in err and "200_1.png(train)" in err and "leaked.png(val)" in err


def test_symlinked_class_folder_into_the_dataset_and_loops_are_not_followed(tmp_path, run_cli):
    """Issue 14 "a symlink loop or a symlinked class folder pointing into the dataset: warn and do not follow it
    into a duplicate class". The old main made a third class of the link and warned about nothing."""
    from cnncli.data.layout import load_dataset

    data = tmp_path / "data"
    write_images(data / "a", 3, 20)
    write_images(data / "b", 3, 220)
    os.symlink(data / "a", data / "c")  # a second name for class a
    os.symlink(data / "b", data / "b" / "loop")  # a loop inside class b
    outside = tmp_path / "elsewhere"
    write_images(outside, 2, 120)
    os.symlink(outside, data / "a" / "more")  # a link out of the dataset is followed as before
    splits = load_dataset(data, val_split=0.34)
    assert splits.classes == ["a", "b"]
    assert len(splits.train) + len(splits.val) == 3 + 2 + 3
    text = " ".join(splits.warnings)
    assert f"{data / 'c'} is a symlink" in text and f"{data / 'b' / 'loop'} is a symlink" in text
    result = run_cli("inspect", data)
    # terminal text is wrapped at 80 columns: compare it with the wrapping undone
    assert result.code == 1 and "not followed" in (result.out + result.err).replace("\n", "")


def test_unreadable_folder_is_reported_not_skipped_silently(tmp_path, monkeypatch):
    """Issue 14 "an unreadable folder is reported, not skipped silently". Permissions do not stop root, so for
    root the kernel's refusal is reproduced by making os.scandir raise it for that folder."""
    from cnncli.data.layout import load_dataset

    data = tmp_path / "data"
    write_images(data / "a", 3, 20)
    write_images(data / "b", 3, 220)
    locked = data / "b" / "more"
    write_images(locked, 2, 200)
    locked.chmod(0)
    if os.geteuid() == 0:
        real = os.scandir

        def scandir(path="."):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        splits = load_dataset(data, val_split=0.34)
    finally:
        locked.chmod(0o755)
    assert any(f"folder {locked} cannot be read" in w and "Permission denied" in w for w in splits.warnings)


def test_csv_paths_outside_the_manifest_folder_are_refused_unless_allowed(tmp_path, run_cli):
    """Issue 14 "CSV manifest paths that escape the manifest's folder (.., absolute) are refused unless
    --allow-outside is given". The old main read them silently."""
    images = tmp_path / "images"
    write_images(images / "a", 3, 20)
    write_images(images / "b", 3, 220)
    folder = tmp_path / "manifests"
    folder.mkdir()
    lines = [f"../images/a/20_{i}.png,a" for i in range(3)] + [f"{images}/b/220_{i}.png,b" for i in range(3)]
    manifest = folder / "data.csv"
    manifest.write_text("path,label\n" + "\n".join(lines) + "\n")
    for args in (["inspect", manifest], ["train", manifest, "--arch", "lenet5", "--out", tmp_path / "run", "--quiet"]):
        result = run_cli(*args)
        assert result.code == 2 and result.err.count("\n") == 1 and "outside the manifest's folder" in result.err
        assert "--allow-outside" in result.err
    with pytest.raises(UsageError, match="line 2"):
        run_training(quick_cfg(manifest, tmp_path / "run2"))
    result = run_cli("inspect", manifest, "--allow-outside", "--val-split", "0.34")
    assert result.code in (0, 1) and "outside" not in result.err
    run_training(quick_cfg(manifest, tmp_path / "run3", allow_outside=True, val_split=0.34))
