"""Theoretical complexity against counts done by hand on a small network."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bimodels
from bimodels.complexity import complexity

X = torch.randn(1, 3, 8, 8)


def tiny() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # FP stem: 8x8x8 outputs x 27 = 13,824 MACs
        nn.BatchNorm2d(8),
        nn.Hardtanh(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2, bias=False),  # binary: 16x4x4 x 72 = 18,432
        nn.BatchNorm2d(16),
        nn.Flatten(),
        nn.Linear(256, 10),  # FP classifier: 2,560 MACs, 2,570 params
    )


PARAMS = 216 + 1152 + 2570 + 48
FLOPS = 13824 + 18432 + 2560


def binarized(algo: str) -> nn.Module:
    return bimodels.binarize(tiny(), algo, fp_layers=["0", "6"], example_input=X)


def test_full_precision_model_has_ratio_one():
    r = complexity(tiny(), X)
    assert (r.params, r.flops, r.bops, r.params_bin) == (PARAMS, FLOPS, 0, 0)
    assert r.compression_ratio == r.speedup_ratio == r.overall == 1.0


def test_bnn_counts_and_ratios():
    r = complexity(binarized("bnn"), X)
    assert (r.params, r.params_bin, r.params_fp) == (PARAMS, 1152, PARAMS - 1152)
    assert (r.flops, r.bops, r.flops_fp, r.extra_flops) == (FLOPS, 18432, FLOPS - 18432, 0)
    r_c = PARAMS / (1152 / 32 + PARAMS - 1152)
    r_s = FLOPS / (18432 / 64 + FLOPS - 18432)
    assert r.compression_ratio == pytest.approx(r_c)
    assert r.speedup_ratio == pytest.approx(r_s)
    assert r.overall == pytest.approx(math.sqrt((r_c**2 + r_s**2) / 2))
    binary = [l for l in r.layers if l.binary]
    assert [l.name for l in binary] == ["3"] and binary[0].output_shape == (16, 4, 4)


@pytest.mark.parametrize(
    "algo, extra_flops, extra_params",
    [
        ("bnn", 0, 0),
        ("xnor", 256 + 512 + 256, 16),  # alpha per output; beta: mean |x| over 512 inputs + 256 multiplies
        ("dorefa", 256, 16),
        ("bireal", 256, 16),
        ("xnorpp", 256 + 256, 16 + 4 + 4),  # o, then h*v; params o (16), h (4), v (4)
        ("reactnet", 256 + 512, 16 + 8),  # alpha; threshold add on every input
        ("recu", 256, 16),
        ("fda", 256, 16),  # lambda = 0 at inference: the noise MLPs are gone
    ],
)
def test_extra_work_per_algorithm(algo, extra_flops, extra_params):
    r = complexity(binarized(algo), X)
    assert r.extra_flops == extra_flops
    assert r.flops_fp == FLOPS - 18432 + extra_flops
    assert r.params_fp == PARAMS - 1152 + extra_params
    assert r.params == PARAMS  # the full-precision model's count, whatever the algorithm adds
    assert r.algorithm == algo


def test_resnet18_totals_are_the_known_ones():
    r = complexity(bimodels.binarize(bimodels.create_model("resnet18"), "bnn"))
    assert r.params == 11_689_512  # torchvision's resnet18
    assert r.flops == 1_814_073_344  # 1.81 G multiply-accumulates
    assert r.bops == 1_676_279_808  # the 16 binary 3x3 convs
    assert r.arch == "resnet18"


def test_attention_matmuls_are_counted_for_bert():
    model = bimodels.create_model("bert_tiny")
    r = complexity(model)
    attention = [l for l in r.layers if l.type == "attention"]
    assert len(attention) == 4 and all(l.macs == 2 * 128 * 128 * 256 for l in attention)
