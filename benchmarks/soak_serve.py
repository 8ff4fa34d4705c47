"""Soak `cnncli serve`: concurrent clients for a long time, 1 upload in 20 a bad one (truncated JPEG, text,
empty, or a too-large body), the server's RSS sampled every second. Every request must get its answer (200 for a
good image, the right 4xx JSON error for a bad one), and RSS after warm-up must stay flat (growth < 10%).

    uv run python benchmarks/soak_serve.py [--minutes 10] [--clients 16] [--bad-every 20] [--model SPEC]

Exit code 0 when both hold, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path

from bench_serve import ServerProcess, load, percentile
from common import machine_line, write_jpeg_folder


def bad_uploads(good: bytes, max_upload_mb: float) -> list[tuple[bytes, int, str]]:
    """(body, expected status, expected words in the error) for the kinds of bad upload the soak sends."""
    return [
        (good[: len(good) // 3], 422, "truncated or corrupt"),
        (b"this is not an image at all", 422, "not an image"),
        (b"", 422, "no image in the request"),
        (b"\0" * int(max_upload_mb * 1024 * 1024 + 1), 413, "limit"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="model spec; default model")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--bad-every", type=int, default=20, help="every Nth request is a bad upload")
    parser.add_argument("--warmup-fraction", type=float, default=0.1, help="RSS baseline taken after this part")
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()

    if "CNNCLI_CACHE" not in os.environ:
        os.environ["CNNCLI_CACHE"] = tempfile.mkdtemp(prefix="cnncli-soak-cache-")
    max_upload_mb = 2.0
    seconds = args.minutes * 60
    print(f"# soak_serve: {machine_line()}; model {args.model or 'default'}; {args.clients} clients for "
          f"{args.minutes:g} min, 1 bad upload in {args.bad_every}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpeg_folder(Path(tmp) / "jpegs", args.images)
        goods = [p.read_bytes() for p in paths]
        bads = bad_uploads(goods[0], max_upload_mb)
        bodies, expect = [], []
        for i in range(len(goods) * args.bad_every):  # the load cycles through these
            if i % args.bad_every == args.bad_every - 1:
                body, status, words = bads[(i // args.bad_every) % len(bads)]
            else:
                body, status, words = goods[i % len(goods)], 200, None
            bodies.append(body)
            expect.append((status, words))

        def check(i: int, response) -> bool:
            status, words = expect[i % len(expect)]
            if response.status_code != status:
                return False
            answer = response.json()
            return bool(answer[0]["top"]) if status == 200 else words in answer["error"]

        model_args = [a for spec in args.model for a in ("--model", spec)]
        server = ServerProcess(*model_args, "--quiet", "--device", "cpu", "--max-upload-mb", str(max_upload_mb))
        samples: list[tuple[float, float]] = []
        done = threading.Event()

        def sample() -> None:
            start = time.perf_counter()
            while not done.is_set():
                try:
                    samples.append((time.perf_counter() - start, server.rss_mb()))
                except OSError:
                    return
                done.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = asyncio.run(load(server.url, bodies, args.clients, seconds, 0.0, check=check))
        finally:
            done.set()
            sampler.join(5)
            stats = server.stats() if server.proc.poll() is None else {}
            code = server.stop()

    warm = [rss for t, rss in samples if t >= seconds * args.warmup_fraction]
    base, end, peak = (warm[0], warm[-1], max(warm)) if warm else (float("nan"),) * 3
    growth = (end - base) / base if warm else float("nan")
    lat = result["latencies"]
    answered, lost = result["answered"], len(result["errors"])
    print(f"requests: {result['sent']} sent, {answered} answered as expected, {lost} not")
    for problem in result["errors"][:5]:
        print(f"  {problem}")
    print(f"latency: p50 {1000 * percentile(lat, 0.5):.1f} ms, p99 {1000 * percentile(lat, 0.99):.1f} ms; "
          f"{len(lat) / seconds:.1f} answers/s; engine batches {stats.get('batches')}, mean {stats.get('mean_batch')}")
    print(f"server RSS: {samples[0][1]:.0f} MB at start, {base:.0f} MB after warm-up, {end:.0f} MB at the end, "
          f"peak {peak:.0f} MB: growth after warm-up {100 * growth:+.1f}% (target < 10%)")
    print(f"server exit code {code}")
    ok = lost == 0 and growth < 0.10 and code == 0
    print("PASS" if ok else "FAIL")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
