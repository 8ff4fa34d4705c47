"""``--engine auto`` on OpenVINO for large jobs where it is installed, exact and faster (issue 24): the check runs
once per machine and model and is kept in the cache; small jobs never look (the one-image cold start imports
neither OpenVINO nor torch, tests/test_onnx_engine.py); OpenVINO's replicas give the same probabilities as its
engine in this process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnncli.engines import openvino_choice
from cnncli.engines.base import open_engine

pytest.importorskip("openvino")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCLI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def onnx_file(tiny_model_file):
    return open_engine(str(tiny_model_file), device="cpu", engine="onnx").path


def test_the_check_is_made_once_and_kept(onnx_file, cache, monkeypatch):
    verdict = openvino_choice.check_openvino(onnx_file)
    assert verdict["exact"] and verdict["relative_diff"] <= 1e-4  # f32 on both: within the export tolerance
    assert verdict["onnx_img_s"] > 0 and verdict["openvino_img_s"] > 0
    monkeypatch.setattr(openvino_choice, "FASTER", 0.0)  # the speed is this machine's: decide on exactness here
    assert openvino_choice.openvino_pays(onnx_file, 10_000)
    kept = json.loads((cache / openvino_choice.CHECK_FILE).read_text())["models"]
    assert len(kept) == 1 and next(iter(kept.values()))["exact"]
    calls = []
    monkeypatch.setattr(openvino_choice, "check_openvino", lambda *a: calls.append(a) or {})
    assert openvino_choice.openvino_pays(onnx_file, 10_000) and calls == []  # from the cache
    assert not openvino_choice.openvino_pays(onnx_file, openvino_choice.OPENVINO_MIN_IMAGES - 1) and calls == []


def test_auto_runs_a_large_job_on_openvino_and_a_small_one_on_onnxruntime(tiny_model_file, cache, monkeypatch):
    monkeypatch.setattr(openvino_choice, "FASTER", 0.0)
    large = open_engine(str(tiny_model_file), device="cpu", job_images=1000)
    small = open_engine(str(tiny_model_file), device="cpu", job_images=1)
    assert large.name.startswith("openvino") and small.name.startswith("onnxruntime")
    batch = np.random.default_rng(1).standard_normal((4, 3, *small.card.preprocessing.input_size)).astype(np.float32)
    np.testing.assert_allclose(large.predict_proba(batch), small.predict_proba(batch), atol=1e-5)
    monkeypatch.setattr(openvino_choice, "FASTER", 1e9)  # a machine where OpenVINO is slower: onnxruntime
    (cache / openvino_choice.CHECK_FILE).unlink()
    assert open_engine(str(tiny_model_file), device="cpu", job_images=1000).name.startswith("onnxruntime")


def test_a_failing_check_leaves_onnxruntime(onnx_file, cache, monkeypatch):
    def broken(*args):
        raise RuntimeError("no kernel for this op")

    monkeypatch.setattr(openvino_choice, "check_openvino", broken)
    assert not openvino_choice.openvino_pays(onnx_file, 10_000)


def test_openvino_replicas_match_its_engine_here_bit_for_bit(tiny_model_file, photos, tmp_path):
    from PIL import Image

    from cnncli.data.inputs import collect_inputs
    from cnncli.predict.run import predict_items

    for i in range(12):
        img = Image.open(photos["chelsea" if i % 2 else "coffee"]).convert("RGB")
        img.crop((i * 7, i * 5, 220 + i * 3, 200)).save(tmp_path / f"img_{i:02d}.jpg", quality=90)
    engine = open_engine(str(tiny_model_file), device="cpu", engine="openvino", threads=2)
    items = collect_inputs([str(tmp_path)])
    here = list(predict_items(engine, items, k=3, batch_size=3, workers=0))
    for pipeline in ("replicas", "decoders"):
        there = list(predict_items(engine, items, k=3, batch_size=3, pipeline=pipeline))
        assert [p.top for p in there] == [p.top for p in here], pipeline
