"""What a predict worker process costs before and during its first batches, in CPU seconds (user+sys, counted by
the worker itself with ``os.times``: far less sensitive to other load than wall time), for issue 24's question:
why do replicas cost more CPU per image than decoder processes feeding one engine?

Each row is a fresh ``python`` process doing what a replica worker does: start the interpreter, re-import the
parent's main module as spawn does for the ``cnncli`` console script (``cnncli.cli.app``), import the replica code
and onnxruntime, open a single-threaded session, then decode and run two batches; a decoder worker's row stops
after importing the decoder code and decoding. Each is run with ``PYTHONDONTWRITEBYTECODE=1`` and no ``.pyc``
anywhere (how this environment runs: every worker compiles every module it imports) and with bytecode cached
(``PYTHONPYCACHEPREFIX``, warmed once). Median of --runs.

    uv run python benchmarks/bench_worker_start.py [--runs 3] [--batch-size 32] [--model M.onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine_line, print_table, write_jpeg_folder

CHILD = r"""
import os, sys, json
def cpu():
    t = os.times(); return t.user + t.system
marks = {"interpreter": cpu()}
import cnncli.cli.app  # spawn re-imports the console script's main module, which imports this
marks["main module"] = cpu()
role, model, batch, paths = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
if role == "replica":
    from cnncli.predict.replicas import open_recipe, _score
    import onnxruntime
    marks["imports"] = cpu()
    engine = open_recipe(("onnx", model, "fp32"), 1)
    marks["session"] = cpu()
    _score(paths[:batch], {}, engine=engine)
    marks["batch 1"] = cpu()
    _score(paths[batch:2 * batch], {}, engine=engine)
    marks["batch 2"] = cpu()
else:
    from cnncli.predict.decode import decode_pixels
    from cnncli.engines.onnx_engine import read_onnx_card
    marks["imports"] = cpu()
    pre = read_onnx_card(model).preprocessing
    marks["session"] = cpu()
    decode_pixels(paths[:batch], pre)
    marks["batch 1"] = cpu()
    decode_pixels(paths[batch:2 * batch], pre)
    marks["batch 2"] = cpu()
print(json.dumps(marks))
"""


def run_child(role: str, model: str, batch: int, paths: list[str], env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, role, model, str(batch), *paths], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default=None, help="an exported .onnx (default: the default model's cached export)")
    args = parser.parse_args()
    model = args.model
    if model is None:
        from cnncli.engines.base import open_engine

        model = str(open_engine(None, device="cpu", engine="onnx").path)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(p) for p in write_jpeg_folder(Path(tmp) / "jpegs", 2 * args.batch_size)]
        modes = {"no .pyc (PYTHONDONTWRITEBYTECODE=1)": dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
                                                             PYTHONPYCACHEPREFIX=str(Path(tmp) / "none")),
                 "bytecode cached": {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
                 | {"PYTHONPYCACHEPREFIX": str(Path(tmp) / "pyc")}}
        for role in ("replica", "decoder"):  # warm the bytecode cache (and the page cache) once
            run_child(role, model, args.batch_size, paths, modes["bytecode cached"])
        rows = []
        for mode, env in modes.items():
            for role in ("replica", "decoder"):
                runs = [run_child(role, model, args.batch_size, paths, env) for _ in range(args.runs)]
                steps = list(runs[0])
                med = {s: statistics.median(r[s] for r in runs) for s in steps}
                deltas = [med[steps[0]]] + [med[b] - med[a] for a, b in zip(steps, steps[1:])]
                steady_ms = (med["batch 2"] - med["batch 1"]) / args.batch_size * 1e3
                rows.append([mode, role, *(f"{d:.3f}" for d in deltas), f"{med['session']:.3f}", f"{steady_ms:.2f}"])
    print_table(f"Worker CPU seconds per step, median of {args.runs} ({machine_line()}, load "
                f"{os.getloadavg()[0]:.1f}); batch {args.batch_size}, {Path(model).name}",
                ["bytecode", "worker", "interpreter", "main module", "imports", "session / card", "batch 1",
                 "batch 2", "start-up total", "steady CPU ms/img"], rows)


if __name__ == "__main__":
    sys.exit(main())
