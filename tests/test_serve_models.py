"""Several models in one `cnncli serve` (issue 23): `--model NAME=SPEC` repeated, each with its own batcher;
/v1/models lists them, `/v1/classify?model=NAME`, `/v1/model?model=NAME` and `/v2/models/NAME` pick one, each
answering exactly what `predict` gives for its file; the first is the default; bad model arguments exit 2."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
from serve_helpers import ServeProcess, make_tiny_model


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("two-models")
    return make_tiny_model(folder / "first.safetensors", 0), make_tiny_model(folder / "second.safetensors", 1)


def offline_top(run_cli, model: Path, image: Path) -> list[dict]:
    done = run_cli("predict", image, "-m", model, "-f", "json", "-k", "3")
    assert done.code == 0, done.err
    return json.loads(done.out)[0]["top"]


def same(served: list[dict], offline: list[dict]) -> bool:
    return ([t["label"] for t in served] == [t["label"] for t in offline]
            and max(abs(a["prob"] - b["prob"]) for a, b in zip(served, offline)) < 1e-5)


def test_each_named_model_answers_as_predict_does_with_its_file(two_models, photos, run_cli):
    first, second = two_models
    image = Path(photos["coffee"])
    expected = {"cats": offline_top(run_cli, first, image), "dogs": offline_top(run_cli, second, image)}
    assert not same(expected["cats"], expected["dogs"])  # two different models, or the test proves nothing
    with ServeProcess("-m", f"cats={first}", "--model", f"dogs={second}", "--workers", "1") as server, \
            server.client() as http:
        listed = http.get("/v1/models").json()
        assert [m["name"] for m in listed] == ["cats", "dogs"] and all(m["ready"] for m in listed)
        from cnncli.models.weights import sha256_of

        assert [m["sha256"] for m in listed] == [sha256_of(first), sha256_of(second)]
        for name in ("cats", "dogs"):
            answer = http.post("/v1/classify", params={"model": name, "top_k": 3}, content=image.read_bytes())
            assert answer.status_code == 200 and same(answer.json()[0]["top"], expected[name]), name
            assert http.get("/v1/model", params={"model": name}).json()["name"] == name
            v2 = http.post(f"/v2/models/{name}/infer", json={"inputs": [{
                "name": "image", "datatype": "BYTES", "shape": [1],
                "data": [base64.b64encode(image.read_bytes()).decode()]}]}).json()
            probs = dict(zip(["brick", "grass", "gravel"], v2["outputs"][0]["data"]))
            assert all(abs(probs[t["label"]] - t["prob"]) < 1e-5 for t in expected[name]), name
        default = http.post("/v1/classify?top_k=3", content=image.read_bytes()).json()[0]["top"]
        assert same(default, expected["cats"])  # the first is the default
        unknown = http.post("/v1/classify", params={"model": "birds"}, content=image.read_bytes())
        assert unknown.status_code == 404
        assert unknown.json() == {"error": "no model named 'birds'; this service serves: cats, dogs."}
        stats = http.get("/v1/stats").json()
        assert stats["models"]["cats"]["images"] == 3 and stats["models"]["dogs"]["images"] == 2
        assert http.get("/v2/models/dogs/ready").status_code == 200
        metrics = http.get("/metrics").text
        assert 'cnncli_model_info{arch="simplecnn",classes="3",engine=' in metrics
        assert metrics.count("cnncli_model_info{") == 2
    assert "cats = simplecnn" in server.stderr and "and 1 more (dogs)" in server.stderr


@pytest.mark.parametrize("args, fragment", [
    (["-m", "a=x.onnx", "-m", "plain.onnx"], "--model plain.onnx has no NAME="),
    (["-m", "a=x.onnx", "-m", "a=y.onnx"], "two models are named 'a'"),
    (["-m", "a=x.onnx", "--name", "b"], "--name names the one model"),
    (["-m", "a b=x.onnx"], "must be letters, digits"),
    (["-m", "a="], "has no SPEC after the ="),
])
def test_bad_model_arguments_exit_2_before_loading(run_cli, args, fragment):
    result = run_cli("serve", "--port", "0", *args)
    assert result.code == 2 and fragment in result.err, result


def test_a_model_file_name_with_an_equals_sign_is_a_path(run_cli, tmp_path, two_models):
    odd = tmp_path / "lr=0.1.safetensors"
    odd.write_bytes(two_models[0].read_bytes())
    from cnncli.serve.models import model_entries

    entries = model_entries([str(odd)], None, lambda group: httpx)  # opened by a stand-in: only names matter here
    assert [e[0] for e in entries] == ["lr-0.1"] and entries[0][2].path == odd.absolute()
