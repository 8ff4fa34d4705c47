"""Multi-label classification end to end on a small real task (2x2 mosaics of scikit-learn digits, labelled with
the digits they show): training with the defaults, evaluate's figures, the stratified split, predict / ONNX export /
a real `cnncli serve` process agreeing on labels and probabilities, thresholds, and the refused manifests."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from multilabel_data import write_digit_mosaics
from serve_helpers import ServeProcess

from cnncli.models.checkpoint import read_card

MOSAIC_CLASSES = 4
MAP_FLOOR = 0.80  # measured 0.915 (seed 0, 10 epochs, lenet5 32 px)
EXACT_MATCH_FLOOR = 0.30  # measured 0.50
SHARE_TOLERANCE = 0.05  # each class's share of val within 5 points of --val-split 0.2 (measured max 0.01)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A lenet5 trained with the multi-label defaults (BCE, thresholds tuned on val) on 300 mosaics."""
    from cnncli.train.config import TrainConfig
    from cnncli.train.loop import run_training

    root = tmp_path_factory.mktemp("mosaics")
    manifest = write_digit_mosaics(root, n=300, classes=MOSAIC_CLASSES, size=32)
    lines: list[str] = []
    cfg = TrainConfig(data=str(manifest), arch="lenet5", grayscale=True, image_size=32, epochs=10, batch_size=16,
                      lr=0.01, augment="none", workers=0, out=str(root / "run"))
    result = run_training(cfg, log=lines.append)
    return {"manifest": manifest, "root": root, "result": result, "log": lines,
            "model": result.out_dir / "best.safetensors"}


def test_training_detects_the_task_and_evaluate_beats_the_floors(trained, run_cli):
    assert trained["log"][0].startswith("multi-label task: 4 classes")
    card = read_card(trained["model"])
    assert card.task == "multilabel" and len(card.thresholds) == MOSAIC_CLASSES
    assert card.thresholds != [0.5] * MOSAIC_CLASSES  # tuned on val
    assert "val_map" in (trained["result"].out_dir / "results.csv").read_text().splitlines()[0]
    out = run_cli("evaluate", trained["model"], trained["manifest"], "--format", "json", "--workers", "0")
    assert out.code == 0, out.err
    report = json.loads(out.out)
    assert report["task"] == "multilabel"
    assert report["mAP"] >= MAP_FLOOR and report["exact_match"] >= EXACT_MATCH_FLOOR, report
    assert report["n_images"] == 60  # the held-out 20%, rebuilt from the card's split record
    assert report["mAP"] == pytest.approx(trained["result"].metrics["val_map"], abs=1e-4)
    assert report["thresholds"] == pytest.approx(card.thresholds)
    assert set(report["per_class"]["0"]) >= {"ap", "precision", "recall", "f1", "support", "threshold"}
    assert 0 <= report["hamming_loss"] <= 1 and report["micro_avg"]["f1"] > 0.5
    table = run_cli("evaluate", trained["model"], trained["manifest"], "--workers", "0")
    assert "mAP" in table.out and "exact match" in table.out and "most confidently wrong" in table.out


def test_the_stratified_split_keeps_each_class_share(trained):
    from cnncli.data.multilabel import label_matrix, load_multilabel_dataset

    splits = load_multilabel_dataset(trained["manifest"], val_split=0.2, seed=0)
    train = label_matrix(splits.train, MOSAIC_CLASSES).sum(axis=0)
    val = label_matrix(splits.val, MOSAIC_CLASSES).sum(axis=0)
    assert np.all(np.abs(val / (train + val) - 0.2) <= SHARE_TOLERANCE)
    assert len(splits.val) == 60


def _by_path(rows):
    return {r["path"].rsplit("/", 1)[-1]: r for r in rows}


def test_predict_onnx_and_serve_give_the_same_labels_and_probabilities(trained, run_cli, tmp_path):
    images = sorted((trained["root"] / "images").glob("m1?.png"))[:6]
    card = read_card(trained["model"])
    torch_out = run_cli("predict", *images, "-m", trained["model"], "--engine", "torch", "-f", "json", "-k", "4",
                        "--workers", "0")
    assert torch_out.code == 0, torch_out.err
    torch_rows = _by_path(json.loads(torch_out.out))
    exported = tmp_path / "ml.onnx"
    assert run_cli("export", trained["model"], "-o", exported).code == 0
    onnx_rows = _by_path(json.loads(run_cli("predict", *images, "-m", exported, "-f", "json", "-k", "4",
                                            "--workers", "0").out))
    server = ServeProcess("--model", exported, "--workers", "1")
    try:
        served = {}
        for image in images:
            answer = httpx.post(server.url + "/v1/classify?top_k=4", content=image.read_bytes(), timeout=30)
            assert answer.status_code == 200, answer.text
            served[image.name] = answer.json()[0]
        page = httpx.get(server.url + "/", timeout=30).text
    finally:
        server.stop()
    assert "result.labels" in page  # the page shows the labels
    assert set(torch_rows) == set(onnx_rows) == set(served) == {i.name for i in images}
    for name, row in torch_rows.items():
        probs = {t["label"]: t["prob"] for t in row["top"]}
        expected = sorted((c for c, t in zip(card.classes, card.thresholds) if probs[c] >= t), key=lambda c: -probs[c])
        assert row["labels"] == expected  # the card's thresholds decide
        for other in (onnx_rows[name], served[name]):
            assert other["labels"] == row["labels"]
            assert {t["label"]: t["prob"] for t in other["top"]} == pytest.approx(probs, abs=1e-5)
    everything = _by_path(json.loads(run_cli("predict", *images, "-m", exported, "-f", "json", "--threshold", "0",
                                             "--workers", "0").out))
    assert all(len(r["labels"]) == MOSAIC_CLASSES for r in everything.values())
    strict = _by_path(json.loads(run_cli("predict", *images, "-m", exported, "-f", "json", "--threshold", "0.99",
                                         "--workers", "0").out))
    for row in strict.values():
        assert row["labels"] == [t["label"] for t in row["top"] if t["prob"] >= 0.99]
    exported_card = json.loads(__import__("onnx").load(str(exported)).metadata_props[0].value)
    assert exported_card["task"] == "multilabel" and exported_card["thresholds"] == pytest.approx(card.thresholds)


def _manifest(tmp_path, rows: list[str], name: str = "labels.csv"):
    from PIL import Image

    (tmp_path / "img").mkdir(exist_ok=True)
    for i in range(4):
        Image.new("L", (16, 16), 40 * i).save(tmp_path / "img" / f"{i}.png")
    path = tmp_path / name
    path.write_text("path,labels\n" + "\n".join(rows) + "\n")
    return path


GOOD_ROWS = ["img/0.png,a|b", "img/1.png,b", "img/2.png,a", "img/3.png,"]


@pytest.mark.parametrize("rows, sentence", [
    (["img/0.png,a|b|a", "img/1.png,b"], "the label 'a' is listed twice"),
    (["img/0.png,a|b;c", "img/1.png,b"], "mix '|' and ';'"),
    (["img/0.png,a|b", "img/1.png,b", "img/0.png,a"], "is listed again with other labels"),
    (["img/0.png,a|b", "img/1.png,b", "img/2.png,b;a"], "separated by ';' but line 2 separates them with '|'"),
])
def test_bad_manifests_are_refused_in_one_sentence(tmp_path, run_cli, rows, sentence):
    out = run_cli("train", _manifest(tmp_path, rows), "--arch", "lenet5", "--epochs", "1", "--out", tmp_path / "r")
    assert out.code == 2
    assert sentence in out.err and out.err.strip().count("\n") == 0, out.err
    assert not (tmp_path / "r").exists()


def test_packing_a_multilabel_manifest_is_refused(tmp_path, run_cli):
    out = run_cli("data", "pack", _manifest(tmp_path, GOOD_ROWS), tmp_path / "packed")
    assert out.code == 2 and "is a multi-label manifest" in out.err and out.err.strip().count("\n") == 0, out.err
    assert not (tmp_path / "packed").exists()


def test_evaluating_on_a_label_the_model_does_not_know_is_refused(trained, tmp_path, run_cli):
    manifest = tmp_path / "other.csv"
    image = sorted((trained["root"] / "images").glob("*.png"))[0]
    manifest.write_text(f"path,labels\n{image.name},1|zebra\n")
    (tmp_path / image.name).write_bytes(image.read_bytes())
    out = run_cli("evaluate", trained["model"], manifest, "--workers", "0")
    assert out.code == 2 and "'zebra' is not one of the 4 classes of the model" in out.err, out.err


def test_a_val_label_train_never_saw_is_refused(tmp_path, run_cli):
    train = _manifest(tmp_path, GOOD_ROWS)
    val = _manifest(tmp_path, ["img/1.png,a|zebra"], "val.csv")
    out = run_cli("train", train, "--val-csv", val, "--arch", "lenet5", "--epochs", "1", "--out", tmp_path / "r")
    assert out.code == 2 and "'zebra' is not one of the 2 classes" in out.err, out.err


def test_single_label_models_refuse_threshold_and_keep_their_card(tiny_model_file, run_cli, photos):
    out = run_cli("predict", photos["chelsea"], "-m", tiny_model_file, "--engine", "torch", "--threshold", "0.5")
    assert out.code == 2 and "--threshold applies to multi-label models" in out.err
    card = read_card(tiny_model_file)
    assert card.task == "single" and "task" not in card.to_dict() and "thresholds" not in card.to_json()
    single = run_cli("predict", photos["chelsea"], "-m", tiny_model_file, "--engine", "torch", "-f", "json")
    assert "labels" not in json.loads(single.out)[0]


def test_serve_threshold_overrides_the_cards_thresholds(trained, run_cli, tmp_path, tiny_model_file):
    """A real `cnncli serve --threshold P` process answers the classes with probability >= P, not the card's."""
    images = sorted((trained["root"] / "images").glob("m2?.png"))[:8]
    card = read_card(trained["model"])
    exported = tmp_path / "ml.onnx"
    assert run_cli("export", trained["model"], "-o", exported).code == 0
    rows = json.loads(run_cli("predict", *images, "-m", exported, "-f", "json", "-k", "4", "--workers", "0").out)
    probs = np.array([[{t["label"]: t["prob"] for t in r["top"]}[c] for c in card.classes] for r in rows])
    threshold = float(np.round(np.median(probs), 3))  # between the card's per-class choices for some images
    expected = [[card.classes[i] for i in np.argsort(-p, kind="stable") if p[i] >= threshold] for p in probs]
    assert expected != [r["labels"] for r in rows]  # the override is observable on these images
    server = ServeProcess("--model", exported, "--workers", "1", "--threshold", str(threshold))
    try:
        served = [httpx.post(server.url + "/v1/classify?top_k=4", content=i.read_bytes(), timeout=30).json()[0]
                  for i in images]
        shown = httpx.get(server.url + "/v1/model", timeout=30).json()
    finally:
        server.stop()
    assert [s["labels"] for s in served] == expected
    assert shown["threshold"] == threshold and shown["thresholds"] == pytest.approx(card.thresholds)
    for bad in ("1.5", "-0.1", "x"):
        out = run_cli("serve", "--model", exported, "--threshold", bad, "--port", "0")
        assert out.code == 2 and "--threshold" in out.err, out.err
    single = run_cli("serve", "--model", tiny_model_file, "--engine", "torch", "--threshold", "0.5", "--port", "0")
    assert single.code == 2 and "--threshold applies to multi-label models" in single.err, single.err


def test_the_readme_onnx_snippet_gives_predicts_labels_and_probabilities(trained, run_cli, tmp_path):
    """The README's run_onnx.py (onnxruntime, Pillow, numpy) on a multi-label export: cnncli predict's labels at the
    card's thresholds, and its sigmoid probabilities."""
    import subprocess
    import sys

    from test_readme import ROOT, python_file_blocks

    script = tmp_path / "run_onnx.py"
    script.write_text(python_file_blocks((ROOT / "README.md").read_text())["run_onnx.py"])
    exported = tmp_path / "ml.onnx"
    assert run_cli("export", trained["model"], "-o", exported).code == 0
    images = sorted((trained["root"] / "images").glob("m3?.png"))[:4]
    rows = json.loads(run_cli("predict", *images, "-m", exported, "-f", "json", "-k", "4", "--workers", "0").out)
    for image, row in zip(images, rows):
        done = subprocess.run([sys.executable, str(script), str(exported), str(image)], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        first, *lines = done.stdout.splitlines()
        assert first.startswith("labels:") and first[len("labels:"):].strip() == ", ".join(row["labels"])
        printed = {label: float(prob) for label, prob in (line.split("\t") for line in lines)}
        assert printed == pytest.approx({t["label"]: t["prob"] for t in row["top"]}, abs=2e-4)


def test_inspect_model_shows_the_task_and_thresholds(trained, run_cli, tiny_model_file, tmp_path):
    card = read_card(trained["model"])
    report = json.loads(run_cli("inspect", trained["model"], "-f", "json").out)
    assert report["metadata"]["task"] == "multilabel" and report["metadata"]["thresholds"] == card.thresholds
    table = run_cli("inspect", trained["model"], "--depth", "1").out
    assert "multi-label" in " ".join(table.split()) and f"{card.classes[0]}: {card.thresholds[0]:.3f}" in table
    exported = tmp_path / "ml.onnx"
    assert run_cli("export", trained["model"], "-o", exported).code == 0
    assert "multi-label" in " ".join(run_cli("inspect", exported).out.split())
    single = json.loads(run_cli("inspect", tiny_model_file, "-f", "json").out)["metadata"]
    assert "task" not in single and "thresholds" not in single
