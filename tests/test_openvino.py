"""--engine openvino (issue 15 item 3): the same cached export compiled by OpenVINO gives onnxruntime's top-1 and
probabilities within the export tolerance in f32; bf16 is judged like int8 (accuracy and agreement on the labelled
ImageNet images); the compiled model is cached in the cnncli cache; options that cannot work say so (exit 2).
All of it is new in issue 15: the old main had no --engine openvino."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cnncli.engines.base import open_engine
from cnncli.export.judge import judge_precision
from cnncli.export.to_onnx import FP32_RELATIVE_TOLERANCE, load_images

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed")


def cpu_has_bf16() -> bool:
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def imagenet(imagenet_samples):
    onnx_engine = open_engine(None, device="cpu", engine="onnx", threads=2)
    x = load_images([p for p, _ in imagenet_samples], onnx_engine.card)
    x = np.concatenate([x, np.ascontiguousarray(x[..., ::-1])])  # and their mirrors
    labels = np.array([label for _, label in imagenet_samples] * 2)
    return onnx_engine, x, labels


def test_openvino_f32_matches_onnxruntime_within_the_export_tolerance(imagenet):
    onnx_engine, x, _ = imagenet
    engine = open_engine(None, device="cpu", engine="openvino", threads=2)
    assert engine.name == "openvino (CPU, fp32)" and engine.card.classes == onnx_engine.card.classes
    reference, logits = onnx_engine.predict_logits(x), engine.predict_logits(x)
    span = reference.max() - reference.min()
    assert np.abs(logits - reference).max() <= FP32_RELATIVE_TOLERANCE * span
    assert (logits.argmax(1) == reference.argmax(1)).all()
    assert np.abs(engine.predict_proba(x) - onnx_engine.predict_proba(x)).max() < 1e-4
    assert any((Path(os.environ["CNNCLI_CACHE"]) / "openvino").iterdir())  # the compiled model is cached
    assert engine.predict_proba(x[:1]).shape == (1, 1000)  # any batch size


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 (AVX-512 BF16 or AMX)")
def test_openvino_bf16_is_judged_like_int8(imagenet):
    onnx_engine, x, labels = imagenet
    engine = open_engine(None, device="cpu", precision="bf16", threads=2)  # auto: bf16 runs on OpenVINO
    assert engine.name == "openvino (CPU, bf16)"
    fp32, bf16 = onnx_engine.predict_proba(x), engine.predict_proba(x)
    assert np.abs(fp32 - bf16).max() > 1e-4  # really bf16, not f32 under another name
    figures = judge_precision(fp32, bf16, labels, precision="bf16")
    assert figures.accuracy_ok and figures.agreement_ok, figures.lines()
    assert figures.decisive_images >= 30


def test_predict_engine_openvino_on_the_command_line(run_cli, tiny_model_file, photos):
    args = ["predict", *photos.values(), "--model", tiny_model_file, "-f", "json", "--device", "cpu", "-k", "3"]
    runs = {name: run_cli(*args, "--engine", name) for name in ("onnx", "openvino")}
    assert all(r.code == 0 for r in runs.values()), [r.err for r in runs.values()]
    onnx_out, ov_out = (json.loads(runs[n].out) for n in ("onnx", "openvino"))
    for a, b in zip(onnx_out, ov_out):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        assert max(abs(s["prob"] - t["prob"]) for s, t in zip(a["top"], b["top"])) < 1e-4
    wrong = run_cli("predict", photos["chelsea"], "--model", tiny_model_file, "--precision", "bf16", "--engine", "onnx")
    assert wrong.code == 2 and "runs on OpenVINO" in wrong.err
    wrong = run_cli("predict", photos["chelsea"], "--model", tiny_model_file, "--engine", "openvino",
                    "--device", "cuda")
    assert wrong.code == 2 and "--device cpu" in wrong.err


def test_openvino_runs_the_cached_static_int8_export(run_cli, tiny_model_file, photos, calib_crops):
    """--engine openvino --precision int8 compiles the same calibrated QDQ export onnxruntime runs (VNNI kernels
    where the CPU has them): its probabilities stay within 0.02 of onnxruntime int8's."""
    calib = calib_crops
    args = ["predict", *photos.values(), "--model", tiny_model_file, "-f", "json", "--device", "cpu", "-k", "3",
            "--precision", "int8", "--calib", calib]
    runs = {name: run_cli(*args, "--engine", name) for name in ("onnx", "openvino")}
    assert all(r.code == 0 for r in runs.values()), [r.err for r in runs.values()]
    for a, b in zip(*(json.loads(runs[n].out) for n in ("onnx", "openvino"))):
        probs_a = {t["index"]: t["prob"] for t in a["top"]}
        assert max(abs(probs_a[t["index"]] - t["prob"]) for t in b["top"]) < 0.02
    engine = open_engine(str(tiny_model_file), device="cpu", engine="openvino", precision="int8", calib=str(calib))
    assert engine.name == "openvino (CPU, int8)" and "int8" in engine.path.name
