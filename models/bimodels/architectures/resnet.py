"""ResNets: ImageNet-style resnet18/34 (224x224), CIFAR-style resnet20 and resnet18_cifar (32x32), and a
Bi-Real style resnet18 with a shortcut around every binary convolution.

Binarization contract (docs/algorithms.md): every 3x3 convolution inside the residual blocks is
binarized; the stem, the 1x1 downsample convolutions, batch norms and the classifier stay
full precision; every ReLU becomes Hardtanh in the binarized network.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
Liu et al., "Bi-Real Net", ECCV 2018.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .registry import register_model


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1, self.act1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2, self.bn2, self.act2 = conv3x3(cout, cout), nn.BatchNorm2d(cout), nn.ReLU()
        self.downsample = downsample(cin, cout, stride)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + shortcut)


class BiRealBlock(nn.Module):
    """One binary 3x3 convolution with its own shortcut (Bi-Real's "extra shortcut")."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv, self.bn, self.act = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:  # Bi-Real: average pool, then a 1x1 conv
            pool: nn.Module = nn.AvgPool2d(2, 2) if stride != 1 else nn.Identity()
            self.downsample = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(self.bn(self.conv(x)) + shortcut)


def downsample_convs(model: nn.Module) -> list[str]:
    """The 1x1 convolutions of every shortcut (kept full precision)."""
    return [
        name
        for name, m in model.named_modules()
        if ".downsample." in f".{name}." and isinstance(m, nn.Conv2d)
    ]


class ResNet(nn.Module):
    def __init__(
        self,
        block: Callable[[int, int, int], nn.Module],
        blocks_per_stage: list[int],
        widths: list[int],
        num_classes: int,
        imagenet_stem: bool,
    ):
        super().__init__()
        if imagenet_stem:
            self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1, self.relu = nn.BatchNorm2d(widths[0]), nn.ReLU()
        stages, cin = [], widths[0]
        for i, (n, cout) in enumerate(zip(blocks_per_stage, widths)):
            stride = 1 if i == 0 else 2
            layers = [block(cin, cout, stride)] + [block(cout, cout, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layers(x)).flatten(1)
        return self.fc(x)

    def full_precision_layers(self) -> list[str]:
        """Stem, classifier and every 1x1 downsample convolution."""
        return ["conv1", "fc", *downsample_convs(self)]

    def binary_activation_swaps(self) -> dict[str, Callable[[], nn.Module]]:
        """Every ReLU becomes Hardtanh in the binarized network.

        The stem's too: with sign(0) = +1, a binary conv fed by a ReLU would see only +1.
        """
        return {name: nn.Hardtanh for name, m in self.named_modules() if isinstance(m, nn.ReLU)}


@register_model(family="cnn", task="image_classification", input_shape=(3, 224, 224), num_classes=1000)
def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], num_classes, imagenet_stem=True)


@register_model(family="cnn", task="image_classification", input_shape=(3, 224, 224), num_classes=1000)
def resnet34(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, imagenet_stem=True)


@register_model(family="cnn", task="image_classification", input_shape=(3, 32, 32), num_classes=10)
def resnet20(num_classes: int = 10) -> ResNet:
    return ResNet(BasicBlock, [3, 3, 3], [16, 32, 64], num_classes, imagenet_stem=False)


@register_model(family="cnn", task="image_classification", input_shape=(3, 32, 32), num_classes=10)
def resnet18_cifar(num_classes: int = 10) -> ResNet:
    """resnet18's stages on 32x32 inputs (3x3 stem, no max pool): BiBench's training-consumption model."""
    return ResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], num_classes, imagenet_stem=False)


@register_model(family="cnn", task="image_classification", input_shape=(3, 224, 224), num_classes=1000)
def birealnet18(num_classes: int = 1000) -> ResNet:
    """Bi-Real Net 18: resnet18's 16 binary convs, each with its own shortcut."""
    return ResNet(BiRealBlock, [4, 4, 4, 4], [64, 128, 256, 512], num_classes, imagenet_stem=True)
