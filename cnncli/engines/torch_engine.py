"""The PyTorch engine: eval mode, inference_mode, channels_last; on CUDA also AMP (bf16 where supported),
pinned memory and non-blocking copies."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnncli.core.errors import UsageError
from cnncli.core.numeric import to_probabilities
from cnncli.models.card import ModelCard
from cnncli.models.spec import load_for_inference


def resolve_device(device: str = "auto") -> torch.device:
    from cnncli.core.devices import cuda_index, parse_device

    device = parse_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} was asked for, but PyTorch sees no CUDA GPU here; use --device cpu.")
        if cuda_index(device) >= torch.cuda.device_count():
            raise UsageError(f"--device {device} was asked for, but PyTorch sees {torch.cuda.device_count()} GPU(s) "
                             f"here (cuda:0 to cuda:{torch.cuda.device_count() - 1}).")
    return torch.device(device)


class TorchEngine:
    def __init__(self, model: nn.Module, card: ModelCard, device: str = "auto", amp: str = "auto",
                 channels_last: bool = True) -> None:
        self.device = resolve_device(device)
        self.card = card
        self.channels_last = channels_last
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda" and amp == "auto":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        self.amp_dtype = ({"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if self.device.type == "cuda"
                          else None)
        self.name = f"torch ({self.device.type}{', ' + amp if self.amp_dtype else ''})"

    @classmethod
    def from_spec(cls, spec: str | None, device: str = "auto", weights: str | None = None, **kwargs) -> TorchEngine:
        dev = resolve_device(device)
        model, card = load_for_inference(spec, weights=weights, device="cpu")
        return cls(model, card, device=str(dev), **kwargs)

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.amp_dtype is not None:
                with torch.autocast("cuda", dtype=self.amp_dtype):
                    logits = self.model(x)
            else:
                logits = self.model(x)
        return logits.float().cpu().numpy()

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        return to_probabilities(self.predict_logits(batch), self.card.task)
