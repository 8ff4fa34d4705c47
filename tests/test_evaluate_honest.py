"""Issue 13 (part A): evaluate scores what the model did not train on, top-5 only where it means something, every
error listed, readable plots, and exports that land next to the model without replacing anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from train_data import write_digits, write_textures

DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"), per_class=10)


def flat(text: str) -> str:
    """Terminal output with its line wrapping undone (tables and lines wrap at the terminal's width)."""
    return " ".join(text.split())


def save_lenet(path: Path, classes: list[str], training: dict | None = None) -> Path:
    """A random LeNet-5 (1 channel, 32 px) model file whose card carries ``training``."""
    import torch

    from cnncli.models.checkpoint import save_model
    from cnncli.models.registry import create_model

    torch.manual_seed(0)
    built = create_model("lenet5", classes=classes, in_chans=1)
    built.card.preprocessing = built.card.preprocessing.replace(channels=1)
    built.card.training = training
    save_model(path, built.model, built.card)
    return path


def recorded(data: Path, val_split: float = 0.2, seed: int = 0) -> dict:
    from cnncli.data.eval_split import split_record
    from cnncli.data.layout import load_dataset

    splits = load_dataset(data, val_split=val_split, seed=seed)
    return {"split": split_record(data, splits.layout, val_split, seed, None, len(splits.train), len(splits.val))}


def old_card_without_hashes(path: Path) -> dict:
    """Rewrite ``path`` as a model file from before the hashes were recorded; returns its training.split."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as handle:
        card = json.loads(handle.metadata()["cnncli"])
    card["training"]["split"].pop("train_hashes")
    save_file(load_file(str(path)), str(path), metadata={"cnncli": json.dumps(card)})
    return card["training"]["split"]


def test_evaluate_scores_the_recorded_hold_out_not_the_training_images(digits, tmp_path, run_cli, monkeypatch):
    """Item 1: a class-folder dataset is scored on the seeded hold-out train used, rebuilt exactly (the same
    images as train's load_dataset); the output says which split and how many. Fails on the old main, which
    scored all 100 images (80 of them trained on)."""
    from cnncli.data.layout import load_dataset

    model = save_lenet(tmp_path / "m.safetensors", DIGITS, recorded(digits, val_split=0.3, seed=7))
    held_out = {str(s.path) for s in load_dataset(digits, val_split=0.3, seed=7).val}
    assert len(held_out) == 30

    result = run_cli("evaluate", model, digits, "-f", "json", "--workers", "0")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["split"]["name"] == "val" and report["n_images"] == 30
    assert "scored 30 images" in flat(result.err) and "hold-out" in result.err
    assert {e["path"] for e in report["errors"]} <= held_out
    assert np.array(report["confusion_matrix"]).sum() == 30

    table = run_cli("evaluate", model, digits, "--workers", "0")
    assert table.code == 0 and "scored 30 images: the 30% hold-out that train used (seed 7" in flat(table.out)

    # run from another folder: the record is absolute, the dataset path given is relative
    monkeypatch.chdir(digits.parent)
    again = run_cli("evaluate", model, digits.name, "-f", "json", "--workers", "0", "--split", "train")
    assert json.loads(again.out)["n_images"] == 70

    everything = run_cli("evaluate", model, digits, "-f", "json", "--workers", "0", "--split", "all")
    assert json.loads(everything.out)["n_images"] == 100


def test_evaluate_refuses_a_changed_dataset_and_states_the_rule_without_a_record(digits, tmp_path, run_cli):
    """Item 1: a dataset whose file list is not the recorded one cannot rebuild the hold-out: for a model file that
    records no hashes of its training images (issue 19 scores the unseen images where it does:
    test_evaluate_any_folder.py) one sentence, exit 2 (--split all still works); a model with no record (older
    file, pretrained) scores everything and says so. Fails on the old main (no record, no refusal, no split
    named)."""
    changed = tmp_path / "changed"
    shutil.copytree(digits, changed)
    changed_model = save_lenet(tmp_path / "changed.safetensors", DIGITS, recorded(changed))
    old_card_without_hashes(changed_model)
    shutil.copy(next((changed / "3").iterdir()), changed / "3" / "extra.png")
    refused = run_cli("evaluate", changed_model, changed, "--workers", "0")
    assert refused.code == 2 and "Traceback" not in refused.err
    assert "has changed since the model was trained on it" in refused.err and "--split all" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert json.loads(run_cli("evaluate", changed_model, changed, "-f", "json", "--workers", "0",
                              "--split", "all").out)["n_images"] == 101
    model = save_lenet(tmp_path / "m.safetensors", DIGITS, recorded(digits))

    # the same files copied elsewhere are the same dataset: the hold-out is rebuilt
    moved = tmp_path / "moved"
    shutil.copytree(digits, moved)
    rebuilt = json.loads(run_cli("evaluate", model, moved, "-f", "json", "--workers", "0").out)
    assert rebuilt["n_images"] == 20 and "hold-out that train used" in rebuilt["split"]["description"]

    old = save_lenet(tmp_path / "old.safetensors", DIGITS, training=None)
    result = run_cli("evaluate", old, digits, "--workers", "0")
    assert result.code == 0
    assert "scored 100 images: every image: the model records no training split" in flat(result.out)
    assert run_cli("evaluate", old, digits, "--split", "val").code == 2


def test_evaluate_prefers_test_then_val_folders(tmp_path, run_cli):
    """Item 1: split folders: test/ first, then val/; --split picks one. Fails on the old main (no split
    reported)."""
    for split, count in (("train", 6), ("val", 3), ("test", 2)):
        write_textures(tmp_path / "data" / split, per_class=count, seed=len(split))
    model = tmp_path / "m.safetensors"
    import torch

    from cnncli.models.checkpoint import save_model
    from cnncli.models.registry import create_model

    torch.manual_seed(0)
    built = create_model("simplecnn", classes=["brick", "grass", "gravel"])
    save_model(model, built.model, built.card)
    auto = json.loads(run_cli("evaluate", model, tmp_path / "data", "-f", "json", "--workers", "0").out)
    assert auto["split"]["name"] == "test" and auto["n_images"] == 6
    val = json.loads(run_cli("evaluate", model, tmp_path / "data", "-f", "json", "--workers", "0",
                             "--split", "val").out)
    assert val["split"]["name"] == "val" and val["n_images"] == 9
    help_text = run_cli("evaluate", "--help").out
    assert "--split" in help_text and "all" in help_text and "--errors" in help_text


def test_top5_is_not_reported_for_five_classes_or_fewer(digits, tmp_path, run_cli):
    """Item 2: with <= 5 classes top-5 is always 1.0, so it is null in JSON and n/a in the table; with 10
    classes it is a number. Fails on the old main (top5 1.0 for 3 classes)."""
    from cnncli.evaluate.run import compute_metrics

    rng = np.random.default_rng(0)
    three = compute_metrics(rng.dirichlet(np.ones(3), 20), rng.integers(0, 3, 20), ["a", "b", "c"])
    assert three.top5 is None
    six = compute_metrics(rng.dirichlet(np.ones(6), 20), rng.integers(0, 6, 20), list("abcdef"))
    assert six.top5 is not None and 0 < six.top5 <= 1

    data = tmp_path / "three"
    for name in ("0", "1", "2"):
        shutil.copytree(digits / name, data / name)
    model = save_lenet(tmp_path / "m3.safetensors", ["0", "1", "2"])
    report = json.loads(run_cli("evaluate", model, data, "-f", "json", "--workers", "0").out)
    assert report["top5"] is None
    assert "top-5 n/a" in flat(run_cli("evaluate", model, data, "--workers", "0").out)
    ten = json.loads(run_cli("evaluate", save_lenet(tmp_path / "m10.safetensors", DIGITS), digits, "-f", "json",
                             "--workers", "0").out)
    assert isinstance(ten["top5"], float)


def test_evaluate_json_lists_every_misclassified_image(digits, tmp_path, run_cli):
    """Item 8: the JSON lists every error (not 12); --errors N limits it; the table shows 12 and says how many
    more. Fails on the old main (12 at most, no --errors)."""
    model = save_lenet(tmp_path / "m.safetensors", DIGITS)  # random weights: most images wrong
    report = json.loads(run_cli("evaluate", model, digits, "-f", "json", "--workers", "0").out)
    matrix = np.array(report["confusion_matrix"])
    wrong = int(matrix.sum() - matrix.trace())
    assert wrong > 12 and len(report["errors"]) == wrong
    probs = [e["prob"] for e in report["errors"]]
    assert probs == sorted(probs, reverse=True)
    assert len(json.loads(run_cli("evaluate", model, digits, "-f", "json", "--errors", "5",
                                  "--workers", "0").out)["errors"]) == 5
    table = run_cli("evaluate", model, digits, "--workers", "0")
    assert f"({wrong - 12} more misclassified images" in flat(table.out)
    assert run_cli("evaluate", model, digits, "--errors", "some").code == 2


def test_plots_mark_the_best_epoch_caption_errors_and_keep_the_legend_off_the_bars(digits, tmp_path):
    """Item 8: curves.png marks the best epoch with integer epoch ticks; errors.png captions each image with its
    file name, true and predicted class; the reliability legend does not overlap the bars. Fails on the old main
    (none of these figure builders existed; the old plots had none of these marks)."""
    from cnncli.evaluate.plots import curves_figure, error_gallery_figure, reliability_figure

    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": [0.9, 0.5, 0.6][e - 1], "train_acc": 0.3 * e,
                "val_acc": [0.4, 0.8, 0.7][e - 1]} for e in (1, 2, 3)]
    fig = curves_figure(history, best_epoch=2)
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        labels = [line.get_label() for line in ax.get_lines()]
        assert "best epoch 2" in labels
        best = ax.get_lines()[labels.index("best epoch 2")]
        assert list(best.get_xdata()) == [2]
    assert list(fig.axes[1].get_lines()[-1].get_ydata()) == [0.8]

    files = sorted((digits / "7").iterdir())[:3]
    errors = [{"path": str(f), "true": "7", "predicted": "1", "prob": 0.9 - i / 10} for i, f in enumerate(files)]
    fig = error_gallery_figure(errors, total=40)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3
    for title, f in zip(titles, files):
        assert f.name in title and "true 7" in title and "pred 1" in title
    assert "3 of 40" in fig._suptitle.get_text()

    bins = [{"lower": i / 10, "upper": (i + 1) / 10, "count": 5, "confidence": i / 10 + 0.05, "accuracy": 1.0}
            for i in range(10)]  # every bar at full height: a legend inside the axes would cover one
    fig = reliability_figure(bins, 0.3)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    for bar in ax.patches:
        assert not legend.overlaps(bar.get_window_extent(renderer))


def test_export_writes_next_to_the_model_and_never_replaces_without_force(digits, tmp_path, run_cli):
    """Item 7 (and item 1 for .onnx): `export MODEL` writes runs/x/best.onnx beside the model, refuses an existing
    file in one sentence (exit 2) unless --force; the exported card keeps the split record, so evaluating the
    .onnx scores the hold-out too. Fails on the old main (it wrote best.onnx into the cwd and replaced files)."""
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    model = save_lenet(run / "best.safetensors", DIGITS, recorded(digits))
    first = run_cli("export", model, "--no-verify")
    assert first.code == 0, first.err
    onnx_file = run / "best.onnx"
    assert onnx_file.is_file() and "best.onnx" in first.err
    before = onnx_file.read_bytes()

    again = run_cli("export", model, "--no-verify")
    assert again.code == 2 and "already exists" in again.err and "--force" in again.err
    assert len(again.err.strip().splitlines()) == 1 and onnx_file.read_bytes() == before
    other = tmp_path / "other.onnx"
    other.write_bytes(b"mine")
    assert run_cli("export", model, "-o", other, "--no-verify").code == 2 and other.read_bytes() == b"mine"
    assert run_cli("export", model, "-o", other, "--no-verify", "--force").code == 0 and other.stat().st_size > 1000

    report = json.loads(run_cli("evaluate", onnx_file, digits, "-f", "json", "--workers", "0").out)
    assert report["split"]["name"] == "val" and report["n_images"] == 20
