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


class TinyTransformer(nn.Module):
    """Every op a token model adds, in one small graph: an embedding, a buffer, attention with
    heads, GELU (tanh and erf), tanh, layer norm, arithmetic with numbers, indexing, expand.
    Input: int64 ids (N, 6) below 50."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)
        self.norm = nn.LayerNorm(6)  # over the (T = 6) attention scores
        self.act = nn.GELU(approximate="tanh")
        self.register_buffer("offset", torch.linspace(-1, 1, 8))

    def forward(self, ids):
        x = self.embed(ids) + self.offset + self.embed(torch.zeros_like(ids))  # (N, T, 8)
        q = self.q(x).view(x.shape[0], x.shape[1], 2, 4).permute(0, 2, 1, 3)
        k = self.k(x).view(x.shape[0], x.shape[1], 2, 4).transpose(1, 2)
        att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / 2.0, dim=-1)  # (N, 2, T, T)
        y = self.norm(torch.nn.functional.gelu(att[:, 0]))  # (N, T, T)
        z = (2.0 - torch.tanh(self.act(y)) * 3) + y[:, 1:5:2].mean(1, keepdim=True)  # (N, T, T)
        return torch.cat([z[:, 0], z.unsqueeze(1).expand(-1, 2, -1, -1).flatten(1)], dim=1)
