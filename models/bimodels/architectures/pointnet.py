"""PointNet for point-cloud classification (ModelNet40: 1024 points x 3 coordinates) and
part segmentation (ShapeNet-part: 2048 points, 50 parts).

Points arrive as (B, 3, N) so the shared per-point MLP is a stack of kernel-1 Conv1d
layers; a global max pool over points makes the network order invariant. `pointnet` adds
the two T-Nets (a 3x3 input transform and a 64x64 feature transform); `pointnet_vanilla`
has none.

Binarization contract (as in BiBench): the first backbone conv (3 -> 64, it sees raw
coordinates), the final classifier, and each T-Net's first conv and its last Linear (the
one producing the k x k transform) stay full precision; everything else is binarized.
Every ReLU becomes Hardtanh in the binarized network (sign(ReLU(x)) would be constant +1).

Qi et al., "PointNet: Deep Learning on Point Sets for 3D Classification and
Segmentation", CVPR 2017.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .registry import register_model


def shared_mlp(widths: list[int]) -> nn.Sequential:
    """Per-point MLP: Conv1d(k=1) + BN + ReLU for each consecutive pair of widths."""
    layers: list[nn.Module] = []
    for cin, cout in zip(widths[:-1], widths[1:]):
        layers += [nn.Conv1d(cin, cout, 1, bias=False), nn.BatchNorm1d(cout), nn.ReLU()]
    return nn.Sequential(*layers)


def mlp(widths: list[int]) -> nn.Sequential:
    """Fully connected Linear + BN + ReLU for each consecutive pair of widths."""
    layers: list[nn.Module] = []
    for cin, cout in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU()]
    return nn.Sequential(*layers)


class TNet(nn.Module):
    """Predicts a k x k transform of its (B, k, N) input, as identity + a learned offset."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.convs = shared_mlp([k, 64, 128, 1024])
        self.fcs = mlp([1024, 512, 256])
        self.transform = nn.Linear(256, k * k)
        # Start at the identity transform, as in the reference implementation.
        nn.init.zeros_(self.transform.weight)
        nn.init.zeros_(self.transform.bias)
        self.register_buffer("identity", torch.eye(k).flatten(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.convs(x).amax(dim=2)
        return (self.transform(self.fcs(feat)) + self.identity).view(-1, self.k, self.k)


def apply_transform(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Multiply each point (row of x^T) by t: (B, k, N) x (B, k, k) -> (B, k, N)."""
    return torch.bmm(x.transpose(1, 2), t).transpose(1, 2)


class PointNet(nn.Module):
    def __init__(self, num_classes: int = 40, transforms: bool = True, dropout: float = 0.3):
        super().__init__()
        self.input_tnet = TNet(3) if transforms else None
        self.mlp1 = shared_mlp([3, 64, 64])
        self.feature_tnet = TNet(64) if transforms else None
        self.mlp2 = shared_mlp([64, 64, 128, 1024])
        self.pool_norm = nn.BatchNorm1d(1024)  # re-centres the pooled features (see binary_activation_swaps)
        self.head = nn.Sequential(mlp([1024, 512, 256]), nn.Dropout(dropout))
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_tnet is not None:
            x = apply_transform(x, self.input_tnet(x))
        x = self.mlp1(x)
        if self.feature_tnet is not None:
            x = apply_transform(x, self.feature_tnet(x))
        x = self.mlp2(x).amax(dim=2)  # global max pool over points
        return self.fc(self.head(self.pool_norm(x)))

    def full_precision_layers(self) -> list[str]:
        """First backbone conv, classifier, and each T-Net's first conv and transform layer."""
        keep = ["mlp1.0", "fc"]
        for name in ("input_tnet", "feature_tnet"):
            if getattr(self, name) is not None:
                keep += [f"{name}.convs.0", f"{name}.transform"]
        return keep

    def binary_activation_swaps(self) -> dict[str, Callable[[], nn.Module]]:
        """Every ReLU becomes Hardtanh (they feed binary layers), except the one before the
        global max pool, which becomes the identity.

        A bounded activation there makes the max over points saturate at +1 in every channel
        for every cloud (and a ReLU makes it positive), so the first binary layer of the head
        sees a constant sign and nothing learns: measured, every algorithm stayed at chance
        (loss ln 12 throughout) on the 12 generated shape classes. This is BiPointNet's
        "aggregation-induced feature homogenization"; unbounded features, re-centred by the
        batch norm after the pool, keep the pooled signs informative.
        """
        return pooled_mlp_swaps(self)


def pooled_mlp_swaps(model: nn.Module) -> dict[str, Callable[[], nn.Module]]:
    """ReLU -> Hardtanh, except the last ReLU of `mlp2` (the one before the global max pool),
    which becomes the identity (see `PointNet.binary_activation_swaps`)."""
    relus = [name for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    before_pool = [name for name in relus if name.startswith("mlp2.")][-1]
    return {name: (nn.Identity if name == before_pool else nn.Hardtanh) for name in relus}


@register_model(family="mlp", task="point_cloud_classification", input_shape=(3, 1024), num_classes=40)
def pointnet_vanilla(num_classes: int = 40) -> PointNet:
    """PointNet without the input and feature T-Nets."""
    return PointNet(num_classes, transforms=False)


@register_model(family="mlp", task="point_cloud_classification", input_shape=(3, 1024), num_classes=40)
def pointnet(num_classes: int = 40) -> PointNet:
    """PointNet with the 3x3 input T-Net and the 64x64 feature T-Net."""
    return PointNet(num_classes, transforms=True)


class PointNetSegmentation(nn.Module):
    """PointNet's part-segmentation network without T-Nets: per-point local features, a
    global feature max-pooled over all points, both concatenated at every point and mapped
    to per-point part logits, (B, parts, N).

    Binarization contract: the first conv (raw coordinates) and the last (the part logits)
    stay full precision; ReLUs become Hardtanh except the one before the global pool, which
    becomes the identity for the reason given in `PointNet.binary_activation_swaps`.
    """

    def __init__(self, num_parts: int = 50, local: tuple[int, ...] = (64, 128, 128), global_width: int = 512):
        super().__init__()
        self.mlp1 = shared_mlp([3, *local])
        self.mlp2 = shared_mlp([local[-1], global_width])
        self.pool_norm = nn.BatchNorm1d(global_width)
        self.seg = shared_mlp([local[-1] + global_width, 256, 128])
        self.classifier = nn.Conv1d(128, num_parts, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.mlp1(x)
        pooled = self.pool_norm(self.mlp2(local).amax(dim=2))
        features = torch.cat([local, pooled.unsqueeze(2).expand(-1, -1, local.shape[2])], dim=1)
        return self.classifier(self.seg(features))

    def full_precision_layers(self) -> list[str]:
        return ["mlp1.0", "classifier"]

    def binary_activation_swaps(self) -> dict[str, Callable[[], nn.Module]]:
        return pooled_mlp_swaps(self)


@register_model(
    family="mlp", task="part_segmentation", input_shape=(3, 2048), num_classes=50, output_shape=(50, 2048)
)
def pointnet_part_seg(num_classes: int = 50) -> PointNetSegmentation:
    """Per-point part logits from local and global PointNet features (ShapeNet-part's 50 parts)."""
    return PointNetSegmentation(num_classes)
