"""Datasets: layout detection, class order, the seeded split, refusals, and the checker behind `inspect DATA`.

Every image is a real photo or texture patch from scikit-image, written to tmp_path.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncli.core.errors import UsageError
from cnncli.data.check import check_dataset
from cnncli.data.eval_split import load_eval_split
from cnncli.data.layout import load_dataset

SOURCES = ("chelsea", "coffee", "brick", "grass", "gravel")
PATCH = 32


def _source(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


_CACHE: dict[str, np.ndarray] = {}


def patch(source: str, index: int, size: int = PATCH) -> np.ndarray:
    """The index-th distinct size x size crop of a scikit-image picture (RGB or grayscale as stored)."""
    if source not in _CACHE:
        _CACHE[source] = _source(source)
    img = _CACHE[source]
    per_row = (img.shape[1] - size) // 13
    top, left = (index // per_row) * 11, (index % per_row) * 13
    return np.ascontiguousarray(img[top:top + size, left:left + size])


def write_class(folder: Path, source: str, count: int, start: int = 0, ext: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"img{i}{ext}"
        Image.fromarray(patch(source, i)).save(path)
        paths.append(path)
    return paths


def one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and ". " not in message.rstrip(".")


# ------------------------------------------------------------------------------------------- layouts


def test_class_folders_natural_order_hidden_folders_and_seeded_stratified_split(tmp_path):
    for name, source, count in (("10", "coffee", 8), ("2", "chelsea", 8), ("Cat", "brick", 12)):
        write_class(tmp_path / name, source, count)
    write_class(tmp_path / ".ipynb_checkpoints", "grass", 3)  # hidden: never a class, never samples
    write_class(tmp_path / "2" / ".thumbs", "gravel", 2)
    (tmp_path / "Cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")

    splits = load_dataset(tmp_path, val_split=0.25, seed=3)
    assert splits.layout == "class-folders"
    assert splits.classes == ["2", "10", "Cat"]
    everything = splits.train + splits.val
    assert len(everything) == 28 and not any("." in part[:1] for s in everything for part in s.path.parts)
    for index, name in enumerate(splits.classes):
        n_val = sum(s.label == index for s in splits.val)
        n_train = sum(s.label == index for s in splits.train)
        assert n_val == round((n_val + n_train) * 0.25) and n_val > 0 and n_train > 0
        assert all(s.path.parent.name == name for s in everything if s.label == index)
    assert not {s.path for s in splits.train} & {s.path for s in splits.val}

    again = load_dataset(tmp_path, val_split=0.25, seed=3)
    assert again.val == splits.val and again.train == splits.train
    others = [load_dataset(tmp_path, val_split=0.25, seed=seed).val for seed in (4, 5, 6)]
    assert any(set(v) != set(splits.val) for v in others)


def test_split_folders_with_valid_and_test_warns_about_a_class_missing_from_val(tmp_path):
    write_class(tmp_path / "train" / "brick", "brick", 5)
    write_class(tmp_path / "train" / "grass", "grass", 5)
    write_class(tmp_path / "train" / "gravel", "gravel", 5)
    write_class(tmp_path / "valid" / "brick", "brick", 2, start=20)
    write_class(tmp_path / "valid" / "grass", "grass", 2, start=20)
    write_class(tmp_path / "test" / "gravel", "gravel", 3, start=40)
    write_class(tmp_path / "test" / "brick", "brick", 1, start=40)

    splits = load_dataset(tmp_path)
    assert splits.layout == "split-folders"
    assert splits.classes == ["brick", "grass", "gravel"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 4, 4)
    assert {s.label for s in splits.test if s.path.parent.name == "gravel"} == {2}
    assert [w for w in splits.warnings if "'gravel'" in w and "val" in w]

    samples, classes = load_eval_split(tmp_path)  # auto: test/ first
    assert classes == ["brick", "gravel"] and len(samples) == 4
    samples, classes = load_eval_split(tmp_path, split="val", classes=["gravel", "grass", "brick"])
    assert {(s.path.parent.name, s.label) for s in samples} == {("grass", 1), ("brick", 2)}
    with pytest.raises(UsageError, match="'grass'"):
        load_eval_split(tmp_path, split="val", classes=["brick", "gravel"])


def test_csv_manifest_relative_paths_optional_header_and_val_csv(tmp_path):
    images = tmp_path / "imgs"
    rows = [(p.relative_to(tmp_path).as_posix(), "cat") for p in write_class(images / "c", "chelsea", 6)]
    rows += [(p.relative_to(tmp_path).as_posix(), "cup") for p in write_class(images / "k", "coffee", 6)]
    manifest = tmp_path / "all.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)  # no header
    splits = load_dataset(manifest, val_split=0.5, seed=1)
    assert splits.layout == "csv" and splits.classes == ["cat", "cup"]
    assert len(splits.train) == len(splits.val) == 6
    assert all((s.label == 0) == (s.path.parent.name == "c") for s in splits.train + splits.val)

    train_csv, val_csv = tmp_path / "lists" / "train.csv", tmp_path / "lists" / "val.csv"
    train_csv.parent.mkdir()
    with open(train_csv, "w", newline="") as handle:  # header, columns swapped, paths relative to this CSV
        writer = csv.writer(handle)
        writer.writerow(["label", "path"])
        writer.writerows([(label, "../" + rel) for rel, label in rows[:4] + rows[6:10]])
        writer.writerow(["cup", "../imgs/k/gone.png"])
    with open(val_csv, "w", newline="") as handle:
        csv.writer(handle).writerows([("../" + rel, label) for rel, label in rows[4:6]])
    splits = load_dataset(train_csv, val_csv=val_csv, allow_outside=True)  # ../ leaves the manifest's folder
    assert (len(splits.train), len(splits.val)) == (8, 2)
    assert [w for w in splits.warnings if "'cup'" in w and "none in val" in w]
    assert [w for w in splits.warnings if "gone.png" in w]


# ------------------------------------------------------------------------------------------- refusals


def _no_images(root: Path) -> None:
    (root / "a").mkdir()
    (root / "a" / "notes.txt").write_text("not an image")


def _single_class(root: Path) -> None:
    write_class(root / "only", "chelsea", 4)
    write_class(root / ".hidden", "coffee", 4)


def _empty_class(root: Path) -> None:
    write_class(root / "cat", "chelsea", 4)
    write_class(root / "cup", "coffee", 4)
    (root / "ghost").mkdir()


def _val_split_empties_a_class(root: Path) -> None:
    write_class(root / "cat", "chelsea", 10)
    write_class(root / "rare", "coffee", 2)


@pytest.mark.parametrize("make, named", [
    (_no_images, "no images found"),
    (_single_class, "single class (only 'only')"),
    (_empty_class, "ghost has no images"),
    (_val_split_empties_a_class, "class 'rare' with no val images"),
])
def test_each_refusal_is_one_sentence_usage_error(tmp_path, make, named):
    make(tmp_path)
    with pytest.raises(UsageError) as info:
        load_dataset(tmp_path, val_split=0.2)
    assert named in str(info.value) and one_sentence(str(info.value)), str(info.value)
    if make is _val_split_empties_a_class:
        assert "--val-split" in str(info.value)
        assert load_dataset(tmp_path, val_split=0.5).val  # the suggested fix works


def test_missing_path_and_non_dataset_file_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a dataset"):
        load_dataset(tmp_path / "model.bin")


# ------------------------------------------------------------------------------------------- checker


def _save_modes_zoo(folder: Path) -> dict[str, Path]:
    """One image in each awkward storage mode."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = patch("chelsea", 200)
    paths = {name: folder / f"{name}{ext}" for name, ext in
             (("cmyk", ".jpg"), ("gray16", ".png"), ("rgba", ".png"), ("rotated", ".jpg"), ("gray", ".png"))}
    Image.fromarray(rgb).convert("CMYK").save(paths["cmyk"])
    Image.fromarray(patch("brick", 201).astype(np.uint16) * 257).save(paths["gray16"])
    rgba = np.dstack([patch("coffee", 202), np.full((PATCH, PATCH), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(paths["rgba"])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(_source("coffee")[:48, :32]).save(paths["rotated"], exif=exif)  # stored 32 wide, 48 high
    Image.fromarray(patch("grass", 203)).save(paths["gray"])
    return paths


@pytest.fixture
def messy_dataset(tmp_path) -> dict[str, Path]:
    """Acceptance 6 of issue 5: a duplicate across train and val, a corrupt file, an empty class, a hidden
    folder; plus a duplicate within train and images in CMYK, 16-bit, RGBA, EXIF-rotated and grayscale."""
    root = tmp_path / "data"
    train_cat = write_class(root / "train" / "cat", "chelsea", 6)
    write_class(root / "train" / "cup", "coffee", 6)
    write_class(root / "val" / "cat", "chelsea", 2, start=50)
    write_class(root / "val" / "cup", "coffee", 2, start=50)
    zoo = _save_modes_zoo(root / "train" / "odd")
    planted = {
        "leak": root / "val" / "cup" / "copy_of_train_cat0.png",
        "twin": root / "train" / "cat" / "twin_of_cat1.png",
        "corrupt": root / "train" / "cup" / "broken.jpg",
        "truncated": root / "train" / "cup" / "truncated.png",
        "empty_class": root / "train" / "ghost",
        "hidden": root / "train" / "cat" / ".ipynb_checkpoints",
        "leak_source": train_cat[0],
        "twin_source": train_cat[1],
    }
    planted["leak"].write_bytes(train_cat[0].read_bytes())
    planted["twin"].write_bytes(train_cat[1].read_bytes())
    planted["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    whole = (root / "train" / "cup" / "img0.png").read_bytes()
    planted["truncated"].write_bytes(whole[: len(whole) // 2])  # valid header, pixels cut off
    planted["empty_class"].mkdir()
    write_class(planted["hidden"], "chelsea", 2)  # exact copies of cat images, hidden: must not count
    return {"root": root, **planted, **{f"zoo_{k}": v for k, v in zoo.items()}}


def test_check_dataset_reports_every_planted_problem_by_path(messy_dataset):
    m = messy_dataset
    report = check_dataset(m["root"])
    assert report.layout == "split-folders"
    assert report.classes == ["cat", "cup", "ghost", "odd"]
    assert report.counts["train"] == {"cat": 7, "cup": 8, "ghost": 0, "odd": 5}
    assert report.counts["val"] == {"cat": 2, "cup": 3, "ghost": 0, "odd": 0}

    assert [leak for leak in report.leaks if leak["train"] == [str(m["leak_source"])]
            and leak["val"] == [str(m["leak"])]]
    assert sorted([str(m["twin_source"]), str(m["twin"])]) in [sorted(g) for g in report.duplicates]
    assert {u["path"] for u in report.unreadable} == {str(m["corrupt"]), str(m["truncated"])}
    assert report.empty_classes == [str(m["empty_class"])]
    assert str(m["hidden"]) in report.hidden_ignored
    assert not any(".ipynb_checkpoints" in p for group in report.duplicates for p in group)

    assert report.modes["CMYK"] == 1 and report.modes["RGBA"] == 1 and report.modes["exif-rotated"] == 1
    assert report.modes.get("I;16", 0) + report.modes.get("I", 0) == 1
    assert report.modes["L"] == 1
    assert report.sizes["48x32"] == 1  # the rotated image, as displayed
    assert report.imbalance_ratio == pytest.approx(8 / 5)

    problems = " ".join(report.problems)
    for key in ("leak_source", "corrupt", "empty_class", "twin_source"):
        assert str(m[key]) in problems, key
    assert "'odd'" in problems  # train-only class named in a warning
    with pytest.raises(UsageError, match="ghost has no images"):  # train refuses what inspect reported
        load_dataset(m["root"])

    header_only = check_dataset(m["root"], decode=False)  # fast path: a truncated body is only found by decoding
    assert {u["path"] for u in header_only.unreadable} == {str(m["corrupt"])}


def test_inspect_dataset_table_and_json_name_each_problem_and_exit_1(messy_dataset, run_cli):
    m = messy_dataset
    code, out, err = run_cli("inspect", m["root"])
    assert code == 1 and "problems found" in out and "problems found" in err
    flat = out.replace("\n", "")
    for key in ("leak", "leak_source", "twin", "corrupt", "truncated", "empty_class", "hidden"):
        assert m[key].name in out, key
    assert "split-folders" in out and "CMYK" in out and "exif-rotated" in out
    assert str(m["empty_class"]) in flat

    code, out, err = run_cli("inspect", m["root"], "--format", "json")
    assert code == 1
    data = json.loads(out)
    expected_keys = {"layout", "root", "classes", "counts", "imbalance_ratio", "sizes", "modes", "unreadable",
                     "duplicates", "leaks", "hidden_ignored", "empty_classes", "problems"}
    assert expected_keys <= set(data)
    assert data["leaks"][0]["val"] == [str(m["leak"])]
    assert str(m["corrupt"]) in [u["path"] for u in data["unreadable"]]
    assert data["empty_classes"] == [str(m["empty_class"])]
    assert str(m["hidden"]) in data["hidden_ignored"]
    assert any(str(m["twin"]) in group for group in data["duplicates"])


def test_inspect_clean_dataset_exits_0_and_usage_errors_exit_2(tmp_path, run_cli):
    for name, source in (("brick", "brick"), ("gravel", "gravel")):
        write_class(tmp_path / "textures" / name, source, 5)
    code, out, err = run_cli("inspect", tmp_path / "textures", "--val-split", "0.4")
    assert code == 0 and "no problems found" in out, out + err
    assert "brick" in out and "class-folders" in out

    write_class(tmp_path / "tt" / "train" / "grass", "grass", 30)
    write_class(tmp_path / "tt" / "train" / "gravel", "gravel", 5)
    write_class(tmp_path / "tt" / "test" / "grass", "grass", 2, start=100)
    code, out, err = run_cli("inspect", tmp_path / "tt", "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["problems"] == [], data["problems"]  # val held out of train/: a note, not a problem
    assert data["counts"]["val"] == {"grass": 6, "gravel": 1} and data["counts"]["test"] == {"grass": 2, "gravel": 0}
    assert data["imbalance_ratio"] == pytest.approx(24 / 4)
    assert any("held out" in n for n in data["notes"]) and any("--balance" in n for n in data["notes"])

    code, out, err = run_cli("inspect", tmp_path / "textures", "--format", "xml")
    assert code == 2 and err.startswith("error:") and "--format" in err
    code, out, err = run_cli("inspect", tmp_path / "missing.csv")
    assert code == 2 and "no such file" in err and "Traceback" not in err
    write_class(tmp_path / "small" / "a", "coffee", 1)
    write_class(tmp_path / "small" / "b", "chelsea", 4)
    code, out, err = run_cli("inspect", tmp_path / "small", "--format", "json")
    assert code == 1 and any("'a'" in p and "--val-split" in p for p in json.loads(out)["problems"])


def test_data_package_does_not_import_torch():
    code = "import sys, cnncli.data, cnncli.inspect.dataset_report; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
