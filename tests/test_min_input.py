"""Issue 19 item 7: the smallest-input probe (cnncli/models/min_input.py) caught every exception from its meta-device
run and answered "too small", so an operator without a meta kernel turned into a refusal of a valid --image-size.
Only a shape error means too small; any other failure is settled by a real run of the size asked for on CPU.

The operator here is a real one, registered with torch.library with a CPU kernel and no meta kernel, as a
third-party layer or a custom extension would be."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnncli.core.errors import UsageError
from cnncli.models.min_input import check_image_size, check_side, smallest_side

_LIBRARY = torch.library.Library("cnncli_min_input_test", "DEF")  # kept alive for the module's lifetime
_LIBRARY.define("twice(Tensor x) -> Tensor")
_LIBRARY.impl("twice", lambda x: x * 2, "CPU")


class CpuOnlyNet(nn.Module):
    """A small CNN whose first layer has a CPU kernel and no meta kernel; its 5x5 convolution needs 5 pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.ops.cnncli_min_input_test.twice(x)
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_a_missing_meta_kernel_does_not_refuse_a_valid_image_size():
    """The meta device cannot tell (None), so 32 px is tried on CPU, runs, and passes. Fails on the old probe,
    which read the NotImplementedError as "too small" at every size and refused 32 px as below 1024."""
    with pytest.raises(NotImplementedError):  # the premise: no meta kernel
        torch.ops.cnncli_min_input_test.twice(torch.empty(1, device="meta"))
    assert smallest_side(CpuOnlyNet) is None
    check_side(CpuOnlyNet, "cpu-only-net", 32, 3, smallest_side(CpuOnlyNet))
    check_side(CpuOnlyNet, "cpu-only-net", (5, 9), 3, None)


def test_a_real_shape_error_still_refuses_the_size():
    """On CPU too, only a shape error refuses: 3 px under a 5x5 convolution, in one sentence."""
    with pytest.raises(UsageError, match="--image-size 3 is too small for cpu-only-net: its layers shrink a 3x3"):
        check_side(CpuOnlyNet, "cpu-only-net", 3, 3, None)


def test_registry_architectures_are_still_probed_on_the_meta_device():
    """lenet5 (two 5x5 convolutions, two poolings) refuses 8 px naming its minimum and takes 32 px."""
    with pytest.raises(UsageError, match=r"--image-size 8 is too small for lenet5: .* below \d+ pixels"):
        check_image_size("lenet5", 8, 1)
    check_image_size("lenet5", 32, 1)
    check_image_size("not-an-architecture", 8)  # not the registry's: nothing to check against
