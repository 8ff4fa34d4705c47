"""The Open Inference Protocol (KServe v2, REST) on ``cnncli serve``, as KServe's InferenceService and Triton's
clients (``tritonclient.http``) speak it:

- ``GET /v2`` (server metadata), ``/v2/health/live``, ``/v2/health/ready`` (no key needed: they are probes);
- ``GET /v2/models/{name}`` (metadata), ``/v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``, each also
  under ``/v2/models/{name}/versions/{version}/...``; a model's version is 1, plus one per hot reload.

Inputs (exactly one per request): ``image``, BYTES, one encoded image file per element (shape ``[N]``; in JSON each
element is the file in base64), decoded exactly as ``/v1/classify`` and ``predict`` decode; or ``pixels``, FP32
``[N, C, H, W]`` at the card's input size, already preprocessed and normalised. Outputs: ``probabilities``, FP32
``[N, classes]`` in the card's class order, and ``labels``, BYTES ``[N, K]``, the top-K class names best first (K:
the output's ``classification`` parameter, else the request's ``top_k`` parameter, else ``--top-k``).

The binary tensor extension: a request whose ``Inference-Header-Content-Length`` header gives the JSON's length
carries tensors after it (an input with ``parameters.binary_data_size`` has no ``data``; BYTES elements are a 4-byte
little-endian length, then the bytes); outputs come back binary when the request says ``binary_data_output`` or an
output says ``binary_data``, with the same header on the answer. Errors are the protocol's ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cnncli import __version__
from cnncli.core.errors import ImageTooLargeError
from cnncli.serve.deadline import DeadlinePassed
from cnncli.serve.errors import ServiceError
from cnncli.serve.uploads import UploadReader

HEADER_LENGTH = "inference-header-content-length"
INPUTS = ("image", "pixels")
OUTPUTS = ("probabilities", "labels")


def bad(message: str) -> ServiceError:
    return ServiceError(400, message)


def platform_of(engine_name: str) -> str:
    for prefix, platform in (("onnxruntime", "onnxruntime_onnx"), ("torch", "pytorch_torch"),
                             ("openvino", "openvino")):
        if engine_name.startswith(prefix):
            return platform
    return "cnncli"


# ---------------------------------------------------------------------------- tensors in and out
def _split_bytes(blob: bytes, count: int) -> list[bytes]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then that many bytes."""
    items, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise bad("the binary data of input image ends inside an element's 4-byte length.")
        (size,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + size > len(blob):
            raise bad(f"the binary data of input image is shorter than its element {len(items)} says ({size} bytes).")
        items.append(bytes(blob[offset:offset + size]))
        offset += size
    if len(items) != count:
        raise bad(f"input image has {len(items)} elements in its binary data but its shape says {count}.")
    return items


def _json_bytes(data, count: int) -> list[bytes]:
    flat = list(_flatten(data))
    if len(flat) != count:
        raise bad(f"input image has {len(flat)} elements in its data but its shape says {count}.")
    out = []
    for i, element in enumerate(flat):
        if not isinstance(element, str):
            raise bad(f"input image element {i} is not a string; in JSON each element is an image file in base64.")
        try:
            out.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError):
            raise bad(f"input image element {i} is not base64; in JSON each element is an image file in base64 "
                      "(or send it binary: the binary tensor extension).") from None
    return out


def _flatten(data):
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _shape(tensor: dict, name: str) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise bad(f"input {name} needs a shape: a list of non-negative integers.")
    return shape


def read_inputs(request_json: dict, binary: bytes, card, max_images: int) -> list:
    """The request's images: (name, encoded bytes) for ``image``, normalised float32 C x H x W for ``pixels``."""
    inputs = request_json.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad("the request needs exactly one input: image (BYTES, encoded image files) or pixels (FP32, "
                  "N x C x H x W).")
    tensor = inputs[0]
    name, datatype = tensor.get("name"), tensor.get("datatype")
    if name not in INPUTS:
        raise bad(f"unknown input {name!r}; this model takes image (BYTES) or pixels (FP32).")
    shape = _shape(tensor, name)
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise bad(f"input {name}: binary_data_size {size!r} does not fit the {len(binary)} bytes after the JSON.")
        raw = binary[:size]
    elif "data" not in tensor:
        raise bad(f"input {name} has neither data nor a binary_data_size parameter.")
    count = shape[0] if shape else 0
    if count > max_images:
        raise ServiceError(413, f"too many images in one request ({count}); the limit is {max_images} (--max-files).")
    if name == "image":
        if datatype != "BYTES":
            raise bad(f"input image is BYTES (encoded image files), not {datatype}.")
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise bad(f"input image has shape {shape}; it is [N] (or [N, 1]): one image file per element.")
        files = _split_bytes(raw, math.prod(shape)) if size is not None else _json_bytes(tensor["data"],
                                                                                         math.prod(shape))
        return [(f"image[{i}]", data) for i, data in enumerate(files)]
    pre = card.preprocessing
    expected = [pre.channels, *pre.input_size]
    if datatype != "FP32":
        raise bad(f"input pixels is FP32, not {datatype}.")
    if len(shape) != 4 or shape[1:] != expected:
        raise bad(f"input pixels has shape {shape}; this model takes [N, {', '.join(map(str, expected))}] "
                  "(preprocessed and normalised as its card says).")
    if size is not None:
        if size != 4 * math.prod(shape):
            raise bad(f"input pixels: binary_data_size is {size} bytes, but FP32 {shape} is {4 * math.prod(shape)}.")
        array = np.frombuffer(raw, dtype="<f4").reshape(shape)
    else:
        try:
            array = np.asarray(list(_flatten(tensor["data"])), dtype=np.float32)
        except (TypeError, ValueError):
            raise bad("input pixels: data must be numbers.") from None
        if array.size != math.prod(shape):
            raise bad(f"input pixels has {array.size} numbers in its data but its shape {shape} says "
                      f"{math.prod(shape)}.")
        array = array.reshape(shape)
    if not np.isfinite(array).all():
        raise bad("input pixels holds NaN or infinite values.")
    return [np.ascontiguousarray(px, dtype=np.float32) for px in array]


def _serialize_bytes(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def requested_outputs(request_json: dict, default_top_k: int, classes: int) -> list[tuple[str, bool, int]]:
    """(name, binary?, top-k) per output asked for (default: both)."""
    params = request_json.get("parameters") or {}
    all_binary = bool(params.get("binary_data_output", False))
    top_k = params.get("top_k", default_top_k)
    asked = request_json.get("outputs")
    if asked is None:
        asked = [{"name": name} for name in OUTPUTS]
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise bad("outputs must be a list of objects with a name.")
    chosen = []
    for output in asked:
        name = output.get("name")
        if name not in OUTPUTS:
            raise bad(f"unknown output {name!r}; this model gives probabilities (FP32) and labels (BYTES).")
        oparams = output.get("parameters") or {}
        k = oparams.get("classification", top_k)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise bad(f"the top-k for output {name} must be a positive integer, not {k!r}.")
        chosen.append((name, bool(oparams.get("binary_data", all_binary)), min(k, classes)))
    return chosen


def build_answer(model_name: str, version: str, request_id, probs: np.ndarray, classes: list[str],
                 outputs: list[tuple[str, bool, int]]) -> Response:
    header = {"model_name": model_name, "model_version": version, "outputs": []}
    if request_id is not None:
        header["id"] = request_id
    blobs = []
    for name, binary, k in outputs:
        if name == "probabilities":
            tensor = {"name": name, "datatype": "FP32", "shape": list(probs.shape)}
            values = probs.astype("<f4")
            raw, data = (values.tobytes(), None) if binary else (None, values.reshape(-1).tolist())
        else:
            top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            names = [[classes[i] for i in row] for row in top]
            tensor = {"name": name, "datatype": "BYTES", "shape": [len(names), k]}
            flat = [n for row in names for n in row]
            raw = _serialize_bytes([n.encode("utf-8") for n in flat]) if binary else None
            data = None if binary else flat
        if binary:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = data
        header["outputs"].append(tensor)
    if not blobs:
        return JSONResponse(header)
    head = json.dumps(header, separators=(",", ":")).encode()
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


# ---------------------------------------------------------------------------- routes
def add_inference_routes(app: FastAPI) -> None:
    state = app.state
    models, settings, counters = state.models, state.settings, state.counters

    def version_of(model) -> str:
        return str(model.reloads + 1)

    def chosen(name: str, version: str | None = None):
        if name not in models:
            raise ServiceError(404, f"no model named {name!r}; this service serves: {', '.join(models)}.")
        model = models[name]
        if version not in (None, "", version_of(model)):
            raise ServiceError(404, f"model {name} has no version {version!r}; it serves version "
                                    f"{version_of(model)}.")
        return model

    @app.get("/v2", summary="Open Inference Protocol: server metadata.", tags=["v2"])
    async def server_metadata() -> dict:
        return {"name": "cnncli", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="Open Inference Protocol: liveness (no key needed).", tags=["v2"])
    async def live():
        failed = [m.name for m in models.values() if m.current.batcher.failure]
        if failed:
            return JSONResponse({"error": f"the batcher of {', '.join(failed)} stopped; restart the service."}, 503)
        return {"live": True}

    @app.get("/v2/health/ready", summary="Open Inference Protocol: readiness (no key needed).", tags=["v2"])
    async def ready():
        return state.not_ready() or {"ready": True}

    async def metadata(name: str, version: str | None = None) -> dict:
        model = chosen(name, version)
        card, engine = model.current.card, model.current.engine
        pre = card.preprocessing
        return {
            "name": model.name, "versions": [version_of(model)], "platform": platform_of(engine.name),
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                       {"name": "pixels", "datatype": "FP32", "shape": [-1, pre.channels, *pre.input_size]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, card.num_classes]},
                        {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]}],
        }

    async def model_ready(name: str, version: str | None = None):
        model = chosen(name, version)
        batcher = model.current.batcher
        if not batcher.ready or batcher.failure:
            why = batcher.failure or batcher.warmup_error or "still warming up"
            return JSONResponse({"error": f"model {name} is not ready ({why})."}, 503)
        return {"name": model.name, "ready": True}

    async def infer(name: str, request: Request, version: str | None = None):
        model = chosen(name, version)
        info = request.scope.get("cnncli", {})
        counters["requests"] += 1
        uploads = UploadReader(request, max_upload_mb=settings.max_upload_mb, max_files=settings.max_files,
                               counters=counters, budget_bytes=settings.body_budget_bytes)
        counters["in_flight"] += 1
        try:
            return await state.deadlines.run(run_infer(model, request, uploads, info), lambda: uploads.complete)
        except DeadlinePassed:
            counters["timed_out"] += 1
            raise
        finally:
            counters["in_flight"] -= 1
            uploads.release()

    async def run_infer(model, request: Request, uploads: UploadReader, info: dict):
        body = bytearray()
        async for chunk in uploads.chunks():
            body += chunk
        length = request.headers.get(HEADER_LENGTH)
        if length is not None:
            if not length.isdigit() or int(length) > len(body):
                raise bad(f"Inference-Header-Content-Length {length!r} is not a length within the "
                          f"{len(body)}-byte body.")
            head, binary = bytes(body[:int(length)]), bytes(body[int(length):])
        else:
            head, binary = bytes(body), b""
        body.clear()
        try:
            request_json = json.loads(head)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad(f"the inference request is not valid JSON ({exc}).") from None
        if not isinstance(request_json, dict):
            raise bad("the inference request must be a JSON object with inputs.")
        version = model.current
        items = read_inputs(request_json, binary, version.card, settings.max_files)
        outputs = requested_outputs(request_json, settings.default_top_k, version.card.num_classes)
        if not items:
            raise bad("the input holds no image.")
        info["images"] = len(items)
        try:
            answered_by, results = await state.classify_images(model, items)
        except ServiceError as exc:
            if exc.status == 503:
                counters["refused_busy"] += 1
            raise
        bad_items = [r for r in results if not isinstance(r, np.ndarray)]
        if bad_items:
            status = 413 if all(isinstance(b, ImageTooLargeError) for b in bad_items) else 400
            raise ServiceError(status, str(bad_items[0]) if len(bad_items) == 1
                               else f"{len(bad_items)} of the {len(results)} images could not be read; {bad_items[0]}")
        counters["answered"] += 1
        probs = np.stack(results).astype(np.float32)
        return build_answer(model.name, version_of(model), request_json.get("id"), probs, answered_by.card.classes,
                            outputs)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.get(prefix, summary="Open Inference Protocol: model metadata.", tags=["v2"])(metadata)
        app.get(prefix + "/ready", summary="Open Inference Protocol: model readiness.", tags=["v2"])(model_ready)
        app.post(prefix + "/infer", summary="Open Inference Protocol: inference (JSON or binary tensors).",
                 tags=["v2"])(infer)
