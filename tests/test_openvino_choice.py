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
    assert verdict["onnx_start_s"] > 0 and verdict["openvino_start_s"] > 0
    monkeypatch.setattr(openvino_choice, "FASTER", 0.0)  # the speed is this machine's: decide on exactness here
    monkeypatch.setattr(openvino_choice, "images_to_repay", lambda verdict: 0.0)
    assert openvino_choice.openvino_pays(onnx_file, 10_000)
    kept = json.loads((cache / openvino_choice.CHECK_FILE).read_text())["models"]
    assert len(kept) == 1 and next(iter(kept.values()))["exact"]
    calls = []
    monkeypatch.setattr(openvino_choice, "check_openvino", lambda *a: calls.append(a) or {})
    assert openvino_choice.openvino_pays(onnx_file, 10_000) and calls == []  # from the cache
    assert not openvino_choice.openvino_pays(onnx_file, openvino_choice.OPENVINO_MIN_IMAGES - 1) and calls == []


def test_auto_runs_a_large_job_on_openvino_and_a_small_one_on_onnxruntime(tiny_model_file, cache, monkeypatch):
    monkeypatch.setattr(openvino_choice, "FASTER", 0.0)
    monkeypatch.setattr(openvino_choice, "images_to_repay", lambda verdict: 0.0)
    large = open_engine(str(tiny_model_file), device="cpu", job_images=5000)
    small = open_engine(str(tiny_model_file), device="cpu", job_images=1)
    assert large.name.startswith("openvino") and small.name.startswith("onnxruntime")
    batch = np.random.default_rng(1).standard_normal((4, 3, *small.card.preprocessing.input_size)).astype(np.float32)
    np.testing.assert_allclose(large.predict_proba(batch), small.predict_proba(batch), atol=1e-5)
    monkeypatch.setattr(openvino_choice, "FASTER", 1e9)  # a machine where OpenVINO is slower: onnxruntime
    (cache / openvino_choice.CHECK_FILE).unlink()
    assert open_engine(str(tiny_model_file), device="cpu", job_images=5000).name.startswith("onnxruntime")


def test_openvino_must_repay_its_longer_start_within_the_job(onnx_file, cache, monkeypatch):
    # the EPYC of issue 24: 269 against 314 img/s, so 0.53 ms saved per image; a start 1.5 s longer is repaid
    # after about 2800 images, and a job must be twice that
    verdict = {"exact": True, "faster": True, "onnx_img_s": 269.0, "openvino_img_s": 314.0, "onnx_start_s": 0.1,
               "openvino_start_s": 1.6, "relative_diff": 1e-6}
    assert openvino_choice.images_to_repay(verdict) == pytest.approx(1.5 / (1 / 269 - 1 / 314))
    assert openvino_choice.images_to_repay({**verdict, "openvino_img_s": 250.0}) == float("inf")
    monkeypatch.setattr(openvino_choice, "check_openvino", lambda *a: verdict)
    assert not openvino_choice.openvino_pays(onnx_file, 5000)  # under twice the 2817 images that repay it
    assert openvino_choice.openvino_pays(onnx_file, 6000)
    monkeypatch.setattr(openvino_choice, "check_openvino", lambda *a: {**verdict, "openvino_img_s": 250.0})
    (cache / openvino_choice.CHECK_FILE).unlink()
    assert not openvino_choice.openvino_pays(onnx_file, 100_000)  # slower: never repaid


def test_auto_runs_openvino_on_decoders_not_replicas(tiny_model_file, photos, tmp_path):
    from PIL import Image

    from cnncli.data.inputs import collect_inputs
    from cnncli.predict.run import predict_items

    for i in range(12):
        Image.open(photos["coffee"]).convert("RGB").crop((i * 7, 0, 220, 200)).save(tmp_path / f"{i:02d}.jpg")
    engine = open_engine(str(tiny_model_file), device="cpu", engine="openvino", threads=2)
    choices = []
    list(predict_items(engine, collect_inputs([str(tmp_path)]), k=1, batch_size=3, on_choice=choices.append))
    assert (choices[0].pipeline, choices[0].source) == ("decoders", "rule")
    assert "compiles the model again in every replica" in choices[0].describe()


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
