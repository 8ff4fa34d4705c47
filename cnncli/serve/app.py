"""The FastAPI app of ``cnncli serve``: ``POST /v1/classify`` (raw body, multipart ``file`` or several
``files``; ``?model=NAME`` when it serves several), ``GET /v1/model``, ``/v1/models``, ``/v1/stats``, ``/metrics``
(:mod:`.metrics`), ``/healthz``, ``/readyz``, the Open Inference Protocol under ``/v2`` (:mod:`.inference_v2`), the
browser page at ``/``, and JSON errors ``{"error": "one sentence"}`` for everything that goes wrong, with one log
line per request on stderr. With an API key every route but the open ones needs it (:mod:`.auth`).

Uploads are read as a stream (:mod:`.uploads`) and refused (413) as soon as they pass ``--max-upload-mb``; a request
is admitted to the batch queue only once its body is complete; images are decoded in a thread pool with
:mod:`cnncli.data.images` (the same pixels as ``predict``) while the batcher runs the engine. Each request is bounded
by ``--timeout`` (:mod:`.deadline`); an answer sent before the request's body was read closes the connection.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from cnncli.core.errors import ImageTooLargeError
from cnncli.data.images import max_image_pixels
from cnncli.predict.run import Prediction, scored
from cnncli.serve.auth import key_guard
from cnncli.serve.batcher import BatchFailed
from cnncli.serve.deadline import DeadlinePassed, Deadlines
from cnncli.serve.errors import RETRY_AFTER_S, ServiceError
from cnncli.serve.metrics import ServiceMetrics
from cnncli.serve.models import BatcherOptions, ModelSource, ServedModel
from cnncli.serve.protocol import ConnectionStats
from cnncli.serve.uploads import MB, UploadReader


@dataclass
class ServeSettings:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256  # images in the service at once (queued, decoding or in the engine)
    max_upload_mb: float = 25.0  # largest request body
    max_files: int = 32  # images per request
    workers: int = 4  # decoder threads
    default_top_k: int = 5
    models: list[str] = field(default_factory=lambda: ["default"])
    precision: str = "fp32"
    tta: bool = False
    log: bool = True
    timeout: float = 30.0  # the longest one request may take once its headers are in (--timeout)
    max_connections: int | None = None  # as the server set it (shown by /v1/model)
    api_key: str | None = field(default=None, repr=False)  # required on every route but the open ones (.auth)
    watch_s: float | None = None  # --watch: poll the model files this often and reload a changed one
    threshold: float | None = None  # multi-label models: one threshold for every class instead of the card's

    @property
    def batcher_options(self) -> BatcherOptions:
        return BatcherOptions(self.max_batch, self.max_wait_ms, self.max_queue)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def body_budget_bytes(self) -> int:
        """Request bodies held at once, all requests together (beyond it: 503), so memory stays bounded."""
        return max(256 * MB, 4 * self.max_upload_bytes)


class TopClass(BaseModel):
    label: str
    index: int
    prob: float


class Classified(BaseModel):
    """One image's result, as in ``cnncli predict --format json``: ``top`` or, for an unreadable image, ``error``."""

    path: str
    labels: list[str] | None = None  # multi-label models: the classes over their thresholds, best first
    top: list[TopClass] | None = None
    error: str | None = None


class ErrorBody(BaseModel):
    error: str


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _lower_thread_priority() -> None:
    """Decoder threads yield to the engine's threads, as predict's decoder processes do (see cnncli.pipeline): an
    engine thread preempted inside a parallel section stalls its siblings. Linux nice values are per thread."""
    import os
    import threading

    from cnncli.predict.decode import DECODER_NICENESS

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODER_NICENESS)
    except (OSError, AttributeError):
        pass


def page_html() -> str:
    return resources.files("cnncli.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def _has_body(scope) -> bool:
    headers = dict(scope.get("headers") or ())
    return b"transfer-encoding" in headers or headers.get(b"content-length", b"0").strip() not in (b"0", b"")


class RequestLog:
    """ASGI middleware: one line per request on stderr (client, method, path, status, images, ms), and a JSON 500
    instead of a traceback for anything unexpected; the service keeps serving. An answer that starts before the
    request's body was read to its end says ``Connection: close``, so a client still sending (or stalled) cannot
    keep the connection."""

    def __init__(self, app, enabled: bool = True, metrics: ServiceMetrics | None = None) -> None:
        self.app, self.enabled, self.metrics = app, enabled, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # the protocol may have noted a status already (a request h11 refused mid-body, before this ran)
        info: dict[str, Any] = {"images": 0, "status": None, **scope.get("cnncli", {})}
        scope["cnncli"] = info
        start = time.perf_counter()
        body_read = [not _has_body(scope)]

        async def receive_and_note():
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read[0] = True  # the last chunk, or the client is gone
            return message

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                if info["status"] is None:
                    info["status"] = message["status"]
                if not body_read[0]:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, receive_and_note, send_and_note)
        except Exception as exc:  # the last line of defence: answer, log one line, keep serving
            info["note"] = f"{type(exc).__name__}: {exc}"
            if info["status"] is None:
                response = error_response(500, f"internal error ({type(exc).__name__}); the service keeps running, "
                                               "see its log.")
                try:
                    await response(scope, receive_and_note, send_and_note)
                except Exception:  # the client is gone: nothing is left to answer
                    pass
        finally:
            seconds = time.perf_counter() - start
            status = info["status"] if info["status"] is not None else 499  # 499: the client went away
            if self.metrics is not None:
                route = scope.get("route")
                self.metrics.observe_request(getattr(route, "path", None) or "unmatched", scope["method"], status,
                                             seconds)
            if self.enabled:
                ms = seconds * 1000
                client = scope.get("client") or ("-", 0)
                note = f" ({info['note']})" if info.get("note") else ""
                print(f"{client[0]}:{client[1]} {scope['method']} {scope['path']} {status} "
                      f"images={info['images']} {ms:.1f}ms{note}", file=sys.stderr, flush=True)


def served_model(engine, settings: ServeSettings, name: str | None = None, source: ModelSource | None = None,
                 sha256: str = "", metrics: ServiceMetrics | None = None) -> ServedModel:
    return ServedModel(name or engine.card.arch, engine, options=settings.batcher_options, source=source, sha256=sha256,
                       precision=settings.precision, metrics=metrics, threshold=settings.threshold)


def create_app(served, settings: ServeSettings | None = None) -> FastAPI:
    """The service for ``served``: one :class:`cnncli.engines.Engine`, or a list of ``(name, engine, source,
    sha256)`` for several models (the first is the default), each with its own batcher."""
    settings = settings or ServeSettings()
    models: dict[str, ServedModel] = {}
    metrics = ServiceMetrics(lambda: models.values())
    entries = [(None, served, None, "")] if hasattr(served, "predict_proba") else list(served)
    for name, engine, source, sha in entries:
        model = served_model(engine, settings, name, source, sha, metrics)
        models[model.name] = model
    default = next(iter(models.values()))
    decoders = ThreadPoolExecutor(max_workers=max(1, settings.workers), thread_name_prefix="cnncli-decode",
                                  initializer=_lower_thread_priority)
    counters = {"requests": 0, "answered": 0, "refused_busy": 0, "timed_out": 0, "in_flight": 0, "body_bytes": 0}
    deadlines = Deadlines(settings.timeout)
    connections = ConnectionStats()

    async def reload_all(only_changed: bool = False) -> None:
        for model in models.values():
            if only_changed and not model.changed_on_disk():
                continue
            await model.reload()

    async def watch() -> None:
        while True:
            await asyncio.sleep(settings.watch_s)
            await reload_all(only_changed=True)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for model in models.values():
            await model.start()
        watcher = asyncio.create_task(watch(), name="cnncli-watch") if settings.watch_s else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            for model in models.values():
                await model.stop()
            decoders.shutdown(wait=True)

    card = default.current.card
    app = FastAPI(
        title="cnncli serve",
        summary=f"Image classification with {card.arch} ({card.num_classes} classes)"
                + (f" and {len(models) - 1} other model(s)." if len(models) > 1 else "."),
        description="Send images to `POST /v1/classify` (raw body, multipart `file`, or several `files`); every "
                    "image gets the object `cnncli predict --format json` writes. The Open Inference Protocol "
                    "(KServe v2) is under `/v2`.",
        lifespan=lifespan,
        dependencies=[Depends(key_guard(settings.api_key))],
    )
    app.state.models = models
    app.state.metrics = metrics
    app.state.reload_all = reload_all  # the server calls it on SIGHUP
    app.state.batcher = default.current.batcher
    app.state.deadlines = deadlines  # the server calls begin_stopping() on SIGTERM
    app.state.connections = connections  # the server's protocol counts into it
    app.add_middleware(RequestLog, enabled=settings.log, metrics=metrics)

    def pick_model(name: str | None) -> ServedModel:
        if name is None or name == "":
            return default
        if name not in models:
            raise ServiceError(404, f"no model named {name!r}; this service serves: {', '.join(models)}.")
        return models[name]

    def failures() -> list[str]:
        return [f"model {m.name}: {m.current.batcher.failure}" for m in models.values() if m.current.batcher.failure]

    # ------------------------------------------------------------------ errors as JSON
    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}; the API is listed at /docs."
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}; use {allowed or 'another method'}."
        else:
            message = str(exc.detail)
            message = message if message.endswith(".") else message + "."
        return error_response(exc.status_code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        got = f" (got {first['input']!r})" if "input" in first else ""
        return error_response(422, f"{where}: {first.get('msg', 'invalid value')}{got}.")

    # ------------------------------------------------------------------ pages and status
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html())

    @app.get("/healthz", summary="The process is up (503 once a batcher has stopped: restart it). No key needed.",
             responses={503: {"model": ErrorBody}})
    async def healthz():
        if failures():
            return error_response(503, f"the batcher stopped ({'; '.join(failures())}); restart the service.")
        return {"status": "ok"}

    def not_ready() -> JSONResponse | None:
        if failures():
            return error_response(503, f"the batcher stopped ({'; '.join(failures())}); restart the service.")
        if deadlines.stopping:
            return error_response(503, "the service is stopping.")
        for m in models.values():
            batcher = m.current.batcher
            if batcher.warmup_error:
                return error_response(503, f"the model failed its warm-up forward pass ({batcher.warmup_error}).")
            if not batcher.ready:
                return error_response(503, "the model is still warming up.", {"Retry-After": str(RETRY_AFTER_S)})
        return None

    app.state.not_ready = not_ready  # the Open Inference Protocol's readiness is the same

    @app.get("/readyz", summary="Every model is loaded and warmed up with one forward pass. No key needed.",
             responses={503: {"model": ErrorBody}})
    async def readyz():
        return not_ready() or {"status": "ready"}

    @app.get("/v1/model", summary="A model's card, with the engine, precision, reload state and the service's limits.",
             responses={404: {"model": ErrorBody}})
    async def model(name: str | None = Query(None, alias="model", description="Which model (default: the first).")):
        chosen = pick_model(name)
        version = chosen.current
        return {
            **version.card.shown_dict(),
            "name": chosen.name,
            "models": list(models),
            "sha256": version.sha256,
            "engine": version.engine.name,
            "precision": settings.precision,
            "tta": settings.tta,
            **({"threshold": settings.threshold} if version.card.multilabel else {}),  # None: the card's thresholds
            "reload": chosen.reload_state(),
            "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                         "max_queue": settings.max_queue},
            "auth": settings.api_key is not None,
            "limits": {"max_upload_mb": settings.max_upload_mb, "max_files": settings.max_files,
                       "max_pixels": max_image_pixels(), "timeout_s": settings.timeout,
                       "max_connections": settings.max_connections},
        }

    @app.get("/v1/models", summary="Every model this service serves, the default first.")
    async def list_models() -> list[dict]:
        return [m.summary() for m in models.values()]

    @app.get("/v1/stats", summary="Counters: requests, engine batches and their sizes, what is in flight.")
    async def stats() -> dict:
        batchers = [m.current.batcher for m in models.values()]
        return {**counters, "ready": all(b.ready for b in batchers), "queued": sum(b.queued for b in batchers),
                "reserved": sum(b.reserved for b in batchers), **default.current.batcher.stats.to_dict(),
                "models": {m.name: m.current.batcher.stats.to_dict() for m in models.values()},
                "connections": connections.to_dict(), "process": os.getpid()}

    @app.get("/metrics", summary="Prometheus metrics (text exposition format).", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=ServiceMetrics.CONTENT_TYPE)

    # ------------------------------------------------------------------ classify
    @app.post(
        "/v1/classify",
        summary="Classify one image (raw body, or multipart `file`) or several (multipart `files`).",
        response_model=list[Classified],
        response_model_exclude_none=True,
        responses={
            400: {"model": ErrorBody, "description": "Malformed multipart body."},
            404: {"model": ErrorBody, "description": "No model of that name (?model=)."},
            413: {"model": ErrorBody, "description": "Over --max-upload-mb, --max-files or the pixel limit."},
            422: {"model": ErrorBody, "description": "Not an image, corrupt or truncated (named), or a bad top_k."},
            503: {"model": ErrorBody, "description": "At capacity (--max-queue); see Retry-After."},
        },
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "string", "format": "binary"},
                "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        }}},
    )
    async def classify(request: Request, top_k: int = Query(settings.default_top_k, ge=1,
                                                                 description="Classes per image, best first."),
                       name: str | None = Query(None, alias="model", description="Which model (default: the first).")):
        info = request.scope.get("cnncli", {})
        counters["requests"] += 1
        chosen = pick_model(name)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
            raise ServiceError(413, f"the upload is {int(declared) / MB:.1f} MB, over the "
                                    f"{settings.max_upload_mb:g} MB limit (--max-upload-mb).")
        uploads = UploadReader(request, max_upload_mb=settings.max_upload_mb, max_files=settings.max_files,
                               counters=counters, budget_bytes=settings.body_budget_bytes)
        counters["in_flight"] += 1
        try:
            return await deadlines.run(answer(chosen, uploads, top_k, info), lambda: uploads.complete)
        except DeadlinePassed as exc:
            counters["timed_out"] += 1
            info["note"] = "--timeout passed before the body arrived" if exc.status == 408 else "--timeout passed"
            raise
        finally:
            counters["in_flight"] -= 1
            uploads.release()

    async def answer(chosen: ServedModel, uploads: UploadReader, top_k: int, info: dict):
        try:
            images = await uploads.read()
        except ClientDisconnect:
            info.setdefault("note", "client disconnected during the upload")
            return error_response(499, "the client disconnected.")
        if not images:
            raise ServiceError(422, "no image in the request; send the image as the body (curl --data-binary "
                                    "@cat.jpg) or as multipart field file (several: files).")
        if len(images) > settings.max_files:
            raise ServiceError(413, f"too many files in one request; the limit is {settings.max_files} "
                                    "(--max-files).")
        info["images"] = len(images)
        names = [n for n, _ in images]
        # admission to the batch queue only now that the body is complete: a stalled upload holds no slot
        try:
            version, decoded = await classify_images(chosen, images)
        except ServiceError as exc:
            if exc.status == 503:
                counters["refused_busy"] += 1
            raise
        finally:
            images.clear()  # the encoded bytes are no longer needed
        results = [
            Prediction(n, **scored(item, version.card.classes, top_k, version.pick)).to_dict()
            if isinstance(item, np.ndarray) else Prediction(n, error=str(item)).to_dict()
            for n, item in zip(names, decoded)
        ]
        bad = [item for item in decoded if not isinstance(item, np.ndarray)]
        if bad and len(bad) == len(decoded):
            status = 413 if all(isinstance(b, ImageTooLargeError) for b in bad) else 422
            message = str(bad[0]) if len(bad) == 1 else f"none of the {len(bad)} images could be read; {bad[0]}"
            return JSONResponse({"error": message, "results": results}, status_code=status)
        counters["answered"] += 1
        return JSONResponse(results)

    async def classify_images(chosen: ServedModel, items: list):
        """(version, per item its probabilities or its ImageError), through the model's batcher."""
        try:
            return await chosen.classify(items, decoders)
        except BatchFailed as exc:
            raise ServiceError(500, str(exc)) from None

    app.state.classify_images = classify_images
    app.state.pick_model = pick_model
    app.state.settings = settings
    app.state.counters = counters

    from cnncli.serve.inference_v2 import add_inference_routes

    add_inference_routes(app)
    return app
