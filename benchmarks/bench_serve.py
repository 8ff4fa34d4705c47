"""`cnncli serve` under load on loopback, next to offline `predict` on the same images in the same run.

For each number of concurrent clients (default 1, 8, 32, 64), every client sends single JPEGs (raw body) back to
back for a fixed time; reported: served img/s, p50/p99 latency, errors, the engine's mean batch size (from
/v1/stats), and img/s as a fraction of offline predict (the same engine and images through `predict_items`, warm,
default decoder workers). Also the engine's batch-1 forward + one decode, the reference for the 1-client p50.

    uv run python benchmarks/bench_serve.py [--model SPEC] [--images 256] [--clients 1,8,32,64] [--seconds 20]
                                            [--ray-replicas N]

The server runs as in production: with an API key (every request carries it) and its Prometheus metrics on.
``--ray-replicas N`` adds rows for `cnncli serve --ray --replicas N` (a local Ray on this machine, Ray Serve's proxy
in front): the same load through the same app, N replicas (mean batch and server CPU are not shown there: they are
the replicas', not one process's).

Issue 11's targets: at 32 clients, served img/s >= 0.8x offline predict with p99 < 500 ms and 0 errors; at 1
client, p50 < 2x (batch-1 forward + decode).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import machine_line, print_table, write_jpeg_folder

URL_LINE = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


class ServerProcess:
    """`cnncli serve` on a free loopback port; stderr kept (request log lines are off: --quiet)."""

    def __init__(self, *args: str, timeout: float = 300, key: str | None = None) -> None:
        import httpx

        cmd = [sys.executable, "-m", "cnncli", "serve", "--port", "0", "--host", "127.0.0.1", *args]
        env = {**os.environ, **({"CNNCLI_API_KEY": key} if key else {})}
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.url = ""
        found = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.lines.append(line.rstrip())
                match = URL_LINE.search(line)
                if match and not found.is_set():
                    self.url = match.group(1)
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        try:
            if not found.wait(timeout):
                raise RuntimeError("cnncli serve did not start:\n" + "\n".join(self.lines[-20:]))
            while time.monotonic() < deadline:
                try:
                    if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            raise RuntimeError("cnncli serve never became ready")
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict:
        import httpx

        return httpx.get(self.url + "/v1/stats", timeout=30, headers=self.headers).json()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


async def load(url: str, bodies: list[bytes], clients: int, seconds: float, warmup: float,
               check=None, headers: dict | None = None) -> dict:
    """``clients`` coroutines posting bodies back to back; latencies of requests that start after ``warmup`` s
    and finish before the end. ``check(i, response) -> bool`` judges an answer (default: 200)."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    counter = [0]
    counts = {"sent": 0, "answered": 0}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, headers=headers or {}) as http:
        async def client() -> None:
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                i = counter[0]
                counter[0] += 1
                try:
                    response = await http.post("/v1/classify?top_k=5", content=bodies[i % len(bodies)])
                    ok = check(i, response) if check else response.status_code == 200
                    problem = None if ok else f"HTTP {response.status_code}: {response.text[:120]}"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                done = time.perf_counter()
                if now >= measure_from:  # every request started in the measured time counts, answered or not
                    counts["sent"] += 1
                    if problem:
                        errors.append(problem)
                    else:
                        counts["answered"] += 1
                        if done <= stop_at:
                            latencies.append(done - now)

        await asyncio.gather(*(client() for _ in range(clients)))
    return {"latencies": latencies, "errors": errors, "seconds": seconds, **counts}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def offline_predict(spec: list[str], folder: Path, threads: int | None, min_items: int = 1024) -> float:
    """img/s of `predict`'s pipeline (decoder processes + engine) over ``folder`` (cycled to ``min_items``), warm,
    in this process: what `cnncli predict FOLDER` does after its start-up."""
    from cnncli.data.inputs import collect_inputs
    from cnncli.engines.base import open_engines
    from cnncli.predict.run import predict_items

    engine = open_engines(spec or [None], device="cpu", threads=threads)
    items = collect_inputs([str(folder)])
    list(predict_items(engine, items[:32], k=5, batch_size=32, workers=0))  # warm-up
    items = items * max(1, -(-min_items // len(items)))  # long enough that starting the decoder pool is noise
    start = time.perf_counter()
    done = sum(1 for p in predict_items(engine, items, k=5, batch_size=32) if p.ok)
    return done / (time.perf_counter() - start)


def single_image_reference(spec: list[str], paths: list[Path], threads: int | None) -> tuple[float, float]:
    """Median ms of one decode (file -> pixels) and of the engine's batch-1 forward."""

    from cnncli.data.images import load_pixels, normalize
    from cnncli.engines.base import open_engines

    engine = open_engines(spec or [None], device="cpu", threads=threads)
    pre = engine.card.preprocessing
    decode, forward = [], []
    for path in paths[:40]:
        t0 = time.perf_counter()
        pixels = load_pixels(path, pre)
        t1 = time.perf_counter()
        engine.predict_proba(normalize(pixels[None], pre))
        forward.append(time.perf_counter() - t1)
        decode.append(t1 - t0)
    return statistics.median(decode) * 1000, statistics.median(forward[3:] or forward) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="model spec (repeat: ensemble); default model")
    parser.add_argument("--images", type=int, default=256, help="distinct JPEGs (500x375) the clients cycle through")
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per client count")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each measurement")
    parser.add_argument("--offline-images", type=int, default=1024, help="images offline predict classifies "
                        "(the JPEGs, cycled)")
    parser.add_argument("--threads", type=int, default=None, help="engine threads (server and offline)")
    parser.add_argument("--serve-args", default="", help="extra `cnncli serve` options, e.g. '--max-wait-ms 10'")
    parser.add_argument("--ray-replicas", type=int, default=0, help="also serve on Ray Serve with N replicas (a "
                        "local Ray) and add its rows; 0: not")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    if "CNNCLI_CACHE" not in os.environ:
        os.environ["CNNCLI_CACHE"] = tempfile.mkdtemp(prefix="cnncli-bench-cache-")
    model_args = [a for spec in args.model for a in ("--model", spec)]
    thread_args = ["--threads", str(args.threads)] if args.threads else []
    print(f"# bench_serve: {machine_line()}; model {args.model or 'default'}; {args.images} JPEGs 500x375")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        paths = write_jpeg_folder(folder, args.images)
        bodies = [p.read_bytes() for p in paths]
        offline = offline_predict(args.model, folder, args.threads, args.offline_images)
        decode_ms, forward_ms = single_image_reference(args.model, paths, args.threads)
        print(f"offline predict: {offline:.1f} img/s; one decode {decode_ms:.1f} ms + batch-1 forward "
              f"{forward_ms:.1f} ms = {decode_ms + forward_ms:.1f} ms")

        key = secrets.token_urlsafe(24)
        common = [*model_args, *thread_args, "--quiet", "--device", "cpu", *args.serve_args.split()]
        setups = [("one process", common)]
        if args.ray_replicas:
            setups.append((f"Ray Serve, {args.ray_replicas} replicas", [*common, "--ray", "local", "--replicas",
                                                                      str(args.ray_replicas)]))
        rows = []
        codes = []
        for setup, serve_args in setups:
            server = ServerProcess(*serve_args, key=key)
            on_ray = "--ray" in serve_args
            try:
                for clients in levels:
                    before = server.stats()
                    cpu0, server_cpu0 = os.times(), server.cpu_seconds()
                    result = asyncio.run(load(server.url, bodies, clients, args.seconds, args.warmup,
                                              headers=server.headers))
                    cpu1, server_cpu1 = os.times(), server.cpu_seconds()
                    after = server.stats()
                    lat = result["latencies"]
                    rate = len(lat) / result["seconds"]
                    batches = after["batches"] - before["batches"]
                    mean_batch = (after["images"] - before["images"]) / batches if batches else float("nan")
                    client_cpu = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / (args.seconds + args.warmup)
                    served = after["images"] - before["images"]
                    server_ms = 1000 * (server_cpu1 - server_cpu0) / served if served else float("nan")
                    rows.append([setup, clients, f"{rate:.1f}", f"{1000 * percentile(lat, 0.5):.1f}",
                                 f"{1000 * percentile(lat, 0.99):.1f}", len(result["errors"]),
                                 "-" if on_ray else f"{mean_batch:.1f}", f"{rate / offline:.2f}",
                                 "-" if on_ray else f"{server_ms:.1f}", f"{client_cpu:.2f}"])
                    for problem in result["errors"][:3]:
                        print(f"  error at {clients} clients ({setup}): {problem}")
            finally:
                codes.append(server.stop())
        print_table(f"served with an API key and metrics (max-batch/max-wait: `cnncli serve` defaults "
                    f"{args.serve_args or ''}), {args.seconds:g} s per row",
                    ["setup", "clients", "img/s", "p50 ms", "p99 ms", "errors", "mean batch", "vs offline",
                     "server CPU ms/img", "client cores"],
                    rows)
        rows = [r[1:] for r in rows if r[0] == "one process"]
        code = codes[0] if len(codes) == 1 else codes
        one = next((r for r in rows if r[0] == 1), None)
        if one is not None:
            print(f"\n1 client: p50 {one[2]} ms = {float(one[2]) / (decode_ms + forward_ms):.2f}x "
                  f"(decode + batch-1 forward, target < 2x)")
        print(f"offline predict {offline:.1f} img/s; server exit code {code}")


if __name__ == "__main__":
    main()
