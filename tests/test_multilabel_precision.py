"""Lower precision for multi-label models, judged by per-class agreement of the decisions at the thresholds: the
measure on fixed probabilities (recomputed here by loops), the verdict (near-threshold flips do not count, decisive
ones do), and on a tiny trained model: `export --int8 static` / `--fp16` judged on the recorded validation set, an
export whose decisions disagree refused, and `evaluate --precision int8` checked against what `predict` says with
each precision on the same images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from multilabel_data import write_digit_mosaics

from cnncli.export.multilabel_judge import (
    DECISIVE_MARGIN,
    MIN_CLASS_AGREEMENT,
    judge_multilabel_precision,
    multilabel_agreement,
)

CLASSES = ["a", "b", "c"]


def test_the_measure_counts_each_class_decisions_against_fp32():
    rng = np.random.default_rng(3)
    fp32 = rng.random((40, 3))
    low = np.clip(fp32 + rng.normal(0, 0.08, fp32.shape), 0, 1)
    thresholds = [0.3, 0.5, 0.7]
    measured = multilabel_agreement(fp32, low, thresholds, CLASSES)
    for c, t in enumerate(thresholds):
        same = [(fp32[i, c] >= t) == (low[i, c] >= t) for i in range(40)]
        decisive = [s for i, s in enumerate(same) if abs(fp32[i, c] - t) >= DECISIVE_MARGIN]
        assert measured.agreement[c] == pytest.approx(sum(same) / 40)
        assert measured.decisive_agreement[c] == pytest.approx(sum(decisive) / len(decisive))
    assert min(measured.agreement) < 1  # the noise flips some decisions
    worst = int(np.argmin(measured.agreement))
    assert measured.worst == (CLASSES[worst], measured.agreement[worst])
    assert measured.mean == pytest.approx(np.mean(measured.agreement))
    assert measured.max_prob_diff == pytest.approx(np.abs(low - fp32).max())


def test_the_verdict_ignores_flips_on_the_threshold_and_fails_decisive_ones():
    thresholds = [0.5, 0.5, 0.5]
    fp32 = np.tile([0.9, 0.1, 0.51], (100, 1))
    near = fp32.copy()
    near[:, 2] = 0.49  # every decision of class c flips, but fp32 sat 0.01 from its threshold
    figures = judge_multilabel_precision(fp32, near, thresholds, CLASSES)
    assert figures.agreement.worst == ("c", 0.0) and figures.agreement.decisive_agreement == [1.0, 1.0, None]
    assert figures.agreement_ok and figures.passed
    decisive = fp32.copy()
    decisive[:2, 1] = 0.6  # 2 of 100 decisive decisions of class b flip: 98% < 99%
    figures = judge_multilabel_precision(fp32, decisive, thresholds, CLASSES)
    assert figures.agreement.worst_decisive == ("b", pytest.approx(0.98)) and not figures.passed
    assert MIN_CLASS_AGREEMENT > 0.98
    decisive[1, 1] = 0.1  # 1 of 100: 99% passes
    assert judge_multilabel_precision(fp32, decisive, thresholds, CLASSES).passed
    ranked = np.random.default_rng(0).random((100, 3))
    targets = (ranked >= 0.5).astype(float)  # fp32 ranks every class perfectly: mAP 1
    worse = ranked.copy()
    worse[:, 0] = 1 - ranked[:, 0]  # class a's ranking reversed
    figures = judge_multilabel_precision(ranked, worse, thresholds, CLASSES, targets)
    assert figures.fp32_map == pytest.approx(1.0) and figures.map_drop > 0.01
    assert figures.map_ok is False and not figures.passed


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A lenet5 trained with the multi-label defaults on 200 mosaics of 4 digits (about 5 s)."""
    from cnncli.train.config import TrainConfig
    from cnncli.train.loop import run_training

    root = tmp_path_factory.mktemp("ml-precision")
    manifest = write_digit_mosaics(root, n=200, classes=4, size=32)
    cfg = TrainConfig(data=str(manifest), arch="lenet5", grayscale=True, image_size=32, epochs=6, batch_size=16,
                      lr=0.01, augment="none", workers=0, out=str(root / "run"))
    result = run_training(cfg, log=lambda line: None)
    return {"manifest": manifest, "root": root, "model": result.out_dir / "best.safetensors"}


def test_export_judges_int8_and_fp16_on_the_recorded_validation_set(trained, run_cli, tmp_path):
    from cnncli.data.multilabel import load_multilabel_dataset

    n_val = len(load_multilabel_dataset(trained["manifest"], val_split=0.2, seed=0).val)
    for flag, precision in ((["--int8", "static"], "int8-static"), (["--fp16"], "fp16")):
        out = run_cli("export", trained["model"], *flag, "-o", tmp_path / f"{precision}.onnx")
        assert out.code == 0, out.err
        text = " ".join(out.err.split())  # the console wraps lines
        shown = precision.split("-")[0]  # int8-static is judged as int8
        assert f"{shown} against fp32 on the model's recorded validation set ({n_val} images" in text, text
        verified = text.split(f"verified {precision} vs PyTorch fp32")[1].split(" against fp32")[0]
        assert "decisions at the thresholds agree with fp32's" in verified and "top-1" not in verified
        assert "(a) mAP on them" in text and "(b) per-class agreement with fp32's decisions" in text


def test_an_export_whose_decisions_disagree_is_refused(trained, tmp_path):
    from cnncli.export.to_onnx import ExportError, export_onnx
    from cnncli.models.spec import load_for_inference

    model, card = load_for_inference(str(trained["model"]), device="cpu")
    images = sorted((trained["root"] / "images").glob("m*.png"))[:8]
    with pytest.raises(ExportError, match="decisions at the thresholds agree with fp32's for only"):
        export_onnx(model, card, tmp_path / "x.onnx", precision="fp16", verify_images=images, min_agreement=1.01)
    assert (tmp_path / "x.unverified.onnx").is_file() and not (tmp_path / "x.onnx").exists()


def test_evaluate_precision_int8_reports_what_predict_decides_with_each_precision(trained, run_cli):
    from cnncli.data.multilabel import load_multilabel_dataset

    out = run_cli("evaluate", trained["model"], trained["manifest"], "--precision", "int8", "-f", "json",
                  "--workers", "0")
    assert out.code == 0, out.err
    report = json.loads(out.out)
    figures = report["precision"]
    assert report["task"] == figures["task"] == "multilabel" and figures["precision"] == "int8"
    assert figures["speedup"] > 0 and isinstance(figures["passed"], bool)
    val = [str(s.path) for s in load_multilabel_dataset(trained["manifest"], val_split=0.2, seed=0).val]
    assert figures["images"] == report["n_images"] == len(val)

    def predicted(*precision):
        done = run_cli("predict", *val, "-m", trained["model"], "--engine", "onnx", *precision, "-f", "json",
                       "-k", "4", "--workers", "0")
        assert done.code == 0, done.err
        return {row["path"]: row for row in json.loads(done.out)}

    fp32, int8 = predicted(), predicted("--precision", "int8")
    agreement = figures["agreement"]
    for name in ["0", "1", "2", "3"]:
        same = [(name in fp32[p]["labels"]) == (name in int8[p]["labels"]) for p in val]
        assert agreement["per_class"][name] == pytest.approx(sum(same) / len(val))
    diffs = [abs(a["prob"] - {t["label"]: t["prob"] for t in int8[p]["top"]}[a["label"]])
             for p in val for a in fp32[p]["top"]]
    assert agreement["max_prob_diff"] == pytest.approx(max(diffs), abs=1e-6)
    table = run_cli("evaluate", trained["model"], trained["manifest"], "--precision", "int8", "--workers", "0")
    assert "int8 against fp32 on the same" in table.out and "(b) per-class agreement" in table.out
