"""The FastAPI app of ``cnncli serve``: ``POST /v1/classify`` (raw body, multipart ``file`` or several
``files``), ``GET /v1/model``, ``/v1/stats``, ``/healthz``, ``/readyz``, the browser page at ``/``, and JSON errors
``{"error": "one sentence"}`` for everything that goes wrong, with one log line per request on stderr.

Uploads are read as a stream (:mod:`.uploads`) and refused (413) as soon as they pass ``--max-upload-mb``; a request
is admitted to the batch queue only once its body is complete; images are decoded in a thread pool with
:mod:`cnncli.data.images` (the same pixels as ``predict``) while the batcher runs the engine. Each request is bounded
by ``--timeout`` (:mod:`.deadline`); an answer sent before the request's body was read closes the connection.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from cnncli.core.errors import ImageError, ImageTooLargeError
from cnncli.data.images import load_pixels_from_bytes, max_image_pixels
from cnncli.predict.multilabel import label_picker
from cnncli.predict.run import Prediction, scored
from cnncli.serve.batcher import BatchFailed, DynamicBatcher
from cnncli.serve.deadline import DeadlinePassed, Deadlines
from cnncli.serve.errors import RETRY_AFTER_S, ServiceError, busy
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
    threshold: float | None = None  # multi-label models: one threshold for every class instead of the card's

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

    def __init__(self, app, enabled: bool = True) -> None:
        self.app, self.enabled = app, enabled

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
            if self.enabled:
                ms = (time.perf_counter() - start) * 1000
                client = scope.get("client") or ("-", 0)
                status = info["status"] if info["status"] is not None else 499  # 499: the client went away
                note = f" ({info['note']})" if info.get("note") else ""
                print(f"{client[0]}:{client[1]} {scope['method']} {scope['path']} {status} "
                      f"images={info['images']} {ms:.1f}ms{note}", file=sys.stderr, flush=True)


def create_app(engine, settings: ServeSettings | None = None) -> FastAPI:
    """The service for ``engine`` (any :class:`cnncli.engines.Engine`)."""
    settings = settings or ServeSettings()
    batcher = DynamicBatcher(engine, settings.max_batch, settings.max_wait_ms, settings.max_queue)
    decoders = ThreadPoolExecutor(max_workers=max(1, settings.workers), thread_name_prefix="cnncli-decode",
                                  initializer=_lower_thread_priority)
    card = engine.card
    pick = label_picker(card, settings.threshold)  # None for a single-label model
    counters = {"requests": 0, "answered": 0, "refused_busy": 0, "timed_out": 0, "in_flight": 0, "body_bytes": 0}
    deadlines = Deadlines(settings.timeout)
    connections = ConnectionStats()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decoders.shutdown(wait=True)

    app = FastAPI(
        title="cnncli serve",
        summary=f"Image classification with {card.arch} ({card.num_classes} classes).",
        description="Send images to `POST /v1/classify` (raw body, multipart `file`, or several `files`); every "
                    "image gets the object `cnncli predict --format json` writes.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.deadlines = deadlines  # the server calls begin_stopping() on SIGTERM
    app.state.connections = connections  # the server's protocol counts into it
    app.add_middleware(RequestLog, enabled=settings.log)

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

    @app.get("/healthz", summary="The process is up (503 once its batcher has stopped: restart it).",
             responses={503: {"model": ErrorBody}})
    async def healthz():
        if batcher.failure:
            return error_response(503, f"the batcher stopped ({batcher.failure}); restart the service.")
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and warmed up with one forward pass.",
             responses={503: {"model": ErrorBody}})
    async def readyz():
        if batcher.failure:
            return error_response(503, f"the batcher stopped ({batcher.failure}); restart the service.")
        if deadlines.stopping:
            return error_response(503, "the service is stopping.")
        if batcher.warmup_error:
            return error_response(503, f"the model failed its warm-up forward pass ({batcher.warmup_error}).")
        if not batcher.ready:
            return error_response(503, "the model is still warming up.", {"Retry-After": str(RETRY_AFTER_S)})
        return {"status": "ready"}

    @app.get("/v1/model", summary="The model card, with the engine, precision and the service's limits.")
    async def model() -> dict:
        return {
            **card.shown_dict(),
            "models": settings.models,
            "engine": engine.name,
            "precision": settings.precision,
            "tta": settings.tta,
            **({"threshold": settings.threshold} if card.multilabel else {}),  # None: the card's thresholds
            "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                         "max_queue": settings.max_queue},
            "limits": {"max_upload_mb": settings.max_upload_mb, "max_files": settings.max_files,
                       "max_pixels": max_image_pixels(), "timeout_s": settings.timeout,
                       "max_connections": settings.max_connections},
        }

    @app.get("/v1/stats", summary="Counters: requests, engine batches and their sizes, what is in flight.")
    async def stats() -> dict:
        return {**counters, "ready": batcher.ready, "queued": batcher.queued, "reserved": batcher.reserved,
                **batcher.stats.to_dict(), "connections": connections.to_dict()}

    # ------------------------------------------------------------------ classify
    def decode(data: bytes, name: str):
        try:
            return load_pixels_from_bytes(data, name, card.preprocessing)
        except ImageError as exc:
            return exc
        except Exception as exc:  # a decoder bug fails this image only
            return ImageError(f"{name}: cannot read the image ({type(exc).__name__}: {exc}).")

    @app.post(
        "/v1/classify",
        summary="Classify one image (raw body, or multipart `file`) or several (multipart `files`).",
        response_model=list[Classified],
        response_model_exclude_none=True,
        responses={
            400: {"model": ErrorBody, "description": "Malformed multipart body."},
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
                                                                 description="Classes per image, best first.")):
        info = request.scope.get("cnncli", {})
        counters["requests"] += 1
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
            raise ServiceError(413, f"the upload is {int(declared) / MB:.1f} MB, over the "
                                    f"{settings.max_upload_mb:g} MB limit (--max-upload-mb).")
        uploads = UploadReader(request, max_upload_mb=settings.max_upload_mb, max_files=settings.max_files,
                               counters=counters, budget_bytes=settings.body_budget_bytes)
        counters["in_flight"] += 1
        try:
            return await deadlines.run(answer(uploads, top_k, info), lambda: uploads.complete)
        except DeadlinePassed as exc:
            counters["timed_out"] += 1
            info["note"] = "--timeout passed before the body arrived" if exc.status == 408 else "--timeout passed"
            raise
        finally:
            counters["in_flight"] -= 1
            uploads.release()

    async def answer(uploads: UploadReader, top_k: int, info: dict):
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
        # admission to the batch queue only now that the body is complete: a stalled upload holds no slot
        if not batcher.try_reserve(len(images)):
            counters["refused_busy"] += 1
            raise busy(f"{settings.max_queue} images in progress, --max-queue")
        slots = len(images)
        try:
            return await classify_admitted(images, top_k)
        finally:
            batcher.release(slots)

    async def classify_admitted(images: list[tuple[str, bytes]], top_k: int) -> JSONResponse:
        loop = asyncio.get_running_loop()
        names = [name for name, _ in images]
        decoded = await asyncio.gather(*(loop.run_in_executor(decoders, decode, data, name)
                                         for name, data in images))
        images.clear()  # the encoded bytes are no longer needed (the caller's list is this one)
        good = [px for px in decoded if isinstance(px, np.ndarray)]
        try:
            rows = iter(await asyncio.gather(*(batcher.classify(px) for px in good)))
        except BatchFailed as exc:
            raise ServiceError(500, str(exc)) from None
        results = [
            Prediction(name, **scored(next(rows), card.classes, top_k, pick)).to_dict()
            if isinstance(item, np.ndarray) else Prediction(name, error=str(item)).to_dict()
            for name, item in zip(names, decoded)
        ]
        bad = [item for item in decoded if not isinstance(item, np.ndarray)]
        if bad and not good:
            status = 413 if all(isinstance(b, ImageTooLargeError) for b in bad) else 422
            message = str(bad[0]) if len(bad) == 1 else f"none of the {len(bad)} images could be read; {bad[0]}"
            return JSONResponse({"error": message, "results": results}, status_code=status)
        counters["answered"] += 1
        return JSONResponse(results)

    return app
