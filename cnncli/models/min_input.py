"""The smallest input an architecture can take: found by running it on PyTorch's ``meta`` device (shapes only,
no weights, no arithmetic), so it costs a model construction and nothing else."""

from __future__ import annotations

from functools import lru_cache

PROBE_MAX = 1024


def _runs_at(model, size: int, channels: int) -> bool:
    import torch

    try:
        with torch.no_grad():
            model(torch.empty(1, channels, size, size, device="meta"))
        return True
    except Exception:  # a size the layers cannot take (an empty feature map, a pooling larger than its input)
        return False


@lru_cache(maxsize=32)
def min_image_size(arch: str, channels: int = 3) -> int:
    """The smallest square input ``arch`` runs on (1 if every size runs; PROBE_MAX if none up to it does)."""
    import torch

    from cnncli.models.registry import build_architecture

    with torch.device("meta"):
        model = build_architecture(arch, num_classes=2, in_chans=channels)
    model.eval()
    if _runs_at(model, 1, channels):
        return 1
    low, high = 1, PROBE_MAX  # low fails; find the smallest size that runs, assuming larger sizes keep running
    if not _runs_at(model, high, channels):
        return PROBE_MAX
    while high - low > 1:
        mid = (low + high) // 2
        if _runs_at(model, mid, channels):
            high = mid
        else:
            low = mid
    return high


def check_image_size(arch: str | None, size: int | tuple[int, int] | None, channels: int = 3) -> None:
    """Refuse (UsageError, one sentence) an --image-size below what ``arch`` can take: its layers would shrink the
    image to nothing. Architectures the registry does not know are not checked."""
    from cnncli.core.errors import UsageError

    if arch is None or size is None:
        return
    side = min(size) if isinstance(size, tuple) else size
    try:
        smallest = min_image_size(arch, channels)
    except UsageError:  # not a registry architecture: nothing to check against
        return
    if side < smallest:
        raise UsageError(f"--image-size {side} is too small for {arch}: its layers shrink the image to nothing "
                         f"below {smallest} pixels; use --image-size {smallest} or more.")
