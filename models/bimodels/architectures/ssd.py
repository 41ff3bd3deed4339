"""A small SSD-style single-shot detector on a binarizable ResNet backbone.

`ssd_resnet`: a 3x3 stem, six residual blocks each halving the resolution, and a 3x3
prediction head on the last four feature maps (1/8 to 1/64 of the input: 8x8 to 1x1 on the
64x64 generated scenes). Each map cell has 4 anchors (aspect ratios 1, 2 and 1/2 at the
level's scale, and one square between this level's scale and the next), as in SSD.

The output is one tensor, (batch, anchors, 4 + 1 + classes): box offsets encoded against
the anchors (centre offsets in units of 0.1 anchor sizes, log size ratios in units of 0.2,
SSD's "variances"), then the class logits with background at index 0. One tensor keeps the
exporters and runtimes unchanged; `ssd_anchors` and `decode_boxes` turn it into boxes.

The backbone's blocks are Bi-Real-style residual blocks (activation, conv, BN, each conv
with its own shortcut) and the heads read the residual stream through a batch norm, with no
activation on it: in the binarized network the Hardtanh that replaces ReLU shapes only what
the binary convolutions see, while the heads keep unbounded real-valued features. Measured
on 4,000 generated scenes (12 FP epochs, 6 fine-tuning epochs), mAP@0.5 FP / bnn:
post-activation ResNet blocks, whose clipped outputs the heads read, 0.56 / 0.007 (the
swap alone, with no binarization, took the FP detector's positive-anchor accuracy from 86%
to under 1%); the same trained with Hardtanh from the start, 0.12 FP; pre-activation blocks
without a BN after the second conv, 0.48 / 0.004; these blocks, 0.49 / 0.030 (reactnet
0.035). Detection is the task binarization hurts most, as BiBench found.

Binarization contract, as the ResNets and BiBench's detectors: every 3x3 convolution inside
the backbone's blocks is binarized; the stem, the 1x1 downsample convolutions and the
prediction heads (the network's last layers) stay full precision; ReLU becomes Hardtanh.

Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

from .registry import register_model
from .resnet import conv3x3, downsample_convs

SCALES = (
    0.15,
    0.3,
    0.5,
    0.75,
    0.95,
)  # anchor size per level, as a share of the image side (+1 for the "between")
RATIOS = (1.0, 2.0, 0.5)
ANCHORS_PER_CELL = len(RATIOS) + 1
CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2


def feature_sizes(image_size: int, levels: int = 4) -> list[int]:
    """Side of each predicted map: three stride-2 blocks to the first, one more per level."""
    side, sizes = image_size, []
    for i in range(3 + levels - 1):
        side = (side + 1) // 2  # a 3x3 conv with padding 1 and stride 2
        if i >= 2:
            sizes.append(side)
    return sizes


def ssd_anchors(image_size: int, levels: int = 4) -> torch.Tensor:
    """(anchors, 4) as centre x, centre y, width, height in units of the image side, in the
    order the detector's output lists them (level, row, column, anchor)."""
    return _anchors(tuple(feature_sizes(image_size, levels))).clone()


def anchors_for_output(num_anchors: int, levels: int = 4) -> torch.Tensor:
    """The anchors of a detector output with `num_anchors` rows.

    Anchors depend only on the feature-map sides, and the anchor count grows with them, so
    the count alone names them: the loss and the evaluation need no image size.
    """
    for size in range(1, 4097):
        sizes = tuple(feature_sizes(size, levels))
        count = ANCHORS_PER_CELL * sum(s * s for s in sizes)
        if count == num_anchors:
            return _anchors(sizes)
        if count > num_anchors:
            break
    raise ValueError(f"{num_anchors} anchors match no SSD input size with {levels} levels")


@functools.lru_cache(maxsize=16)
def _anchors(sizes: tuple[int, ...]) -> torch.Tensor:
    out = []
    for k, side in enumerate(sizes):
        s, s_next = SCALES[k], SCALES[k + 1]
        shapes = [(s * math.sqrt(r), s / math.sqrt(r)) for r in RATIOS] + [(math.sqrt(s * s_next),) * 2]
        for row in range(side):
            for col in range(side):
                cx, cy = (col + 0.5) / side, (row + 0.5) / side
                out += [(cx, cy, w, h) for w, h in shapes]
    return torch.tensor(out, dtype=torch.float32)


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Corner boxes (..., 4) in image units -> offsets against `anchors` (..., 4)."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp_min(1e-6)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    return torch.cat(
        [
            (centre - anchors[..., :2]) / (anchors[..., 2:] * CENTRE_VARIANCE),
            torch.log(wh / anchors[..., 2:]) / SIZE_VARIANCE,
        ],
        dim=-1,
    )


def decode_boxes(offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The inverse of `encode_boxes`: corner boxes in image units."""
    centre = anchors[..., :2] + offsets[..., :2] * CENTRE_VARIANCE * anchors[..., 2:]
    wh = anchors[..., 2:] * torch.exp((offsets[..., 2:] * SIZE_VARIANCE).clamp(max=8.0))
    return torch.cat([centre - wh / 2, centre + wh / 2], dim=-1)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions, each as activation, conv, BN, with its own shortcut (the first a
    1x1 conv with stride 2, the second the identity), as Bi-Real Net's blocks. Nothing is
    applied to the sum: the residual stream stays real-valued and unbounded."""

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__()
        self.act1, self.conv1, self.bn1 = nn.ReLU(), conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.act2, self.conv2, self.bn2 = nn.ReLU(), conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(self.act1(x))) + self.downsample(x)
        return self.bn2(self.conv2(self.act2(x))) + x


class SSD(nn.Module):
    def __init__(
        self, num_classes: int, widths: tuple[int, ...] = (16, 16, 32, 64, 128, 128, 128), levels: int = 4
    ):
        super().__init__()
        self.num_classes, self.levels = num_classes, levels
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(widths[0]), nn.ReLU()
        self.blocks = nn.ModuleList(ResidualBlock(cin, cout, 2) for cin, cout in zip(widths[:-1], widths[1:]))
        per_anchor = 4 + 1 + num_classes
        self.head_norms = nn.ModuleList(nn.BatchNorm2d(widths[-levels + i]) for i in range(levels))
        self.heads = nn.ModuleList(
            nn.Conv2d(widths[-levels + i], ANCHORS_PER_CELL * per_anchor, 3, padding=1) for i in range(levels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        maps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= len(self.blocks) - self.levels:
                maps.append(x)
        per_anchor = 4 + 1 + self.num_classes
        outs = [
            head(norm(m)).permute(0, 2, 3, 1).reshape(x.shape[0], -1, per_anchor)
            for head, norm, m in zip(self.heads, self.head_norms, maps)
        ]
        return torch.cat(outs, dim=1)

    def full_precision_layers(self) -> list[str]:
        """Stem, prediction heads and every 1x1 downsample convolution."""
        return ["conv1", *(f"heads.{i}" for i in range(self.levels)), *downsample_convs(self)]

    def binary_activation_swaps(self) -> dict[str, Callable[[], nn.Module]]:
        return {name: nn.Hardtanh for name, m in self.named_modules() if isinstance(m, nn.ReLU)}


@register_model(
    family="cnn",
    task="object_detection",
    input_shape=(3, 64, 64),
    num_classes=6,
    output_shape=(340, 4 + 1 + 6),
)  # 4 anchors on 8x8, 4x4, 2x2 and 1x1 maps
def ssd_resnet(num_classes: int = 6) -> SSD:
    """SSD head on six pre-activation ResNet blocks (widths 16-128), four prediction levels."""
    return SSD(num_classes)
