"""`evaluate`: metrics against a hand count, and the command end to end through the engine interface."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_data import write_textures

from cnncli.evaluate.run import compute_metrics


def rows(predicted: list[int], confidence: list[float], n_classes: int = 3) -> np.ndarray:
    out = np.zeros((len(predicted), n_classes))
    for i, (p, c) in enumerate(zip(predicted, confidence)):
        out[i, :] = (1 - c) / (n_classes - 1)
        out[i, p] = c
    return out


def test_metrics_match_a_hand_count():
    labels = [0, 0, 1, 1, 2, 2]
    predicted = [0, 1, 1, 1, 2, 0]
    confidence = [0.9, 0.62, 0.7, 0.78, 0.55, 0.95]
    paths = [f"img{i}.png" for i in range(6)]
    r = compute_metrics(rows(predicted, confidence), np.array(labels), ["a", "b", "c"], paths)
    assert r.n_images == 6
    assert r.top1 == pytest.approx(4 / 6) and r.top5 is None  # 3 classes: top-5 not reported
    assert r.confusion_matrix == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert r.per_class["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert r.per_class["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert r.per_class["c"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert r.macro_avg["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert r.weighted_avg["recall"] == pytest.approx(4 / 6)
    # 15 equal bins: |acc - conf| weighted by count: 0.9 ok, 0.62 wrong, 0.7 ok, 0.78 ok, 0.55 ok, 0.95 wrong
    assert r.ece == pytest.approx((0.1 + 0.62 + 0.3 + 0.22 + 0.45 + 0.95) / 6)
    assert sum(b["count"] for b in r.reliability) == 6
    assert [(e["path"], e["true"], e["predicted"]) for e in r.errors] == [("img5.png", "c", "a"),
                                                                        ("img1.png", "a", "b")]
    assert r.errors[0]["prob"] == pytest.approx(0.95)


def test_averages_match_scikit_learn_when_classes_are_absent():
    """A 10-class model evaluated on images of 3 classes, predicting 4: macro scores average the classes that
    occur in the data or the predictions, like scikit-learn; the table lists just those and says so."""
    import io

    from sklearn.metrics import precision_recall_fscore_support

    from cnncli.evaluate.run import render_evaluation

    rng = np.random.default_rng(0)
    labels = rng.choice([1, 4, 7], size=60)
    predicted = np.where(rng.random(60) < 0.7, labels, rng.choice([1, 4, 7, 9], size=60))
    classes = [f"class{i}" for i in range(10)]
    r = compute_metrics(rows(list(predicted), [0.8] * 60, n_classes=10), labels, classes)
    for average, ours in (("macro", r.macro_avg), ("weighted", r.weighted_avg)):
        expected = precision_recall_fscore_support(labels, predicted, average=average, zero_division=0)[:3]
        assert [ours["precision"], ours["recall"], ours["f1"]] == pytest.approx(list(expected))
    out = io.StringIO()
    render_evaluation(r, out)
    per_class_table, confusion_table = out.getvalue().split("per class")[1].split("confusion matrix")
    for text in (per_class_table, confusion_table.split("most confidently wrong")[0]):
        assert {f"class{i}" for i in range(10) if f"class{i} " in text} == {"class1", "class4", "class7", "class9"}
    assert "6 classes with no images and no predictions are not shown" in out.getvalue()


def test_confusion_table_numbers_its_columns_when_names_do_not_fit():
    import io

    from cnncli.evaluate.run import render_evaluation

    short = compute_metrics(rows([0, 1, 2], [0.9] * 3), np.array([0, 1, 2]), ["cat", "dog", "owl"])
    long_names = [f"a rather long name {i:02d}" for i in range(12)]
    long = compute_metrics(rows(list(range(12)), [0.9] * 12, n_classes=12), np.arange(12), long_names)
    for result, header, first_row in ((short, ["cat", "dog", "owl"], "cat"),
                                      (long, [str(i) for i in range(12)], "0 a rather long name 00")):
        out = io.StringIO()
        render_evaluation(result, out)
        lines = [line for line in out.getvalue().split("confusion matrix")[1].splitlines()[1:] if line.strip()]
        assert lines[0].split() == header
        assert lines[2].strip().startswith(first_row)


def test_evaluate_command_json_plots_and_unreadable(tmp_path, run_cli):
    import torch

    from cnncli.data.images import load_and_preprocess
    from cnncli.engines.torch_engine import TorchEngine
    from cnncli.models.card import ModelCard
    from cnncli.models.checkpoint import save_model
    from cnncli.models.registry import build_architecture, default_preprocessing

    data = write_textures(tmp_path / "data", per_class=4)
    (data / "grass" / "zz_broken.png").write_bytes(b"not an image at all")
    torch.manual_seed(0)
    model = build_architecture("simplecnn", 3)
    card = ModelCard(arch="simplecnn", classes=["brick", "grass", "gravel"],
                     preprocessing=default_preprocessing("simplecnn"))
    save_model(tmp_path / "m.safetensors", model, card)

    result = run_cli("evaluate", tmp_path / "m.safetensors", data, "--format", "json", "--plots", tmp_path / "plots",
                     "--workers", "0")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    for key in ("top1", "top5", "per_class", "confusion_matrix", "classes", "n_images", "ece", "errors"):
        assert key in report
    assert report["n_images"] == 12 and len(report["unreadable"]) == 1
    # hand count with an independent path: the engine on each image, one at a time
    engine = TorchEngine(model, card, device="cpu")
    truth, hits = [], 0
    for label, name in enumerate(card.classes):
        for path in sorted((data / name).glob(f"{name}_*.png")):
            probs = engine.predict_proba(load_and_preprocess(path, card.preprocessing)[None])[0]
            hits += int(probs.argmax() == label)
            truth.append(label)
    assert report["top1"] == pytest.approx(hits / 12)
    matrix = np.array(report["confusion_matrix"])
    assert matrix.sum() == 12 and matrix.trace() == hits and list(matrix.sum(axis=1)) == [4, 4, 4]
    for name in ("confusion_matrix.png", "reliability.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000

    table = run_cli("evaluate", tmp_path / "m.safetensors", data, "--workers", "0", "--engine", "torch")
    assert table.code == 0 and "macro avg" in table.out and "brick" in table.out
    torch_json = run_cli("evaluate", tmp_path / "m.safetensors", data, "--workers", "0", "--engine", "torch",
                         "-f", "json")
    assert json.loads(torch_json.out)["confusion_matrix"] == report["confusion_matrix"]  # onnx (auto) == torch
