"""LeNet-5 and a small VGG-style CNN: small, readable models for training from scratch.

Each declares ``stage_names`` (backbone stages in order) and ``head_name`` so freezing policies and the
inspector treat them like any torchvision or timm model.
"""

from __future__ import annotations

from torch import nn


class LeNet5(nn.Module):
    """LeNet-5: conv 5x5 x6 -> pool -> conv 5x5 x16 -> pool -> FC120 -> FC84 -> classes.

    ReLU and max pooling replace the original tanh and subsampling. On 32x32 input the second pooling leaves
    16 maps of 5x5, exactly as in LeCun et al. (1998); other input sizes are pooled to 5x5 so the FC layers fit.
    """

    stage_names = ("conv1", "conv2", "fc1", "fc2")
    head_name = "fc3"

    def __init__(self, num_classes: int = 10, in_chans: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_chans, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d((5, 5))
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True))
        self.fc2 = nn.Sequential(nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        return self.fc3(self.fc2(self.fc1(self.pool(self.conv2(self.conv1(x))))))


def _conv_stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SimpleCNN(nn.Module):
    """Three conv-BN-ReLU x2 + max-pool stages (32, 64, 128 filters), global average pooling, dropout, FC."""

    stage_names = ("stage1", "stage2", "stage3")
    head_name = "fc"

    def __init__(self, num_classes: int = 10, in_chans: int = 3, dropout: float = 0.2, width: int = 32) -> None:
        super().__init__()
        self.stage1 = _conv_stage(in_chans, width)
        self.stage2 = _conv_stage(width, width * 2)
        self.stage3 = _conv_stage(width * 2, width * 4)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.stage3(self.stage2(self.stage1(x)))))
