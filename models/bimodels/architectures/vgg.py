"""VGG-Small for CIFAR (32x32), as used by LQ-Nets, XNOR-Net++ and BiBench.

Six 3x3 convolutions (128-128-256-256-512-512) with batch norm; the first convolution and
the classifier stay full precision.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .registry import register_model


class VGGSmall(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (128, 128, 256, 256, 512, 512)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(widths):
            layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=False))
            if i % 2 == 1:  # pool after every second conv, before its batch norm
                layers.append(nn.MaxPool2d(2))
            layers += [nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin * 4 * 4, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))

    def full_precision_layers(self) -> list[str]:
        return ["features.0", "fc"]

    def binary_activation_swaps(self) -> dict[str, Callable[[], nn.Module]]:
        return {
            f"features.{i}": nn.Hardtanh
            for i, m in enumerate(self.features)
            if isinstance(m, nn.ReLU)  # sign(ReLU(x)) would be +1 everywhere
        }


@register_model(family="cnn", task="image_classification", input_shape=(3, 32, 32), num_classes=10)
def vgg_small(num_classes: int = 10) -> VGGSmall:
    return VGGSmall(num_classes)
