"""`cnncli serve --ray --replicas N` (issue 23, acceptance 5): the same app on Ray Serve. The slow test runs a real
local Ray with 2 replicas behind Ray Serve's proxy and checks predict's answers, the API key, the Open Inference
Protocol and that both replicas answered; the default one builds the deployment and a replica's app without Ray
running."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from serve_helpers import ServeProcess

KEY = secrets.token_urlsafe(24)


def test_the_deployment_is_the_same_app_in_each_replica(cached_tiny, monkeypatch):
    from fastapi.testclient import TestClient

    from cnncli.scale.ray_serve import deployment, replica_app_builder
    from cnncli.serve.app import ServeSettings

    settings = ServeSettings(api_key=KEY, log=False)
    bound = deployment([str(cached_tiny)], "tiny", {"device": "cpu"}, settings, replicas=2, cpus_per_replica=1)
    config = bound._bound_deployment._deployment_config
    assert config.num_replicas == 2 and bound._bound_deployment.name == "cnncli"
    app = replica_app_builder([str(cached_tiny)], "tiny", {"device": "cpu"}, settings)()  # what a replica runs
    with TestClient(app) as http:
        assert http.get("/v1/models").status_code == 401  # the same key
        assert [m["name"] for m in http.get("/v1/models", headers={"X-API-Key": KEY}).json()] == ["tiny"]
        assert http.get("/v2/health/live").json() == {"live": True}


def test_replicas_without_ray_is_a_usage_error(run_cli):
    result = run_cli("serve", "--replicas", "2", "--port", "0")
    assert result.code == 2 and "--replicas needs --ray" in result.err


def test_an_unreachable_or_malformed_ray_address_is_refused_in_seconds(cached_tiny, run_cli, monkeypatch):
    """The same address checks as predict's --ray: before, serve --ray waited as long as ray.init does."""
    import time

    t0 = time.monotonic()
    unreachable = run_cli("serve", "-m", cached_tiny, "--ray", "127.0.0.1:2", "--port", "0")
    assert unreachable.code == 2 and "cannot reach the Ray cluster at 127.0.0.1:2" in unreachable.err
    garbage = run_cli("serve", "-m", cached_tiny, "--ray", "garbage::::", "--port", "0")
    assert garbage.code == 2 and "is not a Ray address" in garbage.err, garbage.err
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:2")
    from_env = run_cli("serve", "-m", cached_tiny, "--ray", "--port", "0")
    assert from_env.code == 2 and "from RAY_ADDRESS" in from_env.err, from_env.err
    assert time.monotonic() - t0 < 60


@pytest.mark.slow
def test_two_replicas_on_a_local_ray_answer_as_predict(cached_tiny, photos, run_cli):
    images = [Path(photos[n]) for n in ("chelsea", "coffee")]
    offline = run_cli("predict", *images, "-m", cached_tiny, "-f", "json", "-k", "3")
    assert offline.code == 0, offline.err
    expected = {Path(r["path"]).name: r["top"] for r in json.loads(offline.out)}
    auth = {"Authorization": f"Bearer {KEY}"}
    with ServeProcess("-m", cached_tiny, "--ray", "--replicas", "2", env={"CNNCLI_API_KEY": KEY},
                      timeout=240) as server, server.client(headers=auth) as http:
        processes = set()
        for _ in range(8):
            for image in images:
                answer = http.post("/v1/classify?top_k=3", files={"file": (image.name, image.read_bytes())})
                assert answer.status_code == 200, answer.text
                top = answer.json()[0]["top"]
                assert [t["label"] for t in top] == [t["label"] for t in expected[image.name]]
                assert max(abs(a["prob"] - b["prob"]) for a, b in zip(top, expected[image.name])) < 1e-5
            processes.add(http.get("/v1/stats").json()["process"])
        assert len(processes) == 2  # both replicas answered
        assert http.get("/v1/model", headers={"Authorization": "Bearer wrong-key-wrong-key"}).status_code == 401
        assert http.get("/v2/health/ready").status_code == 200
        assert http.get("/v2/models/tiny").json()["name"] == "tiny"
    assert "on Ray Serve, 2 replica(s) on a local Ray" in server.stderr
    assert server.proc.returncode == 0
