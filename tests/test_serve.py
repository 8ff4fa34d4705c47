"""`cnncli serve` (issue 11) as a real server process on a free loopback port, spoken to over HTTP with httpx:
results identical to `cnncli predict --format json`, every bad input answered with its status and a one-sentence
JSON error while the service keeps serving, dynamic batching, the queue limit, client disconnects, SIGTERM under
load, and no torch in the serving process. None of this existed on the old main (no `serve` command)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_helpers import ServeProcess, children_of


@pytest.fixture(scope="module")
def server(cached_tiny):
    """Small limits, so each one is cheap to hit: 1 MB uploads, 4 files, 1 megapixel."""
    with ServeProcess("-m", cached_tiny, "--max-upload-mb", "1", "--max-files", "4", "--workers", "2",
                      env={"CNNCLI_MAX_PIXELS": "1000000"}) as proc:
        yield proc


def jpeg_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def assert_same_predictions(served: list[dict], offline: list[dict], paths: list[str]) -> None:
    assert [r["path"] for r in served] == paths
    for s, o in zip(served, offline):
        assert [t["index"] for t in s["top"]] == [t["index"] for t in o["top"]]
        assert [t["label"] for t in s["top"]] == [t["label"] for t in o["top"]]
        assert max(abs(a["prob"] - b["prob"]) for a, b in zip(s["top"], o["top"])) < 1e-5


def test_classify_equals_predict_json_raw_and_multipart(server, cached_tiny, photos, run_cli):
    """Acceptance 1: the same objects as `predict --format json` (path: the upload's filename, or '-')."""
    offline = run_cli("predict", photos["chelsea"], photos["coffee"], "-m", cached_tiny, "-f", "json", "-k", "3")
    assert offline.code == 0, offline.err
    offline = json.loads(offline.out)
    with server.client() as http:
        raw = http.post("/v1/classify", params={"top_k": 3}, content=jpeg_bytes(photos["chelsea"]),
                        headers={"content-type": "image/jpeg"})
        assert raw.status_code == 200, raw.text
        assert_same_predictions(raw.json(), offline[:1], ["-"])
        one = http.post("/v1/classify?top_k=3", files={"file": ("chelsea.jpg", jpeg_bytes(photos["chelsea"]))})
        assert_same_predictions(one.json(), offline[:1], ["chelsea.jpg"])
        both = http.post("/v1/classify?top_k=3", files=[("files", ("chelsea.jpg", jpeg_bytes(photos["chelsea"]))),
                                                       ("files", ("coffee.jpg", jpeg_bytes(photos["coffee"])))])
        assert_same_predictions(both.json(), offline, ["chelsea.jpg", "coffee.jpg"])
        assert len(http.post("/v1/classify?top_k=1", content=jpeg_bytes(photos["coffee"])).json()[0]["top"]) == 1
        card = http.get("/v1/model").json()
        assert card["classes"] == ["brick", "grass", "gravel"] and card["precision"] == "fp32"
        assert card["engine"].startswith("onnxruntime") and card["preprocessing"]["input_size"]
        assert http.get("/healthz").json() == {"status": "ok"} and http.get("/readyz").status_code == 200
        assert http.get("/docs").status_code == 200
        schema = http.get("/openapi.json").json()
        assert ("/v1/classify" in schema["paths"]
                and "multipart/form-data" in json.dumps(schema["paths"]["/v1/classify"]))


def test_serving_process_does_not_import_torch(server):
    """Serving from the cached onnxruntime export never loads PyTorch (its shared library is not mapped)."""
    with server.client() as http:
        assert http.get("/readyz").status_code == 200
    maps = Path(f"/proc/{server.pid}/maps").read_text()
    assert "libtorch" not in maps and "onnxruntime" in maps


def _big_png() -> bytes:
    return png_bytes(np.zeros((1100, 1000, 3), np.uint8))  # 1.1 megapixels, a few KB of PNG


def _chunks(total: int, size: int = 64 * 1024):
    for _ in range(total // size):
        yield b"\0" * size


BAD_INPUTS = {
    "not an image": (dict(files={"file": ("notes.txt", b"hello, not an image")}), 422, "notes.txt: not an image"),
    "truncated": ("truncated", 422, "truncated.jpg: cannot decode"),
    "empty body": (dict(content=b""), 422, "no image in the request"),
    "empty file": (dict(files={"file": ("empty.jpg", b"")}), 422, "empty.jpg: the file is empty"),
    "over the upload limit": (dict(content=b"\0" * (1024 * 1024 + 10)), 413, "over the 1 MB limit"),
    "over the upload limit, streamed": (dict(content=_chunks(3 * 1024 * 1024)), 413, "over the 1 MB limit"),
    "over the pixel limit": (dict(files={"file": ("huge.png", _big_png())}), 413, "huge.png: 1000x1100 is"),
    "too many files": ("five files", 413, "too many files in one request; the limit is 4"),
    "malformed multipart": (dict(content=b"--x\r\ngarbage", headers={"content-type": "multipart/form-data"}), 400,
                            "multipart body could not be read"),
    "truncated multipart": (dict(content=b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
                                         b"Content-Type: image/jpeg\r\n\r\n" + b"\xff\xd8\xff" * 100,
                                 headers={"content-type": "multipart/form-data; boundary=b"}), 400,
                            "the multipart body could not be read (it is truncated"),
    "top_k 0": (dict(params={"top_k": 0}), 422, "top_k: Input should be greater than or equal to 1"),
    "top_k text": (dict(params={"top_k": "many"}), 422, "top_k: Input should be a valid integer"),
    "unknown route": ("GET /v2/classify", 404, "no such endpoint: GET /v2/classify"),
    "wrong method": ("GET /v1/classify", 405, "GET is not allowed on /v1/classify; use POST"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_status_and_one_sentence_json_error_then_service_still_answers(server, photos, case):
    request, status, fragment = BAD_INPUTS[case]
    good = jpeg_bytes(photos["chelsea"])
    with server.client() as http:
        if request == "truncated":
            response = http.post("/v1/classify", files={"file": ("truncated.jpg", good[:3000])})
        elif request == "five files":
            response = http.post("/v1/classify", files=[("files", (f"{i}.jpg", good)) for i in range(5)])
        elif isinstance(request, str):
            method, path = request.split()
            response = http.request(method, path)
        else:
            request = dict(request)
            if "params" in request:
                request["content"] = good
            response = http.post("/v1/classify", **request)
        assert response.status_code == status, response.text
        body = response.json()
        assert fragment in body["error"], body
        assert "Traceback" not in response.text and "\n" not in body["error"]
        after = http.post("/v1/classify", content=good)
        assert after.status_code == 200 and after.json()[0]["top"][0]["label"] in {"brick", "grass", "gravel"}
    assert server.proc.poll() is None


def test_upload_limit_is_enforced_while_the_body_streams(server):
    """The 413 comes as soon as the body passes the limit, while the client is still sending (chunked, no
    Content-Length, and never finished), not after reading everything."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: image/jpeg\r\n\r\n")
        chunk = b"\0" * 65536
        for _ in range(20):  # 1.25 MB of an endless body
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        answer = ""
        while not answer.endswith("}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data.decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "over the 1 MB limit" in answer


def test_batch_with_a_bad_file_answers_the_good_ones_and_marks_the_bad_one(server, photos):
    good = jpeg_bytes(photos["coffee"])
    with server.client() as http:
        response = http.post("/v1/classify", files=[("files", ("a.jpg", good)), ("files", ("bad.png", b"\x89PNG..")),
                                                   ("files", ("c.jpg", good))])
    assert response.status_code == 200
    a, bad, c = response.json()
    assert a["path"] == "a.jpg" and c["path"] == "c.jpg" and a["top"] == c["top"]
    assert bad == {"path": "bad.png", "error": bad["error"]} and bad["error"].startswith("bad.png: ")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_client_disconnect_mid_upload_leaks_nothing(server, photos):
    host, port = server.url.removeprefix("http://").split(":")
    with server.client() as http:
        http.post("/v1/classify", content=jpeg_bytes(photos["chelsea"]))
        fds = _open_fds(server.pid)
        part = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n"
                b"Content-Type: image/jpeg\r\n\r\n" + b"\xff" * 400_000)
        for i in range(12):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                if i % 2:
                    sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n"
                                 b"Content-Type: multipart/form-data; boundary=b\r\n\r\n" + part)
                else:
                    sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n"
                                 + b"\xff" * 300_000)
                time.sleep(0.05)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = http.get("/v1/stats").json()
            if stats["in_flight"] == 0:
                break
            time.sleep(0.05)
        assert stats["in_flight"] == 0 and stats["reserved"] == 0 and stats["body_bytes"] == 0, stats
        assert _open_fds(server.pid) <= fds + 2  # temp files and sockets closed
        assert http.post("/v1/classify", content=jpeg_bytes(photos["chelsea"])).status_code == 200
    assert "disconnected" in server.stderr


def test_request_log_lines(server, photos):
    with server.client() as http:
        http.post("/v1/classify", files=[("files", ("a.jpg", jpeg_bytes(photos["coffee"])))] * 2)
    time.sleep(0.2)
    line = [ln for ln in server.lines if "POST /v1/classify 200 images=2 " in ln]
    assert line and line[-1].endswith("ms"), server.stderr[-2000:]


def _post_many(url: str, body: bytes, n: int) -> list[httpx.Response]:
    results: list = [None] * n
    start = threading.Barrier(n)

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            start.wait()
            try:
                results[i] = http.post("/v1/classify", content=body)
            except httpx.HTTPError as exc:
                results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_concurrent_requests_are_batched_and_overload_gets_503_retry_after(cached_tiny, photos):
    """12 simultaneous single-image requests against --max-queue 6 with a 1 s batching window: 6 are admitted and
    answered in fewer engine batches than images; the others get 503 + Retry-After; then it serves normally."""
    with ServeProcess("-m", cached_tiny, "--max-wait-ms", "1000", "--max-queue", "6") as server:
        responses = _post_many(server.url, jpeg_bytes(photos["chelsea"]), 12)
        codes = sorted(r.status_code for r in responses)
        ok = [r for r in responses if r.status_code == 200]
        busy = [r for r in responses if r.status_code == 503]
        assert len(ok) + len(busy) == 12, codes
        assert len(ok) <= 6 and busy, codes
        assert all(r.headers["retry-after"] == "1" and "at capacity" in r.json()["error"] for r in busy)
        assert len({json.dumps(r.json()) for r in ok}) == 1
        with server.client() as http:
            stats = http.get("/v1/stats").json()
            assert stats["images"] == len(ok) and stats["batches"] < stats["images"], stats
            assert stats["largest_batch"] >= 2 and stats["refused_busy"] == len(busy)
            assert http.post("/v1/classify", content=jpeg_bytes(photos["coffee"])).status_code == 200


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_under_load_answers_in_flight_requests_and_exits_0(cached_tiny, photos, signum):
    """Four uploads are still streaming in when SIGTERM (or Ctrl-C's SIGINT) arrives: each is answered 200, then
    the process exits 0 and stops listening; it never had child processes to orphan."""
    server = ServeProcess("-m", cached_tiny)
    body = jpeg_bytes(photos["chelsea"])

    def slow_body():
        for i in range(0, len(body), len(body) // 8 + 1):
            time.sleep(0.15)
            yield body[i:i + len(body) // 8 + 1]

    results: list = []

    def upload() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            results.append(http.post("/v1/classify", content=slow_body()))

    try:
        assert children_of(server.pid) == []
        threads = [threading.Thread(target=upload) for _ in range(4)]
        for t in threads:
            t.start()
        with server.client() as http:
            deadline = time.monotonic() + 20
            while http.get("/v1/stats").json()["in_flight"] < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert http.get("/v1/stats").json()["in_flight"] == 4
        server.proc.send_signal(signum)
        for t in threads:
            t.join(60)
        code = server.proc.wait(30)
    finally:
        server.stop()
    assert code == 0, server.stderr
    assert [r.status_code for r in results] == [200] * 4, results
    assert all(r.json()[0]["top"] for r in results)
    assert "stopped" in server.stderr and "Traceback" not in server.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz", timeout=2)


def test_connections_have_tcp_nodelay():
    """Accepted connections get TCP_NODELAY (asyncio sets it only for IPPROTO_TCP sockets): without it, Nagle and
    delayed ACK added 40 ms to every answer on a kept-alive connection (found with bench_serve.py)."""
    import asyncio

    from cnncli.serve.server import bind_socket

    async def check() -> int:
        seen = []

        async def handle(reader, writer):
            seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=bind_socket("127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        return seen[0]

    assert asyncio.run(check()) == 1


def test_a_lone_request_does_not_wait_for_the_batching_window(cached_tiny, photos):
    """With nobody else in progress there is nothing to wait for: a 3 s --max-wait-ms window costs a single
    client nothing; concurrent uploads still share one batch."""
    with ServeProcess("-m", cached_tiny, "--max-wait-ms", "3000") as server, server.client() as http:
        start = time.perf_counter()
        assert http.post("/v1/classify", content=jpeg_bytes(photos["chelsea"])).status_code == 200
        assert time.perf_counter() - start < 2.0
        files = [("files", (f"{i}.jpg", jpeg_bytes(photos["coffee"]))) for i in range(3)]
        assert http.post("/v1/classify", files=files).status_code == 200
        stats = http.get("/v1/stats").json()
        assert stats["batch_sizes"] == {"1": 1, "3": 1}, stats


def test_startup_errors_are_one_sentence(run_cli, cached_tiny, tmp_path):
    missing = run_cli("serve", "-m", tmp_path / "missing.onnx")
    assert missing.code == 2 and "does not exist" in missing.err and "Traceback" not in missing.err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli("serve", "-m", cached_tiny, "--port", port)
    assert busy.code == 2 and f"port {port} on 127.0.0.1 is already in use" in busy.err


def test_default_model_serves_what_predict_says_for_chelsea_and_coffee(run_cli, photos):
    """Acceptance 1 with the bundled ImageNet model: same top-1 and probabilities within 1e-5 as predict.
    (Exports the default model to the session cache when no earlier test did: ~35 s alone on 2 cores.)"""
    offline = run_cli("predict", photos["chelsea"], photos["coffee"], "-f", "json", "--device", "cpu")
    assert offline.code == 0, offline.err
    offline = json.loads(offline.out)
    assert offline[0]["top"][0]["label"] in {"tiger cat", "tabby", "Egyptian cat"}
    with ServeProcess("--device", "cpu") as server, server.client() as http:
        files = [("files", (f"{name}.jpg", jpeg_bytes(photos[name]))) for name in ("chelsea", "coffee")]
        served = http.post("/v1/classify", files=files)
        assert served.status_code == 200, served.text
        assert_same_predictions(served.json(), offline, ["chelsea.jpg", "coffee.jpg"])
        assert http.get("/v1/model").json()["arch"] == "efficientnet_lite0"


def test_an_engine_failure_is_a_json_500_and_the_service_keeps_serving(cached_tiny, photos):
    """An unexpected error inside the engine answers that request with a one-sentence JSON 500 (no traceback in
    the answer) and the next request is served; a failed warm-up leaves the service up but not ready (/readyz 503
    naming the error) instead of hanging. The app runs in-process on a real uvicorn server."""
    import uvicorn

    from cnncli.engines.base import open_engine
    from cnncli.serve.app import ServeSettings, create_app
    from cnncli.serve.server import bind_socket, url_of

    class FailsOnBlankOrBrightImages:
        def __init__(self, engine):
            self.engine, self.card, self.name = engine, engine.card, "flaky"

        def predict_proba(self, batch):
            if batch.mean() > 0.9 or batch.mean() < -0.99:  # white, or the black warm-up image
                raise RuntimeError("simulated engine failure")
            return self.engine.predict_proba(batch)

    sock = bind_socket("127.0.0.1", 0)
    engine = FailsOnBlankOrBrightImages(open_engine(str(cached_tiny), device="cpu"))
    app = create_app(engine, ServeSettings(log=False))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=url_of(sock), timeout=30) as http:
            ready = None
            for _ in range(400):
                try:
                    ready = http.get("/readyz")
                    if "failed its warm-up" in ready.text:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            assert ready.status_code == 503 and "simulated engine failure" in ready.json()["error"]
            white = png_bytes(np.full((80, 80, 3), 255, np.uint8))
            failed = http.post("/v1/classify", content=white)
            assert failed.status_code == 500
            assert failed.json()["error"].startswith("internal error (RuntimeError)")
            assert "Traceback" not in failed.text
            assert http.post("/v1/classify", content=jpeg_bytes(photos["chelsea"])).status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_ensemble_and_tta_options_serve_what_predict_gives(cached_tiny, photos, run_cli, tmp_path):
    """The options are predict's: two models (an .onnx and a .safetensors) averaged, with flip TTA."""
    onnx = tmp_path / "tiny.onnx"
    assert run_cli("export", cached_tiny, "-o", onnx).code == 0
    offline = run_cli("predict", photos["coffee"], "-m", cached_tiny, "-m", onnx, "--tta", "-f", "json", "-k", "3")
    assert offline.code == 0, offline.err
    with ServeProcess(onnx, "-m", cached_tiny, "--tta") as server, server.client() as http:
        served = http.post("/v1/classify?top_k=3", files={"file": ("coffee.jpg", jpeg_bytes(photos["coffee"]))})
        card = http.get("/v1/model").json()
    assert_same_predictions(served.json(), json.loads(offline.out), ["coffee.jpg"])
    assert card["tta"] is True and card["engine"].startswith("ensemble of") and card["engine"].endswith("flip TTA")


@pytest.mark.parametrize("option, value", [("--max-wait-ms", "nan"), ("--max-upload-mb", "inf"), ("--max-batch", "0"),
                                           ("--port", "70000"), ("--max-queue", "-1")])
def test_out_of_range_options_are_usage_errors(run_cli, option, value):
    result = run_cli("serve", option, value)
    assert result.code == 2 and option in result.err and "Traceback" not in result.err


def test_without_the_serve_extra_it_says_what_to_install():
    import subprocess
    import sys

    code = ("import sys\nsys.modules['uvicorn'] = None\nfrom cnncli.cli.app import main\nmain(['serve'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "pip install 'cnncli[serve]'" in done.stderr and "uvicorn" in done.stderr
    assert "Traceback" not in done.stderr
