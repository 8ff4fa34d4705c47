"""The smallest input an architecture can take: found by running it on PyTorch's ``meta`` device (shapes only,
no weights, no arithmetic), so it costs a model construction and nothing else.

Only a shape error on the meta device means "too small". A failure of another kind (an operator with no meta
kernel, a layer that reads a value out of its input) says nothing about the size: the size asked for is then tried
once for real, on a CPU copy of the model, and refused only if that fails with a shape error too.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

PROBE_MAX = 1024
SHAPE_ERRORS = (RuntimeError, ValueError, IndexError, AssertionError)  # what layers raise for an input too small


def _attempt(model, height: int, width: int, channels: int, device: str) -> bool | None:
    """True: ``model`` runs on a (1, channels, height, width) input; False: it refused the input's shape; None:
    it failed for another reason, which says nothing about the size."""
    import torch

    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, height, width, device=device))
        return True
    except NotImplementedError:  # an operator with no kernel for this device (no meta kernel, say)
        return None
    except SHAPE_ERRORS as exc:  # an empty feature map, a kernel or pooling larger than its input
        return None if device == "meta" and "meta" in str(exc).lower() else False
    except Exception:  # noqa: BLE001 - any other failure is not about the size: the caller decides without it
        return None


def smallest_side(build: Callable[[], object], channels: int = 3) -> int | None:
    """The smallest square input the model that ``build()`` makes runs on, probed on the meta device (1 if every
    size runs; PROBE_MAX if none up to it does); None when the meta device cannot tell (see the module
    docstring)."""
    import torch

    with torch.device("meta"):
        model = build()
    model.eval()

    def runs(size: int) -> bool | None:
        return _attempt(model, size, size, channels, "meta")

    first = runs(1)
    if first is not False:
        return None if first is None else 1
    top = runs(PROBE_MAX)
    if top is not True:
        return None if top is None else PROBE_MAX
    low, high = 1, PROBE_MAX  # low fails, high runs; find the smallest size that runs, assuming larger sizes run
    while high - low > 1:
        mid = (low + high) // 2
        outcome = runs(mid)
        if outcome is None:
            return None
        if outcome:
            high = mid
        else:
            low = mid
    return high


@lru_cache(maxsize=32)
def min_image_size(arch: str, channels: int = 3) -> int | None:
    """The smallest square input ``arch`` runs on (:func:`smallest_side`; None when the meta device cannot tell)."""
    from cnncli.models.registry import build_architecture

    return smallest_side(lambda: build_architecture(arch, num_classes=2, in_chans=channels), channels)


def check_side(build: Callable[[], object], name: str, size: int | tuple[int, int], channels: int,
               smallest: int | None) -> None:
    """Refuse (UsageError, one sentence) a ``size`` below what the model ``build()`` makes can take. ``smallest``
    is its :func:`smallest_side`; where the meta device could not tell (None), ``size`` itself is tried on a CPU
    copy of the model, and only a shape error there refuses it."""
    from cnncli.core.errors import UsageError

    height, width = size if isinstance(size, tuple) else (size, size)
    side = min(height, width)
    if smallest is not None:
        if side < smallest:
            raise UsageError(f"--image-size {side} is too small for {name}: its layers shrink the image to nothing "
                             f"below {smallest} pixels; use --image-size {smallest} or more.")
        return
    model = build()
    model.eval()
    if _attempt(model, height, width, channels, "cpu") is False:
        raise UsageError(f"--image-size {side} is too small for {name}: its layers shrink a {height}x{width} image to "
                         "nothing; use a larger --image-size.")


def check_image_size(arch: str | None, size: int | tuple[int, int] | None, channels: int = 3) -> None:
    """Refuse (UsageError, one sentence) an --image-size below what ``arch`` can take: its layers would shrink the
    image to nothing. Architectures the registry does not know are not checked."""
    from cnncli.core.errors import UsageError
    from cnncli.models.registry import build_architecture

    if arch is None or size is None:
        return
    try:
        smallest = min_image_size(arch, channels)
    except UsageError:  # not a registry architecture: nothing to check against
        return
    check_side(lambda: build_architecture(arch, num_classes=2, in_chans=channels), arch, size, channels, smallest)
