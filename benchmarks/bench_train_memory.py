"""Training steps with glibc's default malloc against freed memory kept for reuse (cnncli.core.memory), in one run.

EfficientNet-Lite0 (timm, 2 classes), AdamW, batch 32 of random images, at each size; each mode in its own process
(mallopt is per process). Per row: training img/s over the steps after the first, system CPU seconds and minor page
faults per step, and img/s as a ratio to the default malloc at the same size.

    uv run python benchmarks/bench_train_memory.py [--sizes 176,224] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import machine_line, print_table

STEPS = r"""
import json, resource, sys, time
import torch, timm
if sys.argv[1] == "keep":
    from cnncli.core.memory import keep_freed_memory
    assert keep_freed_memory()
size, steps = int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = timm.create_model("efficientnet_lite0", num_classes=2).train()
opt = torch.optim.AdamW(model.parameters(), 1e-3)
x, y = torch.randn(32, 3, size, size), torch.randint(0, 2, (32,))
def step():
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
step()
usage, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"img_s": 32 * steps / wall, "sys": (after.ru_stime - usage.ru_stime) / steps,
                  "faults": (after.ru_minflt - usage.ru_minflt) / steps}))
"""


def measure(mode: str, size: int, steps: int) -> dict:
    done = subprocess.run([sys.executable, "-c", STEPS, mode, str(size), str(steps)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="176,224")
    parser.add_argument("--steps", type=int, default=6)
    opts = parser.parse_args()
    print(machine_line())
    rows = []
    for size in (int(s) for s in opts.sizes.split(",")):
        plain = measure("plain", size, opts.steps)
        kept = measure("keep", size, opts.steps)
        for name, r in (("glibc default", plain), ("freed memory kept", kept)):
            rows.append([f"{size} px", name, f"{r['img_s']:.1f}", f"{r['sys']:.2f}", f"{r['faults']:.0f}",
                         f"{r['img_s'] / plain['img_s']:.2f}x"])
    print_table(f"Lite0 training steps, batch 32, {opts.steps} steps after the first",
                ["size", "malloc", "train img/s", "sys s/step", "page faults/step", "x default"], rows)


if __name__ == "__main__":
    main()
