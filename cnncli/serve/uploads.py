"""Reading the images of one ``POST /v1/classify``: the raw body (named ``-``) or each multipart file part, read
as a stream and refused as it passes ``--max-upload-mb`` (413) or the service's body budget (503).

A multipart body must end with its closing boundary: one cut short (a client that sent less than it meant, a proxy
that truncated it) is a 400 "malformed multipart", not a request that happens to hold no image. The reader records
when the body is complete (:attr:`UploadReader.complete`), which is what tells a slow client (408) from a slow
service (503) when the request's deadline passes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from cnncli.serve.errors import ServiceError, busy

MB = 1024 * 1024


class _FormParser(MultiPartParser):
    """Starlette's multipart parser, noting whether the closing boundary arrived (python-multipart calls
    ``on_end`` only then; Starlette's parser accepts a body cut short as if it were complete)."""

    ended = False

    def on_end(self) -> None:
        self.ended = True
        super().on_end()


class UploadReader:
    """The uploads of one request. ``max_bytes``: its limit (``--max-upload-mb``); ``counters["body_bytes"]``: the
    body bytes held by all requests together, refused (503) past ``budget_bytes``."""

    def __init__(self, request: Request, *, max_upload_mb: float, max_files: int, counters: dict,
                 budget_bytes: int) -> None:
        self.request, self.max_upload_mb, self.max_files = request, max_upload_mb, max_files
        self.max_bytes = int(max_upload_mb * MB)
        self.counters, self.budget_bytes = counters, budget_bytes
        self.held = 0  # this request's bytes, counted in counters["body_bytes"] until release()
        self.complete = False  # the whole body has arrived

    def too_large(self) -> ServiceError:
        return ServiceError(413, f"the upload is over the {self.max_upload_mb:g} MB limit (--max-upload-mb).")

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.request.stream():
            self.held += len(chunk)
            self.counters["body_bytes"] += len(chunk)
            if self.held > self.max_bytes:
                raise self.too_large()
            if self.counters["body_bytes"] > self.budget_bytes:
                self.counters["refused_busy"] += 1
                raise busy("too many uploads in progress")
            if chunk:
                yield chunk
        self.complete = True

    def release(self) -> None:
        self.counters["body_bytes"] -= self.held
        self.held = 0

    async def read(self) -> list[tuple[str, bytes]]:
        """(name, bytes) per image, in order; [] when the request holds none."""
        content_type = self.request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            return await self._read_multipart()
        data = bytearray()
        async for chunk in self.chunks():
            data += chunk
        return [("-", bytes(data))] if data else []

    async def _read_multipart(self) -> list[tuple[str, bytes]]:
        parser = _FormParser(self.request.headers, self.chunks(), max_files=self.max_files, max_fields=64,
                             max_part_size=64 * 1024)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            if exc.message.startswith("Too many files"):
                raise ServiceError(413, f"too many files in one request; the limit is {self.max_files} "
                                       "(--max-files).") from None
            raise ServiceError(400, f"the multipart body could not be read ({exc.message.rstrip('.')}).") from None
        try:
            if not parser.ended:
                raise ServiceError(400, "the multipart body could not be read (it is truncated: it ends before its "
                                        "closing boundary).")
            uploads = []
            for _, value in form.multi_items():
                if not isinstance(value, str):
                    uploads.append((value.filename or "-", await value.read()))
        finally:
            await form.close()
        return uploads
