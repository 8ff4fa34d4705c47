"""`cnncli serve` against hostile and broken clients and engines (issue 25 item 1, issue 19 item 4), each as a real
server process spoken to over raw sockets (stalled and idle clients) and httpx (normal ones):

- stalled uploads hold no queue slot, and get a JSON 408 at --timeout; half-sent headers a 408 at the header
  deadline; silent connections are closed;
- a server limited to 64 open files survives 100 idle sockets and still answers;
- SIGTERM with a stalled upload exits 0 within seconds, with no traceback;
- an engine that answers too few rows, one whose exception kills the batching task, and a slow one: every request
  still ends with an answer or a JSON error, bounded by --timeout (tests/serve_engines.py)."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import ServeProcess, open_files_limit
from test_serve import jpeg_bytes, png_bytes


@pytest.fixture(scope="module")
def plain_server(cached_tiny):
    with ServeProcess("-m", cached_tiny) as proc:
        yield proc


WHITE = png_bytes(np.full((64, 64, 3), 255, np.uint8))  # the image tests/serve_engines.py engines misbehave on


def address(server: ServeProcess) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def stalled_upload(server: ServeProcess) -> socket.socket:
    """A client that sends its headers and 3 of the 1000 body bytes it announced, then nothing."""
    sock = socket.create_connection(address(server), timeout=20)
    sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n"
                 b"\xff\xd8\xff")
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict, bytes]:
    """(status, JSON body, raw bytes) of the one answer on ``sock``, read until the server closes it."""
    raw = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        raw += data
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), raw[:300]
    return int(head.split()[1]), json.loads(body), raw


def stats(server: ServeProcess) -> dict:
    return httpx.get(server.url + "/v1/stats", timeout=10).json()


def wait_for(condition, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_stalled_uploads_hold_no_queue_slot_and_get_408_at_the_timeout(cached_tiny, photos):
    """64 clients stall mid-body against --max-queue 4: a normal request is still answered at once (before, each
    stalled client held a slot and everyone else got 503 until they went away); at --timeout each stalled one gets
    a JSON 408 and its connection is closed; nothing stays counted."""
    with ServeProcess("-m", cached_tiny, "--max-queue", "4", "--timeout", "3", "--quiet") as server:
        stalled = [stalled_upload(server) for _ in range(64)]
        try:
            wait_for(lambda: stats(server)["in_flight"] == 64)
            start = time.monotonic()
            with server.client(timeout=10) as http:
                answer = http.post("/v1/classify", content=jpeg_bytes(photos["chelsea"]))
            assert answer.status_code == 200, answer.text
            assert time.monotonic() - start < 2.5
            assert stats(server)["reserved"] == 0
            status, body, raw = read_answer(stalled[0])
            assert status == 408 and body["error"] == "the request body did not arrive within 3 s (--timeout).", raw
            assert b"connection: close" in raw.lower()
            assert all(read_answer(sock)[0] == 408 for sock in stalled[1:])
        finally:
            for sock in stalled:
                sock.close()
        wait_for(lambda: stats(server)["in_flight"] == 0)
        after = stats(server)
        assert after["body_bytes"] == 0 and after["timed_out"] == 64, after
    assert "Traceback" not in server.stderr


def test_header_deadline_closes_silent_and_half_sent_connections(cached_tiny):
    """With --timeout 1 the header deadline is 1 s: a connection that sends nothing is closed; one that sent half
    its headers gets a JSON 408 first. Before, both were held open for ever."""
    with ServeProcess("-m", cached_tiny, "--timeout", "1") as server:
        silent = socket.create_connection(address(server), timeout=10)
        half = socket.create_connection(address(server), timeout=10)
        half.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Ty")
        start = time.monotonic()
        try:
            assert silent.recv(100) == b""  # closed by the server, not a recv timeout
            status, body, _ = read_answer(half)
            assert status == 408 and body["error"] == "the request headers did not arrive within 1 s."
            assert time.monotonic() - start < 4
        finally:
            silent.close()
            half.close()
        assert stats(server)["connections"]["header_timeouts"] == 1


def test_a_server_limited_to_64_open_files_survives_100_idle_sockets(cached_tiny, photos):
    """Started with RLIMIT_NOFILE 64 (as under `ulimit -n 64`): it caps its connections below the limit and says
    so; 100 idle sockets do not freeze it (before: EMFILE, asyncio tracebacks, no answers), because at the cap
    the connection idle longest makes room; a normal request is answered within seconds."""
    with ServeProcess("-m", cached_tiny, preexec_fn=open_files_limit(64)) as server:
        cap = httpx.get(server.url + "/v1/model", timeout=10).json()["limits"]["max_connections"]
        assert 1 <= cap < 64 and f"serving at most {cap} connections at once" in server.stderr
        idle = [socket.create_connection(address(server), timeout=10) for _ in range(100)]
        try:
            time.sleep(0.5)
            start = time.monotonic()
            with server.client(timeout=8) as http:
                assert http.post("/v1/classify", content=jpeg_bytes(photos["chelsea"])).status_code == 200
            assert time.monotonic() - start < 4
            connections = stats(server)["connections"]
            assert connections["evicted_idle"] > 0 and connections["open"] <= cap, connections
            assert len(list(Path(f"/proc/{server.pid}/fd").iterdir())) < 64
        finally:
            for sock in idle:
                sock.close()
        with server.client(timeout=8) as http:
            assert http.get("/readyz").status_code == 200
    assert "Traceback" not in server.stderr and "out of system resource" not in server.stderr


def test_sigterm_with_a_stalled_upload_exits_0_within_seconds_without_tracebacks(cached_tiny):
    """A stalled upload, a half-sent request and a silent connection are open when SIGTERM comes: the stalled
    request gets a JSON 503 within the 5 s stop grace, the others are closed, and it exits 0 (before: 30 s and
    three uvicorn tracebacks)."""
    server = ServeProcess("-m", cached_tiny)
    try:
        stalled = stalled_upload(server)
        silent = socket.create_connection(address(server), timeout=20)
        half = socket.create_connection(address(server), timeout=20)
        half.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        wait_for(lambda: stats(server)["in_flight"] == 1)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        status, body, _ = read_answer(stalled)
        code = server.proc.wait(20)
        elapsed = time.monotonic() - start
        assert silent.recv(100) == b"" and half.recv(100) == b""
        for sock in (stalled, silent, half):
            sock.close()
    finally:
        server.stop()
    assert code == 0, server.stderr
    assert status == 503 and "the service is stopping" in body["error"]
    assert elapsed < 8.5, elapsed
    assert "Traceback" not in server.stderr and "stopped (signal)" in server.stderr, server.stderr


def test_an_engine_answering_too_few_rows_fails_that_batch_with_500_and_keeps_serving(cached_tiny, photos):
    """Two images in one batch, one row back: both get a JSON 500 naming the mismatch (before, zip() paired the
    first and left the second waiting for ever); a single image next is answered."""
    with ServeProcess(cached_tiny, engine="fewer-rows") as server, server.client(timeout=20) as http:
        photo = jpeg_bytes(photos["chelsea"])
        both = http.post("/v1/classify", files=[("files", ("a.jpg", photo)), ("files", ("b.jpg", photo))])
        assert both.status_code == 500, both.text
        assert both.json()["error"].startswith("the engine returned an array of shape (1, 3) for 2 image(s)")
        one = http.post("/v1/classify", content=photo)
        assert one.status_code == 200 and one.json()[0]["top"]
        assert http.get("/readyz").status_code == 200 and stats(server)["reserved"] == 0


def test_a_crash_of_the_batching_task_fails_requests_with_500_and_makes_it_unready(cached_tiny, photos):
    """The engine raises a BaseException, which kills the batching task: the waiting request gets a JSON 500,
    /readyz and /healthz answer 503 naming the error, and later requests fail at once instead of hanging."""
    with ServeProcess(cached_tiny, engine="crash") as server, server.client(timeout=20) as http:
        crashed = http.post("/v1/classify", content=WHITE)
        assert crashed.status_code == 500, crashed.text
        assert crashed.json()["error"].startswith("the batcher stopped (EngineCrash: simulated crash")
        for probe in ("/readyz", "/healthz"):
            answer = http.get(probe)
            assert answer.status_code == 503 and "EngineCrash: simulated crash" in answer.json()["error"]
        start = time.monotonic()
        later = http.post("/v1/classify", content=jpeg_bytes(photos["chelsea"]))
        assert later.status_code == 500 and "the batcher stopped" in later.json()["error"]
        assert time.monotonic() - start < 2
    assert "error: the batcher stopped (EngineCrash" in server.stderr and "Traceback" not in server.stderr


def test_a_slow_engine_gets_503_at_the_timeout_and_the_queue_slot_is_freed(cached_tiny, photos):
    """--timeout 1 and --max-queue 1 with a 2.5 s forward pass: the client gets a JSON 503 after about 1 s and its
    slot is free at once (the next request is queued, not refused as at capacity); once the engine is free again,
    requests are answered."""
    with ServeProcess(cached_tiny, "--timeout", "1", "--max-queue", "1", engine="slow") as server, \
            server.client(timeout=20) as http:
        start = time.monotonic()
        slow = http.post("/v1/classify", content=WHITE)
        assert slow.status_code == 503, slow.text
        assert slow.json()["error"].startswith("no answer within 1 s (--timeout)") and slow.headers["retry-after"]
        assert 0.9 < time.monotonic() - start < 2.0
        assert stats(server)["reserved"] == 0
        waiting = http.post("/v1/classify", content=jpeg_bytes(photos["chelsea"]))  # the engine is still busy
        assert waiting.status_code == 503 and "no answer within" in waiting.json()["error"], waiting.text
        time.sleep(1.0)
        assert http.post("/v1/classify", content=jpeg_bytes(photos["chelsea"])).status_code == 200


@pytest.mark.parametrize("request_bytes, status, says", [
    (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "(bad Content-Length)"),
    (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 30 + b"\r\n\r\n", 400,
     "(bad Content-Length)"),
    (b"HELLO THERE\r\n\r\n", 400, "(illegal request line)"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n", 431, "over the 16 KB limit"),
    (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
     "(illegal chunk header)"),
    (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "chunked is supported"),
], ids=["bad content-length", "huge content-length", "garbage request line", "200 KB header", "bad chunk",
        "unknown transfer-encoding"])
def test_requests_h11_refuses_get_json_errors_and_the_service_keeps_serving(plain_server, photos, request_bytes,
                                                                             status, says):
    """What uvicorn answered in plain text ("Invalid HTTP request received.") is JSON with h11's status."""
    with socket.create_connection(address(plain_server), timeout=10) as sock:
        try:
            sock.sendall(request_bytes)
        except (ConnectionResetError, BrokenPipeError):  # the 200 KB header: refused before all of it was sent
            pass
        got, body, raw = read_answer(sock)
    assert got == status and says in body["error"] and "\n" not in body["error"], raw
    with plain_server.client() as http:
        assert http.post("/v1/classify", content=jpeg_bytes(photos["chelsea"])).status_code == 200
    assert plain_server.proc.poll() is None
