"""Running the service: bind the socket first (so ``--port 0`` can report the free port it got, and a port in use
is one sentence before anything starts), serve with uvicorn, print the URL once it listens, and shut down
gracefully on SIGTERM or SIGINT: stop accepting, let in-flight requests finish, exit 0."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

from cnncli.core.errors import UsageError

GRACEFUL_TIMEOUT_S = 30


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: a free one); UsageError when it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on --host {host!r}: {exc.strerror or exc}.") from None
    family, kind, proto, _, address = infos[0]
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only then, and without it
    # Nagle + delayed ACK add 40 ms to every answer on a kept-alive connection
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == 98:  # EADDRINUSE
            raise UsageError(f"port {port} on {host} is already in use; choose another --port "
                             "(--port 0 picks a free one).") from None
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}).") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def serve(app, sock: socket.socket, banner: str, graceful_timeout: float = GRACEFUL_TIMEOUT_S) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT; returns normally (exit 0) after a graceful shutdown."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", proxy_headers=False,
                            server_header=False, timeout_graceful_shutdown=graceful_timeout, timeout_keep_alive=5)
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            print(banner, file=sys.stderr, flush=True)
        await task

    # uvicorn handles SIGINT/SIGTERM while it serves, then re-raises the signal to the handlers that were there
    # before; these no-op handlers make that a normal return (exit 0) instead of a death by signal.
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _f: stopped.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(run())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not server.started:
        raise UsageError("the server did not start; see the messages above.")
    print("cnncli serve: stopped" + (" (signal)" if stopped else "") + ".", file=sys.stderr, flush=True)
