"""Trained-looking initialisation for measurements without a checkpoint.

A freshly built network has batch norms at mean 0, var 1, weight 1, bias 0. Binarized, its
pre-sign values are then often exact integers and many are exactly 0, where any rounding
difference between two runtimes flips a sign. Real trained statistics do not look like
that; these do (seeded, so every run and every board sees the same model).
"""

from __future__ import annotations

import torch
from torch import nn


def trained_like_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm random, trained-looking statistics and affine parameters (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.normal_(0.0, 0.5, generator=g)
                assert m.running_var is not None  # tracked together with running_mean
                m.running_var.uniform_(0.5, 2.0, generator=g)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.normal_(0.0, 0.2, generator=g)
    return model
