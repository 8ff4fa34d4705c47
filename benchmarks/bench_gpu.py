"""GPU figures, one run (needs an NVIDIA GPU; says so and exits 0 without one):

1. train img/s of the default model (efficientnet_lite0, 224 px, all layers trainable, channels_last) at batch 64
   and 128, AMP (bf16 where supported, else fp16) vs fp32: forward + backward + optimizer step on GPU-resident
   batches;
2. predict img/s at --predict-batch: the PyTorch engine on CUDA (AMP) vs onnxruntime's CUDA provider (fp32, needs
   cnncli[gpu]) vs onnxruntime on the CPU, same cached export;
3. one fine-tune epoch (`cnncli finetune --trainable all`, AMP) over a folder of JPEGs vs a plain loop over timm's
   own data pipeline (timm.data.create_dataset + create_loader, its ImageNet eval transforms) with the same
   model, batch, optimizer and AMP: the ratio shows what cnncli's loop costs.

    uv run python benchmarks/bench_gpu.py [--images 2048] [--predict-batch 64] [--steps 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import forward_img_s, machine_line, print_table, write_jpeg_folder


def train_throughput(model, batch: int, amp_dtype, steps: int) -> float:
    import torch

    device = torch.device("cuda")
    model = model.to(device).train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def timm_epoch(data: Path, batch: int, amp_dtype) -> float:
    """Seconds for one epoch of a plain loop over timm's own data pipeline (same model, batch, optimizer, AMP)."""
    import timm.data
    import torch

    from cnncli.models.registry import create_model

    model = (create_model("efficientnet_lite0", weights="default").model.cuda().train()
             .to(memory_format=torch.channels_last))
    dataset = timm.data.create_dataset("", root=str(data))
    loader = timm.data.create_loader(dataset, input_size=(3, 224, 224), batch_size=batch, is_training=True,
                                     no_aug=True, num_workers=4, use_prefetcher=True, device=torch.device("cuda"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    start = time.perf_counter()
    for x, y in loader:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=amp_dtype):
            loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y % 1000)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048, help="JPEGs for the fine-tune epoch")
    parser.add_argument("--predict-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per row")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here (torch.cuda.is_available() is False); nothing measured.")
        return 0
    from cnncli.models.registry import create_model

    amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    amp_name = "bf16" if amp == torch.bfloat16 else "fp16"
    gpu = torch.cuda.get_device_name(0)
    rows = []
    for batch in (64, 128):
        for label, dtype in ((f"AMP {amp_name}", amp), ("fp32", None)):
            model = create_model("efficientnet_lite0", weights="default").model
            rows.append([batch, label, f"{train_throughput(model, batch, dtype, args.steps):.0f}"])
    print_table(f"Train img/s, efficientnet_lite0 224 px, all layers, channels_last ({gpu}; {machine_line()})",
                ["batch", "precision", "img/s"], rows)

    import numpy as np

    from cnncli.engines.base import open_engine

    x = np.random.default_rng(0).standard_normal((args.predict_batch, 3, 224, 224)).astype(np.float32)
    rows = [["torch (cuda, AMP)", f"{forward_img_s(open_engine(None, device='cuda', engine='torch'), x):.0f}"]]
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        rows.append(["onnxruntime CUDA",
                     f"{forward_img_s(open_engine(None, device='cuda', engine='onnx'), x):.0f}"])
    else:
        rows.append(["onnxruntime CUDA", "n/a: install cnncli[gpu] (onnxruntime-gpu)"])
    rows.append(["onnxruntime CPU", f"{forward_img_s(open_engine(None, device='cpu', engine='onnx'), x):.0f}"])
    print_table(f"Predict img/s, batch {args.predict_batch}, pure forward", ["engine", "img/s"], rows)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        for c in range(4):
            write_jpeg_folder(data / f"class{c}", args.images // 4, size=(320, 240), seed=c)
        import subprocess

        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cnncli", "finetune", str(data), "--trainable", "all", "--epochs", "1",
                        "--batch-size", "64", "--device", "cuda", "--augment", "none", "--val-split", "0.01",
                        "--out", str(Path(tmp) / "run"), "--quiet"], check=True)
        ours = time.perf_counter() - start
        theirs = timm_epoch(data, 64, amp)
        print_table(f"One fine-tune epoch, {args.images} JPEGs 320x240, batch 64, AMP {amp_name}",
                    ["loop", "seconds"], [["cnncli finetune (whole command, incl. start and val)", f"{ours:.1f}"],
                                          ["plain loop over timm's data pipeline", f"{theirs:.1f}"],
                                          ["ratio", f"{ours / theirs:.2f}"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
