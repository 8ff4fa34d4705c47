"""Where the one-image cached-ONNX `cnncli predict` spends its cold start (warm cache, bytecode cached):

1. wall and CPU time (user+sys) of the whole command, median of --runs;
2. the same command under `python -X importtime`: import time by top-level package (self times summed);
3. one in-process run split into phases by CPU time: importing the CLI, parsing the arguments (typer, which
   builds pydantic adapters), opening the engine (onnxruntime import and InferenceSession), decoding the image,
   the forward pass, and the rest (output, exit).

    uv run python benchmarks/cold_start.py [--runs 5] [--against OTHER_CHECKOUT/.venv/bin/python]

``--against`` times another installation's ``cnncli predict`` (an older checkout's venv, say) interleaved with this
one, run for run, each with its own warm cache, and prints the ratio: a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import print_table, write_jpeg_folder

PHASES = r'''
import sys, time
marks = {"start": time.process_time()}
import cnncli.cli.app as app
marks["cli imported"] = time.process_time()
import typer.core
import cnncli.engines.base, cnncli.data.images, cnncli.predict.run
parse = typer.core.TyperCommand.invoke if hasattr(typer.core, "TyperCommand") else None
original_open, original_load, original_top = (cnncli.engines.base.open_engines, cnncli.data.images.load_pixels,
                                              cnncli.predict.run.top_k)
def open_engines(*a, **k):
    marks.setdefault("arguments parsed", time.process_time())
    engine = original_open(*a, **k)
    marks["engine open"] = time.process_time()
    return engine
def load_pixels(*a, **k):
    out = original_load(*a, **k)
    marks["image decoded"] = time.process_time()
    return out
def top_k(*a, **k):
    marks.setdefault("forward done", time.process_time())
    return original_top(*a, **k)
(cnncli.engines.base.open_engines, cnncli.data.images.load_pixels,
 cnncli.predict.run.top_k) = open_engines, load_pixels, top_k
import cnncli.predict.decode
cnncli.predict.decode.load_pixels = load_pixels
try:
    app.main(["predict", sys.argv[1]])
except SystemExit:
    pass
marks["output written"] = time.process_time()
names = list(marks)
for a, b in zip(names, names[1:]):
    print(f"PHASE {b}\t{(marks[b] - marks[a]) * 1000:.0f}", file=sys.stderr)
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--against", metavar="PYTHON", help="another installation's python to time the same way")
    args = parser.parse_args()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault("CNNCLI_CACHE", tempfile.mkdtemp(prefix="cnncli-cold-"))
    with tempfile.TemporaryDirectory() as tmp:
        one = str(write_jpeg_folder(Path(tmp), 1)[0])
        pythons = [("this checkout", sys.executable)] + ([("--against", args.against)] if args.against else [])
        env_of = {name: {**os.environ, "CNNCLI_CACHE": tempfile.mkdtemp(prefix="cnncli-cold-")} if i else None
                  for i, (name, _) in enumerate(pythons)}
        for name, python in pythons:  # the cache and bytecode, once each
            subprocess.run([python, "-m", "cnncli", "predict", one], capture_output=True, check=True, env=env_of[name])
        walls: dict[str, list[float]] = defaultdict(list)
        cpus: dict[str, list[float]] = defaultdict(list)
        for _ in range(args.runs):
            for name, python in pythons:  # interleaved, so a change of load hits both alike
                before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                subprocess.run([python, "-m", "cnncli", "predict", one], capture_output=True, check=True,
                               env=env_of[name])
                walls[name].append(time.perf_counter() - start)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpus[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        for name, python in pythons:
            print(f"cnncli predict one.jpg (cached onnx), {name} ({python}): "
                  f"wall {statistics.median(walls[name]):.3f} s, CPU {statistics.median(cpus[name]):.3f} s "
                  f"(median of {args.runs}; load {os.getloadavg()[0]:.1f})")
        if args.against:
            wall_ratio = statistics.median(walls["this checkout"]) / statistics.median(walls["--against"])
            cpu_ratio = statistics.median(cpus["this checkout"]) / statistics.median(cpus["--against"])
            print(f"this checkout / --against: wall {wall_ratio:.3f}x, CPU {cpu_ratio:.3f}x")

        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "cnncli", "predict", one], capture_output=True,
                              text=True, check=True)
        by_package: dict[str, int] = defaultdict(int)
        for line in done.stderr.splitlines():
            if line.startswith("import time:") and "|" in line and "self [us]" not in line:
                self_us, _, name = (part.strip() for part in line[len("import time:"):].split("|"))
                by_package[name.split(".")[0]] += int(self_us)
        top = sorted(by_package.items(), key=lambda kv: -kv[1])[:12]
        print_table("Import time by top-level package (self times summed, -X importtime)", ["package", "ms"],
                    [[name, f"{us / 1000:.1f}"] for name, us in top]
                    + [["(all)", f"{sum(by_package.values()) / 1000:.1f}"]])

        phases = subprocess.run([sys.executable, "-c", PHASES, one], capture_output=True, text=True, check=True)
        rows = [line.split("\t") for line in phases.stderr.splitlines() if line.startswith("PHASE ")]
        print_table("Phases of one in-process run, CPU ms", ["phase (ends when)", "CPU ms"],
                    [[name[len("PHASE "):], ms] for name, ms in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
