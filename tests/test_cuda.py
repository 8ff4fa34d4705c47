"""CUDA paths checked against the CPU (issue 15 item 5), marked ``cuda``: ``uv run pytest -m cuda``.

Without an NVIDIA GPU every CUDA test here is skipped with the reason (the CPU side of the training-step check
still runs); on a GPU machine each one fails when CUDA disagrees with the CPU beyond the tolerance it states:

- cnncli's training with AMP (bf16 where supported, else fp16 with loss scaling) and channels_last: one
  optimizer step of `train --device cuda` from the same weights on the same batch moves the weights like fp32
  on the CPU (relative difference of the update <= 5%; the CPU side is checked everywhere), and a short
  `cnncli train --device cuda` reaches the CPU run's validation accuracy within 0.15;
- the PyTorch engine on CUDA (AMP) gives the CPU's top-1 on the real test photos and probabilities within 0.02;
- onnxruntime's CUDA provider (`predict --device cuda`, fp32) gives the CPU provider's probabilities within 1e-3;
- torchrun with nccl on 2 GPUs trains, logs once and evaluates the whole val split (skipped with fewer GPUs).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from cnncli.engines.base import gpu_present

pytestmark = pytest.mark.cuda

UPDATE_TOLERANCE = 0.05  # |update_cuda - update_cpu| / |update_cpu| for one AMP step
TRAIN_ACC_TOLERANCE = 0.15  # val accuracy after the same short training run
TORCH_PROB_TOLERANCE = 0.02  # AMP (bf16/fp16) inference vs fp32 CPU
ORT_PROB_TOLERANCE = 1e-3  # fp32 CUDA kernels (cuDNN, TF32 off) vs fp32 CPU


def cuda_devices() -> int:
    if not gpu_present():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def need_gpus(n: int = 1):
    have = cuda_devices()
    reason = ("no NVIDIA GPU on this machine (no /proc/driver/nvidia/version or torch.cuda unavailable)" if have == 0
              else f"needs {n} CUDA GPUs, this machine has {have}")
    return pytest.mark.skipif(have < n, reason=reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_training_step(data, out, device: str, amp: str) -> tuple[dict, object]:
    """One epoch of cnncli's own training that is one optimiser step (every training image in one batch) of
    simplecnn (BatchNorm, convolutions in channels_last; no dropout, whose masks differ by device) from seed 0's
    weights: the update of every parameter, on the CPU, and the prepared run (its device, autocast dtype and
    loss scaling)."""
    from cnncli.train.config import TrainConfig
    from cnncli.train.run import TrainingRun

    cfg = TrainConfig(data=str(data), arch="simplecnn", dropout=0.0, image_size=32, augment="none", epochs=1,
                      batch_size=64, optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant",
                      device=device, amp=amp, channels_last=True, out=str(out), quiet=True, workers=0, seed=0)
    run = TrainingRun.prepare(cfg)
    weights = []
    run.fit(on_epoch_end=lambda _epoch, model: weights.append(
        {name: p.detach().float().cpu().clone() for name, p in model.named_parameters()}))
    before, after = weights
    assert len(run.train_loader) == 1
    return {name: after[name] - before[name] for name in before}, run


def update_difference(update: dict, reference: dict) -> float:
    """|update - reference| / |reference| over all parameters together."""
    import torch

    a = torch.cat([update[n].flatten() for n in reference])
    b = torch.cat([reference[n].flatten() for n in reference])
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def textures(tmp_path_factory):
    from train_data import write_textures

    return write_textures(tmp_path_factory.mktemp("textures"), per_class=6)


def test_one_training_step_on_the_cpu_is_full_precision_and_repeatable(textures, tmp_path):
    """Runs everywhere: the comparison below on the CPU alone. --amp is for CUDA (the CPU run is fp32 with no
    loss scaling, whatever --amp says) and two CPU runs make the same update, so the CUDA test's reference is
    well defined."""
    first, run = one_training_step(textures, tmp_path / "a", "cpu", "fp16")
    again, _ = one_training_step(textures, tmp_path / "b", "cpu", "auto")
    assert run.on.device.type == "cpu" and run.on.amp_dtype is None and not run.scaler.is_enabled()
    assert update_difference(again, first) == 0.0
    assert len(first) > 10 and all(float(u.abs().max()) > 0 for u in first.values()), "a parameter did not move"


@need_gpus(1)
@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_one_amp_channels_last_training_step_on_cuda_moves_the_weights_like_fp32_on_cpu(textures, tmp_path, amp):
    """`cnncli train --device cuda --amp auto|fp16` (bf16 where supported; fp16 with loss scaling): the same
    step from the same weights on the same batch moves the weights as fp32 on the CPU does, within
    UPDATE_TOLERANCE of the update's size."""
    import torch

    reference, _ = one_training_step(textures, tmp_path / "cpu", "cpu", "off")
    update, run = one_training_step(textures, tmp_path / amp, "cuda", amp)
    expected = torch.bfloat16 if amp == "auto" and torch.cuda.is_bf16_supported() else torch.float16
    assert run.on.device.type == "cuda" and run.on.channels_last and run.on.amp_dtype == expected
    assert run.scaler.is_enabled() == (expected == torch.float16)
    assert next(run.model.parameters()).is_cuda
    difference = update_difference(update, reference)
    assert difference <= UPDATE_TOLERANCE, f"the CUDA update differs from the CPU's by {difference:.3f} of its size"


@need_gpus(1)
def test_train_on_cuda_matches_cpu_accuracy(tmp_path):
    from train_data import write_digits

    from cnncli.train.config import TrainConfig
    from cnncli.train.loop import run_training

    data = write_digits(tmp_path / "digits", per_class=30)
    acc = {}
    for device in ("cpu", "cuda"):
        result = run_training(TrainConfig(data=str(data), arch="lenet5", grayscale=True, augment="none", epochs=6,
                                          batch_size=32, device=device, out=str(tmp_path / device), quiet=True,
                                          workers=0, seed=0))
        acc[device] = result.best_val_acc
    assert abs(acc["cuda"] - acc["cpu"]) <= TRAIN_ACC_TOLERANCE, acc
    assert acc["cuda"] > 0.5, acc


@need_gpus(1)
def test_torch_engine_on_cuda_matches_cpu(run_cli, photos, imagenet_samples):
    images = [*map(str, photos.values()), *(str(p) for p, _ in imagenet_samples)]
    out = {}
    for device in ("cpu", "cuda"):
        result = run_cli("predict", *images, "--engine", "torch", "--device", device, "-f", "json", "-k", "5")
        assert result.code == 0, result.err
        out[device] = json.loads(result.out)
    for cpu, cuda in zip(out["cpu"], out["cuda"]):
        assert cpu["top"][0]["index"] == cuda["top"][0]["index"] or cpu["top"][0]["prob"] - cpu["top"][1]["prob"] < 0.05
        assert abs(cpu["top"][0]["prob"] - next(t["prob"] for t in cuda["top"] if t["index"] == cpu["top"][0]["index"])
                   ) <= TORCH_PROB_TOLERANCE


@need_gpus(1)
def test_onnxruntime_cuda_provider_matches_cpu(photos, imagenet_samples):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider: install cnncli[gpu] (onnxruntime-gpu) to check it")
    from cnncli.engines.base import open_engine
    from cnncli.export.to_onnx import load_images

    cpu = open_engine(None, device="cpu", engine="onnx")
    cuda = open_engine(None, device="cuda", engine="onnx")
    assert cuda.provider == "CUDAExecutionProvider"
    x = load_images([*photos.values(), *(p for p, _ in imagenet_samples)], cpu.card)
    a, b = cpu.predict_proba(x), cuda.predict_proba(x)
    assert np.abs(a - b).max() <= ORT_PROB_TOLERANCE
    assert (a.argmax(1) == b.argmax(1)).all()


@need_gpus(2)
def test_torchrun_two_gpus_nccl(tmp_path):
    from train_data import write_digits

    data = write_digits(tmp_path / "digits", per_class=10)
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", CNNCLI_DEBUG="1", NCCL_DEBUG="WARN")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "cnncli", "train", str(data), "--arch", "lenet5", "--grayscale",
         "--augment", "none", "--epochs", "2", "--batch-size", "8", "--out", str(out), "--workers", "0",
         "--device", "cuda"],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("epoch 2/2") == 1  # only rank 0 logs
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation"]["n_images"] == 20  # the whole val split, not one rank's half
