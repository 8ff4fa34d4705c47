"""Knowledge distillation (``--teacher MODEL``): the loss becomes ``(1 - w) * label loss + w * T^2 *
KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al., 2015), with ``w = --distill-weight`` and
``T = --distill-temperature``.

The teacher is a cnncli model file or a registry name with weights, frozen and in eval mode, with exactly the run's
classes (anything else is refused in one sentence). It sees each training batch as the student does, brought to
its own input size, channels and normalisation. With no augmentation and no mixing the same image gives the same
tensor every epoch, so its logits are kept (keyed by the tensor's bytes) and the teacher runs once per image.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cnncli.core.errors import UsageError
from cnncli.models.card import ModelCard, Preprocessing


def load_teacher(spec: str, classes: list[str], device: torch.device) -> tuple[nn.Module, ModelCard]:
    """The teacher model (frozen, eval mode, on ``device``) and its card; refuses one with other classes."""
    if str(spec).endswith(".safetensors"):
        from cnncli.models.checkpoint import load_model

        if not Path(spec).is_file():
            raise UsageError(f"--teacher {spec}: no such model file.")
        model, card = load_model(spec)
    else:
        from cnncli.models.registry import create_model

        built = create_model(spec, weights="default")
        model, card = built.model.eval(), built.card
    if list(card.classes) != list(classes):
        raise UsageError(f"--teacher {spec} predicts {card.num_classes} classes ({', '.join(card.classes[:3])}"
                         f"{', ...' if card.num_classes > 3 else ''}), not this dataset's {len(classes)} "
                         f"({', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''}); distil from a model "
                         "fine-tuned on these classes.")
    model.requires_grad_(False)
    return model.to(device).eval(), card


def to_teacher_input(x: torch.Tensor, student: Preprocessing, teacher: Preprocessing) -> torch.Tensor:
    """The student's normalised batch as the teacher's preprocessing would give it (size, channels, mean/std)."""
    s_mean = torch.tensor(student.mean, device=x.device).view(1, -1, 1, 1)[:, : x.shape[1]]
    s_std = torch.tensor(student.std, device=x.device).view(1, -1, 1, 1)[:, : x.shape[1]]
    pixels = x.float() * s_std + s_mean
    if pixels.shape[1] != teacher.channels:
        pixels = pixels.mean(1, keepdim=True) if teacher.channels == 1 else pixels.expand(-1, teacher.channels, -1, -1)
    if tuple(pixels.shape[-2:]) != tuple(teacher.input_size):
        pixels = F.interpolate(pixels, size=tuple(teacher.input_size), mode="bilinear", align_corners=False,
                               antialias=True)
    t_mean = torch.tensor(teacher.mean, device=x.device).view(1, -1, 1, 1)[:, : teacher.channels]
    t_std = torch.tensor(teacher.std, device=x.device).view(1, -1, 1, 1)[:, : teacher.channels]
    return (pixels - t_mean) / t_std


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher/T || student/T), averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


class DistillationLoss(nn.Module):
    """The label loss blended with the KL term; the student's input is taken by a forward pre-hook on
    ``student`` (the module a training step calls), so the epoch loop is unchanged."""

    def __init__(self, label_loss: nn.Module, student: nn.Module, teacher: nn.Module, student_pre: Preprocessing,
                 teacher_pre: Preprocessing, weight: float, temperature: float, keep_logits: bool) -> None:
        super().__init__()
        self.label_loss, self.weight, self.temperature = label_loss, weight, temperature
        self.teacher, self.student_pre, self.teacher_pre = teacher, student_pre, teacher_pre
        self.kept: dict[bytes, torch.Tensor] | None = {} if keep_logits else None
        self.teacher_images = 0  # images the teacher has run on (with kept logits: each once)
        self._inputs: torch.Tensor | None = None
        student.register_forward_pre_hook(self._remember)

    def _remember(self, module, args) -> None:
        if module.training:
            self._inputs = args[0]

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.kept is None:
            self.teacher_images += x.shape[0]
            return self.teacher(to_teacher_input(x, self.student_pre, self.teacher_pre)).float()
        keys = [hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest() for row in x.detach().float().cpu()]
        missing = [i for i, k in enumerate(keys) if k not in self.kept]
        if missing:
            fresh = self.teacher(to_teacher_input(x[missing], self.student_pre, self.teacher_pre)).float()
            self.teacher_images += len(missing)
            for i, logits in zip(missing, fresh):
                self.kept[keys[i]] = logits
        return torch.stack([self.kept[k] for k in keys])

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        base = self.label_loss(logits, target)
        if self._inputs is None or self.weight == 0:
            return base
        kl = distillation_kl(logits, self.teacher_logits(self._inputs), self.temperature)
        self._inputs = None
        return (1 - self.weight) * base + self.weight * kl
