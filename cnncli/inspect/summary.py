"""The model summary: one row per layer (type, kernel/stride/padding/dilation, output shape, parameters,
trainable or frozen, MACs) and the totals (parameters, MACs, FLOPs, weight size, receptive field).

MACs come from PyTorch's maintained counter, :class:`torch.utils.flop_counter.FlopCounterMode`, with its
per-module breakdown (MACs = FLOPs / 2). It counts matrix multiplications and convolutions (mm, addmm, bmm,
baddbmm, convolution, scaled-dot-product attention); element-wise layers are NOT counted: BatchNorm,
activations, pooling, residual additions, softmax, dropout. For CNNs those are a fraction of a percent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnncli.inspect.receptive_field import (
    ReceptiveField,
    ReceptiveFieldTracer,
    last_spatial_field,
)
from cnncli.models.card import ModelCard

NOT_COUNTED = ("BatchNorm/LayerNorm/GroupNorm", "activations", "pooling", "residual additions", "softmax", "dropout")
SPATIAL_ATTRS = ("kernel_size", "stride", "padding", "dilation")


@dataclass
class LayerInfo:
    name: str
    type: str
    depth: int
    output_shape: list[int] | None  # (C, H, W) or (features,), batch dimension dropped
    params: int
    trainable_params: int
    macs: int
    kernel_size: list[int] | None = None
    stride: list[int] | None = None
    padding: list[int] | str | None = None
    dilation: list[int] | None = None

    @property
    def trainable(self) -> str:
        if self.params == 0:
            return "-"
        if self.trainable_params == self.params:
            return "trainable"
        return "frozen" if self.trainable_params == 0 else "partly frozen"

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("name", "type", "depth", "output_shape", "params", "trainable_params",
                                            "macs", "kernel_size", "stride", "padding", "dilation")}
        d["trainable"] = self.trainable
        return d


@dataclass
class ModelSummary:
    model_name: str
    input_shape: list[int]  # (C, H, W)
    layers: list[LayerInfo]
    total_params: int
    trainable_params: int
    macs: int
    weight_bytes: int
    receptive_field: ReceptiveField | None
    output_shape: list[int] | None
    metadata: dict[str, Any] = field(default_factory=dict)
    not_counted: tuple[str, ...] = NOT_COUNTED

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def weight_mb(self) -> float:
        return self.weight_bytes / 1e6

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "input_shape": self.input_shape,
            "output_shape": self.output_shape,
            "layers": [layer.to_dict() for layer in self.layers],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "frozen_params": self.frozen_params,
            "macs": self.macs,
            "flops": self.flops,
            "macs_not_counted": list(self.not_counted),
            "weight_mb": round(self.weight_mb, 3),
            "receptive_field": self.receptive_field.to_dict() if self.receptive_field else None,
            "metadata": self.metadata,
        }


def _as_list(v) -> list[int] | str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, (tuple, list)):
        return [int(x) for x in v]
    return [int(v), int(v)]


def _first_tensor(out) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((t for t in (_first_tensor(o) for o in out) if t is not None), None)
    if isinstance(out, dict):
        return next((t for t in (_first_tensor(o) for o in out.values()) if t is not None), None)
    return None


@dataclass
class ForwardTrace:
    """What one forward pass showed: output shapes by module name, spatial maps in order, MACs by module."""

    output_shapes: dict[str, list[int]]
    spatial_order: list[str]  # modules whose output is a (C, H>1 or W>1) map, in the order they finished
    macs_by_module: dict[str, int]
    total_macs: int
    fields: list[ReceptiveField]
    output_shape: list[int] | None


def trace_forward(model: nn.Module, input_size: tuple[int, int], in_chans: int) -> ForwardTrace:
    """Run one forward pass of a (1, in_chans, H, W) input with hooks, the FLOP counter and the RF tracer."""
    shapes: dict[str, list[int]] = {}
    spatial: list[str] = []
    handles = []

    def hook_for(name: str):
        def hook(_module, _inputs, out):
            t = _first_tensor(out)
            if t is not None:
                shapes.setdefault(name, list(t.shape[1:]))
                if t.dim() == 4 and t.shape[-1] * t.shape[-2] > 1:
                    spatial.append(name)

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, in_chans, *input_size, device=device, dtype=dtype)
    counter = FlopCounterMode(display=False, depth=None)
    tracer = ReceptiveFieldTracer()
    try:
        with torch.no_grad(), counter, tracer:
            tracer.watch(x)
            out = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    root = type(model).__name__
    macs = {}
    for key, ops in counter.get_flop_counts().items():
        if key.startswith(root + "."):
            macs[key[len(root) + 1 :]] = int(sum(ops.values())) // 2
    out_t = _first_tensor(out)
    return ForwardTrace(shapes, spatial, macs, int(counter.get_total_flops()) // 2, tracer.maps,
                        list(out_t.shape[1:]) if out_t is not None else None)


def summarize_model(
    model: nn.Module,
    input_size: int | tuple[int, int] = 224,
    in_chans: int = 3,
    depth: int = 3,
    card: ModelCard | None = None,
    name: str | None = None,
) -> ModelSummary:
    """Summarise ``model`` for one (in_chans, H, W) input; layers down to ``depth`` levels of nesting.

    Trainable or frozen is read from each parameter's ``requires_grad``.
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    trace = trace_forward(model, tuple(input_size), in_chans)
    layers = []
    for mod_name, module in model.named_modules():
        level = mod_name.count(".") + 1
        if not mod_name or level > depth:
            continue
        params = list(module.parameters())
        info = LayerInfo(
            name=mod_name,
            type=type(module).__name__,
            depth=level,
            output_shape=trace.output_shapes.get(mod_name),
            params=sum(p.numel() for p in params),
            trainable_params=sum(p.numel() for p in params if p.requires_grad),
            macs=trace.macs_by_module.get(mod_name, 0),
        )
        if isinstance(module, (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
            for attr in SPATIAL_ATTRS:
                setattr(info, attr, _as_list(getattr(module, attr, None)))
            if info.stride is None and info.kernel_size is not None:
                info.stride = info.kernel_size
        layers.append(info)
    all_params = list(model.parameters())
    buffers = list(model.buffers())
    return ModelSummary(
        model_name=name or (card.arch if card else type(model).__name__),
        input_shape=[in_chans, *input_size],
        layers=layers,
        total_params=sum(p.numel() for p in all_params),
        trainable_params=sum(p.numel() for p in all_params if p.requires_grad),
        macs=trace.total_macs,
        weight_bytes=sum(t.numel() * t.element_size() for t in all_params + buffers),
        receptive_field=last_spatial_field(trace.fields),
        output_shape=trace.output_shape,
        metadata=card_metadata(card) if card else {},
    )


def card_metadata(card: ModelCard) -> dict[str, Any]:
    d = card.shown_dict()
    keys = ("arch", "source", "weights", "num_classes", "classes", "preprocessing", "training", "extra",
            "cnncli_version") + (("task", "thresholds") if card.multilabel else ())  # single-label: as it was
    return {k: d[k] for k in keys}


def apply_trainable_record(model: nn.Module, card: ModelCard) -> dict | None:
    """Set ``requires_grad`` from the trainable policy the trainer recorded in the card, if any.

    ``cnncli train``/``finetune`` write ``extra["trainable"]`` (the policy: ``head``, ``last:N`` or ``all``)
    and ``extra["trainable_params"]``; the policy is resolved by the trainer's own code
    (:func:`cnncli.train.policy.trainable_names`), so inspect and training cannot disagree. Returns
    ``{"policy", "trainable_params"}`` or None.
    """
    extra = card.extra or {}
    policy = extra.get("trainable")
    if not isinstance(policy, str) or not policy:
        return None
    from cnncli.train.policy import apply_trainable, trainable_names

    apply_trainable(model, trainable_names(model, policy))
    return {"policy": policy, "trainable_params": extra.get("trainable_params")}
