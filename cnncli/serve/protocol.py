"""The HTTP/1.1 connection of ``cnncli serve``: uvicorn's h11 protocol with what a service left unattended needs.

- A header deadline: a connection must deliver a complete request line and headers within ``header_timeout``
  seconds of opening (or of its first byte after a kept-alive answer); otherwise it is closed, with a JSON 408
  when part of a request had arrived. Idle kept-alive connections close after uvicorn's ``timeout_keep_alive``.
- JSON for the errors answered before any app runs: h11 refuses a malformed request (a bad or huge
  Content-Length, a garbage request line, headers over h11's 16 KB buffer, a bad chunk) and uvicorn answered it
  in plain text; here it is ``{"error": ...}`` with h11's status (400, 431, 501) and the reason.
- What the connection cap needs (:class:`cnncli.serve.server.Listener`): whether a request is in progress, and
  since when the connection has been idle, so the one idle longest can make room for a new one.

The request deadline after the headers (body, queue, engine) is the app's (:mod:`cnncli.serve.deadline`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from cnncli.serve.errors import error_body


@dataclass
class ConnectionStats:
    """Counters for /v1/stats: what the listener and the connections have done."""

    open: int = 0
    max_connections: int = 0
    accepted: int = 0
    evicted_idle: int = 0  # idle connections closed to make room at the cap
    header_timeouts: int = 0  # connections that sent part of a request, then not the rest in time
    malformed: int = 0  # requests h11 refused

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _RecordingConnection(h11.Connection):
    """An h11 connection that keeps the protocol error it raised, so the answer can say what was wrong."""

    last_error: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise


def _reason(exc: h11.RemoteProtocolError | None) -> str:
    text = str(exc) if exc is not None else "invalid HTTP request"
    return text.split(": bytearray(")[0]  # h11 quotes the offending bytes; the client has them


class GuardedH11Protocol(H11Protocol):
    def __init__(self, config, server_state, app_state, _loop=None, *, header_timeout: float,
                 stats: ConnectionStats, on_lost: Callable[[], None] | None = None, log: bool = True) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_header_bytes = config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        self.conn = _RecordingConnection(h11.SERVER, self.max_header_bytes)
        self.header_timeout, self.stats, self.on_lost, self.log = header_timeout, stats, on_lost, log
        self.idle_since = self.loop.time()
        self._header_timer: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request whose headers are not complete yet
        self._seen_cycle = None

    # ------------------------------------------------------------------ state for the listener
    @property
    def in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    @property
    def evictable(self) -> bool:
        return not self.in_request and self.transport is not None and not self.transport.is_closing()

    def evict(self) -> None:
        """Close this idle connection to make room (a client sees what it sees when keep-alive ends)."""
        self.stats.evicted_idle += 1
        self.transport.close()

    # ------------------------------------------------------------------ header deadline
    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.in_request:
            return
        if self._partial:  # part of a request came: say why it is closed; a silent idle one just closes
            self.stats.header_timeouts += 1
            self._answer_raw(408, f"the request headers did not arrive within {self.header_timeout:g} s.")
            self._log_line(408, "headers not received in time")
        self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.idle_since = self.loop.time()
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if not self.in_request and data:
            self._partial = True
            self._arm_header_timer()
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._seen_cycle:  # a request's headers are complete
            self._seen_cycle = self.cycle
            self._partial = False
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        self.idle_since = self.loop.time()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_header_timer()
        if self.on_lost is not None:
            self.on_lost()

    # ------------------------------------------------------------------ JSON for what h11 refuses
    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn when h11 refuses the request: answer JSON with h11's status, then close."""
        error = self.conn.last_error
        status = error.error_status_hint if error is not None else 400
        if status == 431:
            message = (f"the request line and headers are over the {self.max_header_bytes // 1024} KB limit; "
                       "the connection is closed.")
        else:
            message = f"malformed HTTP request ({_reason(error)}); the connection is closed."
        self.stats.malformed += 1
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # refused mid-body: the app sees a disconnect
            # for the request log line (cnncli.serve.app.RequestLog), whether or not it has started yet
            cycle.scope.setdefault("cnncli", {}).update(status=status, note=f"malformed request: {_reason(error)}")
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        else:
            self._log_line(status, f"malformed request: {_reason(error)}")
        body = error_body(message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            for event in (h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES.get(status, b"")),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # h11 will not frame an answer in this state: raw bytes, we close anyway
            self._answer_raw(status, message)
        self.transport.close()

    def _answer_raw(self, status: int, message: str) -> None:
        body = error_body(message)
        head = (f"HTTP/1.1 {status} {STATUS_PHRASES.get(status, b'').decode()}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
        self.transport.write(head.encode("ascii") + body)

    def _log_line(self, status: int, note: str) -> None:
        if self.log:
            host, port = self.client or ("-", 0)
            print(f"{host}:{port} - - {status} images=0 ({note})", file=sys.stderr, flush=True)
