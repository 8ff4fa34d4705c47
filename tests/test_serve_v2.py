"""The Open Inference Protocol (KServe v2) on `cnncli serve` (issue 23, acceptance 2), spoken by a real client,
`tritonclient.http`: liveness, readiness and metadata; `infer` with BYTES images (the binary tensor extension on
and off) and with preprocessed FP32 pixels, giving predict's probabilities (1e-5) and top-k labels; the protocol's
JSON errors; the probes open and everything else behind the API key."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import ServeProcess

KEY = secrets.token_urlsafe(24)


def auth() -> dict:
    """A new headers dict each call: tritonclient's infer() adds Inference-Header-Content-Length to the one given."""
    return {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(cached_tiny):
    with ServeProcess("-m", cached_tiny, "--workers", "1", env={"CNNCLI_API_KEY": KEY}) as proc:
        yield proc


@pytest.fixture(scope="module")
def triton(server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def offline(cached_tiny, photos) -> np.ndarray:
    """predict's probabilities (all three classes, card order) for chelsea and coffee."""
    import contextlib
    import io

    from cnncli.cli.app import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["predict", str(photos["chelsea"]), str(photos["coffee"]), "-m", str(cached_tiny), "-f", "json",
              "-k", "3"])
    rows = json.loads(out.getvalue())
    probs = np.zeros((len(rows), 3), np.float32)
    for r, row in enumerate(rows):
        for t in row["top"]:
            probs[r, t["index"]] = t["prob"]
    return probs


CLASSES = ["brick", "grass", "gravel"]


def top_labels(probs: np.ndarray, k: int) -> list[list[str]]:
    return [[CLASSES[i] for i in np.argsort(-row, kind="stable")[:k]] for row in probs]


def test_liveness_readiness_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()  # the probes need no key
    assert triton.is_model_ready("tiny", headers=auth())
    meta = triton.get_model_metadata("tiny", headers=auth())
    assert meta["name"] == "tiny" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "image": ("BYTES", [-1]), "pixels": ("FP32", [-1, 3, 64, 64])}
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
        "probabilities": ("FP32", [-1, 3]), "labels": ("BYTES", [-1, -1])}
    server_meta = triton.get_server_metadata(headers=auth())
    assert server_meta["name"] == "cnncli" and "binary_tensor_data" in server_meta["extensions"]
    assert not triton.is_model_ready("no-such-model", headers=auth())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_with_images_gives_predicts_probabilities(triton, photos, offline, binary):
    import tritonclient.http as httpclient

    files = [Path(photos[name]).read_bytes() for name in ("chelsea", "coffee")]
    image = httpclient.InferInput("image", [2], "BYTES")
    elements = files if binary else [base64.b64encode(f) for f in files]  # JSON carries image files in base64
    image.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary),
               httpclient.InferRequestedOutput("labels", binary_data=binary, class_count=2)]
    result = triton.infer("tiny", [image], outputs=outputs, headers=auth(), request_id="req-7")
    probs = result.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (2, 3)
    np.testing.assert_allclose(probs, offline, atol=1e-5, rtol=0)
    labels = [[v.decode() if isinstance(v, bytes) else v for v in row] for row in result.as_numpy("labels")]
    assert labels == top_labels(offline, 2)
    response = result.get_response()
    assert response["model_name"] == "tiny" and response["model_version"] == "1" and response["id"] == "req-7"
    assert all(("binary_data_size" in o.get("parameters", {})) == binary for o in response["outputs"])


def test_infer_with_preprocessed_pixels_and_default_outputs(triton, photos, offline, cached_tiny):
    import tritonclient.http as httpclient

    from cnncli.data.images import load_pixels, normalize
    from cnncli.engines.base import open_engine

    pre = open_engine(str(cached_tiny), device="cpu").card.preprocessing
    pixels = np.stack([normalize(load_pixels(photos[n], pre), pre) for n in ("chelsea", "coffee")])
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    result = triton.infer("tiny", [tensor], headers=auth())  # no outputs named: both, binary
    np.testing.assert_allclose(result.as_numpy("probabilities"), offline, atol=1e-5, rtol=0)
    assert result.as_numpy("labels").shape == (2, 3)  # --top-k 5, at most the 3 classes


def test_errors_are_the_protocols_json(server, triton, photos):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([Path(photos["chelsea"]).read_bytes()], dtype=np.object_))
    with pytest.raises(InferenceServerException) as unknown:
        triton.infer("no-such-model", [image], headers=auth())
    assert unknown.value.status() == "404" and "no model named 'no-such-model'" in unknown.value.message()
    with pytest.raises(InferenceServerException) as keyless:
        triton.infer("tiny", [image])
    assert keyless.value.status() == "401" and "API key" in keyless.value.message()
    broken = httpclient.InferInput("image", [1], "BYTES")
    broken.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as unreadable:
        triton.infer("tiny", [broken], headers=auth())
    assert unreadable.value.status() == "400" and "image[0]: not an image" in unreadable.value.message()
    wrong = httpclient.InferInput("pixels", [1, 3, 32, 32], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(InferenceServerException) as shape:
        triton.infer("tiny", [wrong], headers=auth())
    assert shape.value.status() == "400" and "[N, 3, 64, 64]" in shape.value.message()
    with httpx.Client(base_url=server.url, headers=auth(), timeout=30) as http:
        for body, fragment in [(b"{not json", "not valid JSON"), (b'{"inputs": []}', "exactly one input"),
                               (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}',
                                "unknown input 'x'"),
                               (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%"]}]}',
                                "not base64")]:
            answer = http.post("/v2/models/tiny/infer", content=body)
            assert answer.status_code == 400 and fragment in answer.json()["error"], answer.text
            assert set(answer.json()) == {"error"}
        cut = http.post("/v2/models/tiny/infer", content=b'{"inputs": []}',
                        headers={"Inference-Header-Content-Length": "999"})
        assert cut.status_code == 400 and "Inference-Header-Content-Length" in cut.json()["error"]
        assert http.get("/v2/models/tiny/versions/2").status_code == 404
        assert http.get("/v2/models/tiny/versions/1").json()["name"] == "tiny"
    assert triton.is_server_live()


def test_the_default_models_name_is_its_registry_name(tmp_path):
    from cnncli.serve.models import default_name

    assert default_name([None]) == "efficientnet_lite0"
    assert default_name(["resnet18"]) == "resnet18"
    assert default_name([str(tmp_path / "my-model.onnx")]) == "my-model"
