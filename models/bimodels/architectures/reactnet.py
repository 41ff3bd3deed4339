"""ReActNet-A: a MobileNet-V1 layout built from binary-friendly residual blocks (224x224).

Every MobileNet-V1 depthwise/pointwise pair becomes a normal 3x3 convolution and a 1x1
convolution, each with its own shortcut, so real-valued information flows around every
binary convolution. Where the width doubles, two 1x1 convolutions (cin -> cin) each add the
input and are concatenated, which keeps an identity shortcut without a full-precision
projection.

Binarization contract: the stem convolution and the classifier stay full precision; every
3x3 and 1x1 convolution inside the blocks is binarized. The activation is nn.PReLU (a
simplified RPReLU, without ReActNet's learnable shifts): it can be negative, so nothing
needs swapping for sign(0) = +1.

Liu et al., "ReActNet: Towards Precise Binary Neural Network with Generalized Activation
Functions", ECCV 2020.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .registry import register_model

# (cin, cout, stride) per block: MobileNet-V1's channel plan.
REACTNET_A_PLAN: list[tuple[int, int, int]] = [
    (32, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 256, 2),
    (256, 256, 1),
    (256, 512, 2),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 1024, 2),
    (1024, 1024, 1),
]


class BasicBlock(nn.Module):
    """3x3 conv (cin -> cin, stride s) + shortcut, then 1x1 conv(s) to cout + shortcut.

    With cout == 2 * cin the 1x1 part is two cin -> cin convolutions whose outputs, each
    plus the input, are concatenated: both halves keep an identity shortcut.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        if cout not in (cin, 2 * cin):
            raise ValueError(f"ReActNet blocks keep or double the width, got {cin} -> {cout}")
        self.conv3x3 = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pool: nn.Module = nn.AvgPool2d(2) if stride == 2 else nn.Identity()
        self.act1 = nn.PReLU(cin)
        n = cout // cin
        self.pointwise = nn.ModuleList(nn.Conv2d(cin, cin, 1, bias=False) for _ in range(n))
        self.bn2 = nn.ModuleList(nn.BatchNorm2d(cin) for _ in range(n))
        self.act2 = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv3x3(x)) + self.pool(x))
        halves = [bn(conv(out)) + out for conv, bn in zip(self.pointwise, self.bn2)]
        return self.act2(torch.cat(halves, dim=1) if len(halves) > 1 else halves[0])


class ReActNet(nn.Module):
    def __init__(self, num_classes: int = 1000, plan: list[tuple[int, int, int]] = REACTNET_A_PLAN):
        super().__init__()
        stem_width = plan[0][0]
        # ReActNet's first layer is conv + BN with no activation: the first binary conv
        # sees the batch-normalised stem output directly.
        self.conv1 = nn.Conv2d(3, stem_width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.blocks = nn.Sequential(*(BasicBlock(cin, cout, s) for cin, cout, s in plan))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(plan[-1][1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.bn1(self.conv1(x)))
        return self.fc(self.avgpool(x).flatten(1))

    def full_precision_layers(self) -> list[str]:
        """The stem (it sees raw pixels) and the classifier."""
        return ["conv1", "fc"]

    def binary_activation_swaps(self) -> dict[str, Callable[[], nn.Module]]:
        """None: PReLU outputs take both signs, so sign() of them is informative."""
        return {}


@register_model(family="cnn", task="image_classification", input_shape=(3, 224, 224), num_classes=1000)
def reactnet(num_classes: int = 1000) -> ReActNet:
    """ReActNet-A: 13 blocks on MobileNet-V1's channel plan, 32 -> 1024."""
    return ReActNet(num_classes)
