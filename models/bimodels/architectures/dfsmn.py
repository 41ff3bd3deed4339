"""Deep-FSMN for keyword spotting (Google Speech Commands, 12 classes).

Input: 40 log-mel filterbank features x 98 frames, as (B, 40, 98), so per-frame layers are
kernel-1 Conv1d. Each DFSMN unit expands (256 -> 512), projects back (512 -> 256) and adds a
memory block, a depthwise convolution over time (order 10 frames each side), plus a skip
connection from the unit input: out = x + p + memory(p) with p the projection.

Binarization contract: the input convolution, the depthwise memory convolutions (a
depthwise kernel has too few weights for binarizing to pay off) and the classifier stay
full precision; the 1x1 expand and project convolutions are binarized. Every ReLU feeds a
binary convolution and becomes Hardtanh in the binarized network.

Zhang et al., "Deep-FSMN for Large Vocabulary Continuous Speech Recognition", ICASSP 2018.
Qin et al., "BiFSMN: Binary Neural Network for Keyword Spotting", IJCAI 2022.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .registry import register_model


class DFSMNUnit(nn.Module):
    """Expand + project (binary 1x1 convs), then a full-precision depthwise memory block."""

    def __init__(self, channels: int = 256, hidden: int = 512, order: int = 10):
        super().__init__()
        self.expand = nn.Conv1d(channels, hidden, 1, bias=False)
        self.expand_bn = nn.BatchNorm1d(hidden)
        self.act = nn.ReLU()
        self.project = nn.Conv1d(hidden, channels, 1, bias=False)
        # BN (affine, so still a linear projection) rescales the binary conv's +-hidden range.
        self.project_bn = nn.BatchNorm1d(channels)
        self.memory = nn.Conv1d(channels, channels, 2 * order + 1, padding=order, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.project_bn(self.project(self.act(self.expand_bn(self.expand(x)))))
        return x + p + self.memory(p)


class DFSMN(nn.Module):
    def __init__(
        self,
        num_classes: int = 12,
        in_features: int = 40,
        channels: int = 256,
        hidden: int = 512,
        num_units: int = 4,
        order: int = 10,
    ):
        super().__init__()
        self.input_conv = nn.Conv1d(in_features, channels, 1, bias=False)
        self.input_bn = nn.BatchNorm1d(channels)
        self.input_act = nn.ReLU()
        self.units = nn.Sequential(*(DFSMNUnit(channels, hidden, order) for _ in range(num_units)))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.units(self.input_act(self.input_bn(self.input_conv(x))))
        return self.fc(x.mean(dim=2))  # average over time

    def full_precision_layers(self) -> list[str]:
        """Input conv, classifier, and every depthwise memory conv."""
        keep = ["input_conv", "fc"]
        keep += [f"units.{i}.memory" for i in range(len(self.units))]
        return keep

    def binary_activation_swaps(self) -> dict[str, Callable[[], nn.Module]]:
        """Every ReLU (input and expand) feeds a binary 1x1 conv: sign(ReLU(x)) would be +1."""
        return {name: nn.Hardtanh for name, m in self.named_modules() if isinstance(m, nn.ReLU)}


@register_model(family="mlp", task="keyword_spotting", input_shape=(40, 98), num_classes=12)
def dfsmn(num_classes: int = 12) -> DFSMN:
    """4 DFSMN units, 256 channels, 512 hidden, memory order 10 each side."""
    return DFSMN(num_classes)
