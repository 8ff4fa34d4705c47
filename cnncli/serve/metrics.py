"""Prometheus metrics of one ``cnncli serve`` app, at ``GET /metrics`` in the text exposition format, from
``prometheus_client`` with a registry of the app's own (never the process-wide default one, so two apps in one
process, as in the tests or on a Ray replica, count apart):

- ``cnncli_requests_total{route, method, status}`` and ``cnncli_request_duration_seconds{route}`` (a histogram),
  where ``route`` is the route's template (``/v2/models/{name}/infer``), ``unmatched`` for unknown paths;
- ``cnncli_images_total{model, outcome}``: images per model, ``classified`` or ``unreadable``;
- ``cnncli_engine_batch_size{model}`` and ``cnncli_engine_forward_seconds{model}`` (histograms), per forward pass;
- ``cnncli_queue_depth{model}`` (images waiting for the engine), ``cnncli_images_in_service{model}`` (admitted,
  not yet answered) and ``cnncli_model_ready{model}``: gauges read when scraped;
- ``cnncli_model_info{model, arch, sha256, engine, precision, classes}``: always 1, its labels the model in service;
- ``cnncli_model_reloads_total{model}`` and ``cnncli_model_reload_failures_total{model}``: hot reloads taken and
  refused (:mod:`.models`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
FORWARD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class _LiveGauges(Collector):
    """Gauges read from the models at scrape time (``models()``: the served models, see :mod:`.models`)."""

    def __init__(self, models: Callable[[], Iterable]) -> None:
        self.models = models

    def collect(self):
        depth = GaugeMetricFamily("cnncli_queue_depth", "Images queued for the engine, not yet in a batch.",
                                  labels=["model"])
        held = GaugeMetricFamily("cnncli_images_in_service", "Images admitted (decoding, queued or in the engine).",
                                 labels=["model"])
        ready = GaugeMetricFamily("cnncli_model_ready", "1 when the model is warmed up and answering.",
                                  labels=["model"])
        for model in self.models():
            batcher = model.current.batcher
            depth.add_metric([model.name], batcher.queued)
            held.add_metric([model.name], batcher.reserved)
            ready.add_metric([model.name], 1.0 if batcher.ready and not batcher.failure else 0.0)
        yield from (depth, held, ready)


class ServiceMetrics:
    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, models: Callable[[], Iterable]) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("cnncli_requests", "HTTP requests answered, by route template, method and status.",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("cnncli_request_duration_seconds", "Time from the request's headers to its answer.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.images = Counter("cnncli_images", "Images in requests, by model and outcome (classified, unreadable).",
                              ["model", "outcome"], registry=registry)
        self.batch_size = Histogram("cnncli_engine_batch_size", "Images per engine forward pass.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.forward = Histogram("cnncli_engine_forward_seconds", "Duration of one engine forward pass.", ["model"],
                                 buckets=FORWARD_BUCKETS, registry=registry)
        self.reloads = Counter("cnncli_model_reloads", "Hot reloads that took over (verified, warmed up).",
                               ["model"], registry=registry)
        self.reload_failures = Counter("cnncli_model_reload_failures",
                                       "Hot reloads refused (the new file failed; the old model kept serving).",
                                       ["model"], registry=registry)
        self.info = Info("cnncli_model", "The model each name serves now.", ["model"], registry=registry)
        registry.register(_LiveGauges(models))

    def batch_observer(self, model: str) -> Callable[[int, float], None]:
        sizes, forward = self.batch_size.labels(model), self.forward.labels(model)

        def observe(images: int, seconds: float) -> None:
            sizes.observe(images)
            forward.observe(seconds)

        return observe

    def describe_model(self, model: str, info: dict[str, str]) -> None:
        self.info.labels(model).info(info)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
