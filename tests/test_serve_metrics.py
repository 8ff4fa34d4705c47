"""`cnncli serve` /metrics (issue 23, acceptance 3) on a real server process, parsed with prometheus_client's own
parser: every counter moves by exactly the requests made (by route template and status), images by outcome, the
engine's batch sizes add up to the images classified, the model's info names its sha256, engine and precision,
and /metrics needs the key when the service has one."""

from __future__ import annotations

import secrets
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import ServeProcess

KEY = secrets.token_urlsafe(24)


def scrape(http) -> dict:
    """{(sample name, sorted labels): value} from /metrics."""
    answer = http.get("/metrics", headers={"X-API-Key": KEY})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_exactly_the_requests_made(cached_tiny, photos):
    from cnncli.models.weights import sha256_of

    image = Path(photos["chelsea"]).read_bytes()
    auth = {"Authorization": f"Bearer {KEY}"}
    with ServeProcess("-m", cached_tiny, "--workers", "1", env={"CNNCLI_API_KEY": KEY}) as server, \
            server.client() as http:
        assert http.get("/metrics").status_code == 401
        before = scrape(http)
        for _ in range(2):
            assert http.post("/v1/classify", content=image, headers=auth).status_code == 200
        two = [("files", ("a.jpg", image)), ("files", ("b.jpg", image))]
        assert http.post("/v1/classify", files=two, headers=auth).status_code == 200
        mixed = [("files", ("a.jpg", image)), ("files", ("bad.png", b"not a png"))]
        assert http.post("/v1/classify", files=mixed, headers=auth).status_code == 200
        assert http.post("/v1/classify", content=b"not an image", headers=auth).status_code == 422
        assert http.get("/v1/model", headers=auth).status_code == 200
        assert http.get("/v1/model").status_code == 401
        assert http.get("/healthz").status_code == 200
        assert http.get("/no/such/page", headers=auth).status_code == 404
        stats = http.get("/v1/stats", headers=auth).json()
        after = scrape(http)

    def delta(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    classify = {"route": "/v1/classify", "method": "POST"}
    assert delta("cnncli_requests_total", status="200", **classify) == 4
    assert delta("cnncli_requests_total", status="422", **classify) == 1
    assert delta("cnncli_requests_total", route="/v1/model", method="GET", status="200") == 1
    assert delta("cnncli_requests_total", route="/v1/model", method="GET", status="401") == 1
    assert delta("cnncli_requests_total", route="/healthz", method="GET", status="200") == 1
    assert delta("cnncli_requests_total", route="unmatched", method="GET", status="404") == 1
    assert delta("cnncli_requests_total", route="/metrics", method="GET", status="200") == 1  # the first scrape
    assert delta("cnncli_request_duration_seconds_count", route="/v1/classify") == 5
    assert delta("cnncli_request_duration_seconds_sum", route="/v1/classify") > 0
    assert delta("cnncli_images_total", model="tiny", outcome="classified") == 5
    assert delta("cnncli_images_total", model="tiny", outcome="unreadable") == 2
    # the engine: every classified image went through exactly one forward pass; the warm-up is not counted
    assert delta("cnncli_engine_batch_size_sum", model="tiny") == 5
    assert value(after, "cnncli_engine_batch_size_count", model="tiny") == stats["batches"]
    assert value(after, "cnncli_engine_forward_seconds_count", model="tiny") == stats["batches"]
    assert value(after, "cnncli_engine_batch_size_bucket", model="tiny", le="+Inf") == stats["batches"]
    assert value(after, "cnncli_queue_depth", model="tiny") == 0
    assert value(after, "cnncli_images_in_service", model="tiny") == 0
    assert value(after, "cnncli_model_ready", model="tiny") == 1
    info = [dict(labels) for (name, labels), v in after.items() if name == "cnncli_model_info" and v == 1]
    assert len(info) == 1, info
    assert info[0]["model"] == "tiny" and info[0]["sha256"] == sha256_of(cached_tiny)
    assert info[0]["engine"].startswith("onnxruntime") and info[0]["precision"] == "fp32"
    assert info[0]["arch"] == "simplecnn" and info[0]["classes"] == "3"
    assert value(after, "cnncli_model_reload_failures_total", model="tiny") == 0


def test_two_apps_in_one_process_count_apart(cached_tiny):
    """Each app has its own registry (not prometheus_client's global one), so two never mix their numbers."""
    from prometheus_client import REGISTRY

    from cnncli.engines.base import open_engine
    from cnncli.serve.app import ServeSettings, create_app

    engine = open_engine(str(cached_tiny), device="cpu")
    one, two = create_app(engine, ServeSettings(log=False)), create_app(engine, ServeSettings(log=False))
    one.state.metrics.observe_request("/v1/model", "GET", 200, 0.01)
    assert b'cnncli_requests_total{method="GET",route="/v1/model",status="200"} 1.0' in one.state.metrics.render()
    assert b"cnncli_requests_total{" not in two.state.metrics.render()
    assert REGISTRY.get_sample_value("cnncli_requests_total", {"route": "/v1/model", "method": "GET",
                                                               "status": "200"}) is None
