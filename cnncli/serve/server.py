"""Running the service: bind the socket first (so ``--port 0`` can report the free port it got, and a port in use
is one sentence before anything starts), serve with uvicorn, print the URL once it listens, and shut down
gracefully on SIGTERM or SIGINT: stop accepting, let in-flight requests finish, exit 0.

Hostile or broken clients cannot take the service down:

- :class:`Listener` accepts connections itself (uvicorn gets none of its own) and never holds more than
  ``--max-connections`` at once, kept below the open-file limit (RLIMIT_NOFILE) by :func:`connection_cap`: at the
  cap the connection idle longest is closed to make room, and when every one has a request in progress (each bounded
  by ``--timeout``) new ones wait in the kernel's backlog instead of failing ``accept()`` with EMFILE.
- Every connection has a header deadline and JSON errors (:mod:`.protocol`); every request a deadline
  (:mod:`.deadline`), which SIGTERM shortens to a few seconds, so a stalled upload cannot hold the shutdown.
- uvicorn's and asyncio's log records are one line each (:class:`OneLineLog`): no tracebacks in the log.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import sys
import time

from cnncli.core.errors import UsageError

BACKLOG = 2048  # connections the kernel holds for us while we are at the cap
HEADER_TIMEOUT_S = 10.0  # request line and headers, at most (and never more than --timeout)
KEEP_ALIVE_S = 5  # an idle kept-alive connection closes after this
MIN_FREE_DESCRIPTORS = 16  # kept free for the model, spooled uploads, logs: at least this, or 1/8 of the limit


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


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir used
    except OSError:
        return 64  # not Linux: a guess on the safe side


def connection_cap(requested: int) -> tuple[int, str | None]:
    """The connections to allow at once: ``requested``, or fewer when the open-file limit would not leave room
    (after raising the soft limit toward the hard one, as far as needed). Returns (cap, a warning or None)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return requested, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = _open_descriptors()
    wanted = -(-(in_use + requested) * 8 // 7) + MIN_FREE_DESCRIPTORS  # what leaves `requested` below
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return requested, None
    cap = min(requested, soft - in_use - max(MIN_FREE_DESCRIPTORS, soft // 8))
    if cap >= requested:
        return requested, None
    cap = max(1, cap)
    return cap, (f"serving at most {cap} connections at once, not {requested} (--max-connections): the open-file "
                 f"limit is {soft} (ulimit -n) and {in_use} files are open; raise the limit for more.")


class Listener:
    """Accepts connections on ``sock`` for uvicorn while fewer than ``cap`` are open (see the module's doc)."""

    def __init__(self, sock: socket.socket, make_protocol, connections: set, cap: int, stats) -> None:
        self.sock, self.make_protocol, self.connections, self.cap, self.stats = sock, make_protocol, connections, \
            cap, stats
        self.stats.max_connections = cap
        self._freed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._warned_at = -1e9

    def freed(self) -> None:
        """A connection closed (its protocol calls this)."""
        self.stats.open = len(self.connections)
        self._freed.set()

    def start(self) -> None:
        self.sock.listen(BACKLOG)
        self.sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cnncli-listener")

    def close(self) -> None:
        """Stop accepting and close the listening socket; connections already open are uvicorn's to shut down."""
        if self._task is not None:
            self._task.cancel()
        self.sock.close()

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self.sock.fileno()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(fd)

    async def _wait_freed(self) -> None:
        self._freed.clear()
        try:
            await asyncio.wait_for(self._freed.wait(), 1.0)
        except asyncio.TimeoutError:
            pass

    async def _make_room(self) -> None:
        """Until below the cap: close the connection idle longest, or wait for one with a request to end."""
        while len(self.connections) >= self.cap:
            idle = [c for c in self.connections if getattr(c, "evictable", False)]
            if idle:
                min(idle, key=lambda c: c.idle_since).evict()
            await self._wait_freed()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._readable()  # someone is waiting in the backlog
            await self._make_room()
            while len(self.connections) < self.cap:
                try:
                    conn, _ = self.sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                        continue  # the client gave up between SYN and accept
                    # out of descriptors (EMFILE, ENFILE) or memory: the connection waits in the backlog
                    self._warn(f"cannot accept connections for now ({exc.strerror}); they wait in the backlog.")
                    await asyncio.sleep(0.1)
                    break
                self.stats.accepted += 1
                try:
                    await loop.connect_accepted_socket(self.make_protocol, conn)
                except Exception as exc:  # this connection only: the listener must keep accepting
                    self._warn(f"dropped a connection ({type(exc).__name__}: {exc}).")
                    conn.close()
                self.stats.open = len(self.connections)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at > 10:  # at most one line per 10 s
            self._warned_at = now
            print(f"warning: {message}", file=sys.stderr, flush=True)


class OneLineLog(logging.Filter):
    """A log record with an exception becomes one line naming it: the service's log holds no tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})".replace("\n", " ")
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def _uvicorn_server(config, sock: socket.socket, cap: int, header_timeout: float, app_state, log: bool):
    import uvicorn

    from cnncli.serve.protocol import GuardedH11Protocol

    class Server(uvicorn.Server):
        """uvicorn's server with :class:`Listener` accepting for it, and the app told first when it stops."""

        listener: Listener | None = None

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=[])  # no socket of uvicorn's own: the listener hands it connections
            if not self.started:
                return
            stats = app_state.connections

            def make_protocol():
                return GuardedH11Protocol(config, self.server_state, self.lifespan.state,
                                          header_timeout=header_timeout, stats=stats,
                                          on_lost=self.listener.freed, log=log)

            self.listener = Listener(sock, make_protocol, self.server_state.connections, cap, stats)
            self.listener.start()

        async def shutdown(self, sockets=None) -> None:
            if self.listener is not None:
                self.listener.close()
            app_state.deadlines.begin_stopping()  # requests in flight: a few seconds more at most
            await super().shutdown(sockets=None)

    return Server(config)


def serve(app, sock: socket.socket, banner: str, *, timeout: float = 30.0, max_connections: int = 1000,
          log: bool = True) -> None:
    """Serve ``app`` (from :func:`cnncli.serve.app.create_app`) on ``sock`` until SIGTERM/SIGINT; returns normally
    (exit 0) after a graceful shutdown."""
    import uvicorn

    from cnncli.serve.deadline import STOP_GRACE_S

    config = uvicorn.Config(app, log_level="error", access_log=False, lifespan="on", proxy_headers=False,
                            server_header=False, ws="none", timeout_keep_alive=KEEP_ALIVE_S,
                            timeout_graceful_shutdown=int(STOP_GRACE_S + 5))
    for name in ("uvicorn.error", "uvicorn", "asyncio"):
        logging.getLogger(name).addFilter(OneLineLog())
    server = _uvicorn_server(config, sock, max_connections, min(HEADER_TIMEOUT_S, timeout), app.state, log)

    reloading: set[asyncio.Task] = set()

    def reload_on_hangup() -> None:
        if reloading:
            print("cnncli serve: SIGHUP: a reload is already in progress.", file=sys.stderr, flush=True)
            return
        print("cnncli serve: SIGHUP: reloading the model files that changed.", file=sys.stderr, flush=True)
        task = asyncio.ensure_future(app.state.reload_all())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            if hasattr(signal, "SIGHUP") and hasattr(app.state, "reload_all"):
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_on_hangup)
            print(banner, file=sys.stderr, flush=True)
        await task
        for pending in list(reloading):
            pending.cancel()

    # uvicorn handles SIGINT/SIGTERM while it serves, then re-raises the signal to the handlers that were there
    # before; these no-op handlers make that a normal return (exit 0) instead of a death by signal.
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _f: stopped.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    if hasattr(signal, "SIGHUP"):  # a SIGHUP before the service listens must not end it (its default action)
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        asyncio.run(run())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not server.started:
        raise UsageError("the server did not start; see the messages above.")
    print("cnncli serve: stopped" + (" (signal)" if stopped else "") + ".", file=sys.stderr, flush=True)


def serve_engine(engine, settings, host: str = "127.0.0.1", port: int = 0, max_connections: int = 1000) -> None:
    """``cnncli serve`` of one open engine (tests run it on an engine wrapper of theirs: tests/serve_engines.py)."""
    serve_models(engine, settings, host, port, max_connections)


def serve_models(served, settings, host: str = "127.0.0.1", port: int = 0, max_connections: int = 1000) -> None:
    """``cnncli serve`` once its engines are open (``served``: what :func:`cnncli.serve.app.create_app` takes):
    bind, build the app, print the startup line, serve until stopped."""
    from cnncli.core.console import warn
    from cnncli.serve.app import create_app
    from cnncli.serve.auth import is_loopback

    sock = bind_socket(host, port)
    cap, lowered = connection_cap(max_connections)
    if lowered:
        warn(lowered)
    settings.max_connections = cap
    url = url_of(sock)
    app = create_app(served, settings)
    models = list(app.state.models.values())
    first = models[0].current
    exposed = "" if is_loopback(host) else " (reachable from the network)"
    exposed += ", API key required" if settings.api_key else ("" if is_loopback(host) else ", NO API key (--no-auth)")
    others = f" and {len(models) - 1} more ({', '.join(m.name for m in models[1:])})" if len(models) > 1 else ""
    banner = (f"cnncli serve: {models[0].name} = {first.card.arch} ({first.card.num_classes} classes) on "
              f"{first.engine.name}, {settings.precision}{others}; listening on {url}{exposed}; API docs "
              f"{url}/docs; Ctrl-C stops" + (", SIGHUP reloads changed model files" if any(
                  m.source and m.source.path for m in models) else "") + ".")
    serve(app, sock, banner, timeout=settings.timeout, max_connections=cap, log=settings.log)
