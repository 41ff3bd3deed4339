"""Helpers shared by tests (importable as tests.helpers)."""

from __future__ import annotations

import torch
from torch import nn

import bimodels
from bimodels.init import trained_like_norms as randomize_norms  # noqa: F401


def perturb_binarizers(model: nn.Module, seed: int = 1) -> nn.Module:
    """Trained-looking algorithm parameters: thresholds around 0, scales/gains around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in bimodels.binary_layers(model):
            for name, p in layer.binarizer.named_parameters():
                if "noise" in name:  # FDA's noise MLPs are off at deployment (lambda = 0)
                    continue
                if "threshold" in name:
                    p.normal_(0.0, 0.3, generator=g)
                else:
                    p.uniform_(0.5, 1.5, generator=g)
            if layer.bias is not None:
                layer.bias.normal_(0.0, 0.5, generator=g)
    return model


def assert_numerics(runtime: str, artifact: bytes, fmt: str, model: nn.Module, xs: list) -> None:
    """The numerics rule (biagent.numerics), as the agent applies it, on each input of `xs`:
    the runtime matches torch's float64 reference, or differs through a rounding flip that
    its sign inputs show or that torch reproduces."""
    from bihost.deployability import check_artifact
    from bimodels.numerics import reference_cases

    result = check_artifact(runtime, fmt, artifact, model, reference_cases(model, xs))
    assert result.ok, result.reason
