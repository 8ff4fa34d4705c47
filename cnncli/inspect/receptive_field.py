"""Receptive field of every spatial feature map, traced through a real forward pass.

Each tensor carries (size, jump, start): the receptive field size in input pixels, the jump (distance in input
pixels between neighbouring units, the product of strides), and the input coordinate of the centre of unit 0.
A convolution or pooling with kernel k, stride s, padding p and dilation d maps them as

    size' = size + (k - 1) * d * jump      jump' = jump * s      start' = start + ((k - 1) * d / 2 - p) * jump

for each axis separately (Inception's 1x7 and 7x1 kernels)
(Araujo et al., "Computing Receptive Fields of Convolutional Neural Networks", Distill 2019). Every other op
passes the field of its widest input through (ReLU, BatchNorm, residual additions, concatenations), so branches
(ResNet shortcuts, Inception) are followed per tensor, not per layer list. Adaptive pooling that changes the
map size, interpolation and anything that flattens end the spatial trace.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakTensorKeyDictionary


@dataclass(frozen=True)
class ReceptiveField:
    size: tuple[float, float]  # (height, width) in input pixels seen by one unit
    jump: tuple[float, float]  # input pixels between neighbouring units, vertically and horizontally
    start: tuple[float, float]  # input coordinates (y, x) of the centre of unit (0, 0); pixel centres are 0, 1, ...
    shape: tuple[int, ...] = ()  # the (C, H, W) of the map it describes
    grid: tuple[int, ...] = ()  # (H, W) of the spatial grid the numbers refer to

    def to_dict(self) -> dict:
        """Each of size, jump and start as one number when both axes agree, else [height, width]."""
        return {"size": _clean(self.size), "jump": _clean(self.jump), "start": _clean(self.start),
                "map_shape": list(self.shape)}


def _clean(pair: tuple[float, float]) -> float | int | list:
    values = [int(x) if float(x).is_integer() else round(float(x), 3) for x in pair]
    return values[0] if values[0] == values[1] else values


def _pair(v, default=None) -> tuple:
    if v is None:
        return default
    if isinstance(v, (list, tuple)):
        return tuple(v) if len(v) == 2 else (v[0], v[0])
    return (v, v)


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_MAXPOOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVGPOOL_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


def _bind(names: tuple[str, ...], args: tuple, kwargs: dict) -> dict:
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def spatial_params(func_name: str, args: tuple, kwargs: dict) -> tuple[tuple, tuple, tuple, tuple] | None:
    """(kernel, stride, padding, dilation), each (h, w), of a 2-D convolution or pooling call; else None."""
    if func_name == "conv2d":
        a = _bind(_CONV_ARGS, args, kwargs)
        kernel = tuple(a["weight"].shape[-2:])
        dilation = _pair(a.get("dilation"), (1, 1))
        padding = a.get("padding", 0)
        if padding == "valid":
            padding = 0
        elif padding == "same":
            padding = tuple((k - 1) * d // 2 for k, d in zip(kernel, dilation))
        return kernel, _pair(a.get("stride"), (1, 1)), _pair(padding, (0, 0)), dilation
    if func_name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d"):
        names = _AVGPOOL_ARGS if func_name == "avg_pool2d" else _MAXPOOL_ARGS
        a = _bind(names, args, kwargs)
        kernel = _pair(a["kernel_size"])
        stride = _pair(a.get("stride") or None, kernel)
        return kernel, stride, _pair(a.get("padding", 0), (0, 0)), _pair(a.get("dilation", 1), (1, 1))
    return None


RESAMPLING = ("adaptive_avg_pool2d", "adaptive_max_pool2d", "interpolate", "upsample", "upsample_bilinear",
              "upsample_nearest", "grid_sample")


class ReceptiveFieldTracer(TorchFunctionMode):
    """Inside ``with tracer:``, a forward pass of the tensor given to :meth:`watch` records every (N, C, H, W) map.

    Fields follow every tensor derived from the input, through permutes and reshapes too (ConvNeXt's
    channels-last LayerNorm), and a 4-D tensor is recorded as a map when its last two dimensions are the grid
    the field refers to.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fields = WeakTensorKeyDictionary()
        self.maps: list[ReceptiveField] = []  # every spatial map produced, in forward order

    def watch(self, x: torch.Tensor) -> torch.Tensor:
        self.fields[x] = ReceptiveField((1.0, 1.0), (1.0, 1.0), (0.0, 0.0), tuple(x.shape[1:]), tuple(x.shape[-2:]))
        return x

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        tensors = [a for a in _flat(args) + _flat(list(kwargs.values())) if isinstance(a, torch.Tensor)]
        known = [self.fields[t] for t in tensors if t in self.fields]
        if not known:
            return out
        for t in _flat([out]):
            if not isinstance(t, torch.Tensor):
                continue
            grid = tuple(t.shape[-2:]) if t.dim() == 4 else None
            # several inputs (residual sums, SE gating, concatenation): prefer those on the output's grid
            same_grid = [f for f in known if f.grid == grid]
            source = max(same_grid or known, key=lambda f: f.size[0] * f.size[1])
            field = self._through(name, args, kwargs, source, grid)
            if field is None:
                continue
            self.fields[t] = field
            if grid is not None and field.grid == grid:
                self.maps.append(ReceptiveField(field.size, field.jump, field.start, tuple(t.shape[1:]), grid))
        return out

    @staticmethod
    def _through(name: str, args: tuple, kwargs: dict, f: ReceptiveField, grid) -> ReceptiveField | None:
        params = spatial_params(name, args, kwargs)
        if params is not None:
            kernel, stride, padding, dilation = params
            size, jump, start = [], [], []
            for axis in (0, 1):
                k, s, p, d = kernel[axis], stride[axis], padding[axis], dilation[axis]
                size.append(f.size[axis] + (k - 1) * d * f.jump[axis])
                jump.append(f.jump[axis] * s)
                start.append(f.start[axis] + ((k - 1) * d / 2 - p) * f.jump[axis])
            return ReceptiveField(tuple(size), tuple(jump), tuple(start), grid=grid)
        if name == "pad":
            pad = _bind(("input", "pad"), args, kwargs)["pad"]
            left, top = pad[0], (pad[2] if len(pad) >= 4 else 0)
            return ReceptiveField(f.size, f.jump, (f.start[0] - top * f.jump[0], f.start[1] - left * f.jump[1]),
                                  grid=grid)
        if name in RESAMPLING and grid != f.grid:
            return None  # resampled to another grid: not a convolution's receptive field any more
        return f


def _flat(items) -> list:
    out = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(_flat(item))
        else:
            out.append(item)
    return out


def last_spatial_field(maps: list[ReceptiveField]) -> ReceptiveField | None:
    """The receptive field of the last feature map that still has more than one position."""
    spatial = [m for m in maps if len(m.shape) == 3 and m.shape[1] * m.shape[2] > 1]
    return spatial[-1] if spatial else None
