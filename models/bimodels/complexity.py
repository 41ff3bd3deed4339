"""Theoretical complexity (BiBench's fifth track): params, FLOPs, BOPs and the ratios.

Conventions (Bi-Real / ReActNet / BiBench):
- FLOPs are multiply-accumulates of convolutions, linear layers and attention matmuls;
  norms, activations and pooling are not counted.
- A binary layer's multiply-accumulates are BOPs; its weights are binary params.
- Extra FP work an algorithm needs at inference is counted as FLOPs: a per-channel or
  spatial output scale costs one multiply per output element, a threshold one add per input
  element, XNOR-Net's beta one op per input element (mean |x|) plus one per output element.
  Its extra parameters (scales, thresholds, Gamma factors) are FP params.

    r_c = params / (params_bin / 32 + params_fp)
    r_s = FLOPs  / (BOPs / 64 + FLOPs_fp)
    overall = sqrt((r_c^2 + r_s^2) / 2)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .architectures.registry import example_input as arch_example_input
from .layers import DeployedBinaryLayer

_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass
class LayerComplexity:
    name: str
    type: str
    binary: bool
    output_shape: tuple[int, ...]
    macs: int  # as if the layer were full precision
    bops: int
    flops_fp: int  # FP work actually done at inference, extra work included
    extra_flops: int  # the algorithm's share of flops_fp
    params: int  # as in the full-precision model
    params_bin: int
    params_fp: int  # FP params at inference, the algorithm's extra params included


@dataclass
class ComplexityReport:
    arch: str | None
    algorithm: str | None
    params: int
    params_bin: int
    params_fp: int
    flops: int
    bops: int
    flops_fp: int
    extra_flops: int
    layers: list[LayerComplexity] = field(default_factory=list)

    @property
    def compression_ratio(self) -> float:
        return self.params / (self.params_bin / 32 + self.params_fp)

    @property
    def speedup_ratio(self) -> float:
        return self.flops / (self.bops / 64 + self.flops_fp)

    @property
    def overall(self) -> float:
        return math.sqrt((self.compression_ratio**2 + self.speedup_ratio**2) / 2)

    def totals(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "layers"}
        d |= {
            "compression_ratio": self.compression_ratio,
            "speedup_ratio": self.speedup_ratio,
            "overall": self.overall,
        }
        return d

    def as_dict(self, layers: bool = False) -> dict:
        d = self.totals()
        if layers:
            d["layers"] = [asdict(l) for l in self.layers]
        return d


def _extra_params(layer: DeployedBinaryLayer) -> int:
    form = layer.form
    n = sum(t.numel() for t in (form.weight_scale, form.input_shift, form.output_scale) if t is not None)
    if form.output_gain is not None:  # stored as h * v; the learnt factors are h and v
        n += sum(d for d in form.output_gain.shape if d > 1)
    return n


def _extra_flops(layer: DeployedBinaryLayer, x: Tensor, y: Tensor) -> int:
    form, n_in, n_out = layer.form, x[0].numel(), y[0].numel()
    flops = 0
    for t in (form.weight_scale, form.output_scale, form.output_gain):
        flops += n_out if t is not None else 0
    if form.input_shift is not None:
        flops += n_in
    if form.input_scale == "mean_abs":
        flops += n_in + n_out
    return flops


def _weight_layer(
    name: str, m: DeployedBinaryLayer | nn.Conv1d | nn.Conv2d | nn.Linear, x: Tensor, y: Tensor, binary: bool
) -> LayerComplexity:
    weight = m.weight
    per_output = math.prod(weight.shape[1:])  # C_in / groups * kernel (in_features for linear)
    macs = (y[0].numel()) * per_output
    bias_t: Tensor | None = getattr(m, "bias", None)
    bias = 0 if bias_t is None else bias_t.numel()
    if binary:
        assert isinstance(m, DeployedBinaryLayer)  # binary=True is passed for exactly these
        extra_f, extra_p = _extra_flops(m, x, y), _extra_params(m)
        return LayerComplexity(
            name,
            m.kind,
            True,
            tuple(y.shape[1:]),
            macs,
            macs,
            extra_f,
            extra_f,
            weight.numel() + bias,
            weight.numel(),
            bias + extra_p,
        )
    return LayerComplexity(
        name,
        type(m).__name__,
        False,
        tuple(y.shape[1:]),
        macs,
        0,
        macs,
        0,
        weight.numel() + bias,
        0,
        weight.numel() + bias,
    )


def complexity(model: nn.Module, example: Tensor | None = None) -> ComplexityReport:
    """Count a (binarized or full-precision) model on one sample of `example`."""
    from .binarize import to_deploy

    if example is None:
        example = arch_example_input(model)
    example = example[:1]
    deployed = to_deploy(model)
    layers: list[LayerComplexity] = []
    handles = []

    def make_hook(name: str):
        def hook(m: nn.Module, args: tuple, out: Tensor) -> None:
            x = args[0]
            if isinstance(m, DeployedBinaryLayer):
                layers.append(_weight_layer(name, m, x, out, True))
            elif isinstance(m, _WEIGHT_LAYERS):
                layers.append(_weight_layer(name, m, x, out, False))
            # matmuls outside any Linear
            elif callable(attention_flops := getattr(m, "attention_flops", None)):
                macs = attention_flops(x.shape[1])
                layers.append(
                    LayerComplexity(name, "attention", False, tuple(out.shape[1:]), macs, 0, macs, 0, 0, 0, 0)
                )

        return hook

    for name, m in deployed.named_modules():
        if isinstance(m, (DeployedBinaryLayer, *_WEIGHT_LAYERS)) or callable(
            getattr(m, "attention_flops", None)
        ):
            handles.append(m.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            deployed(example)
    finally:
        for h in handles:
            h.remove()

    counted = sum(l.params for l in layers)
    # Everything outside weight layers (norms, embeddings, PReLU...) stays full precision.
    other = sum(p.numel() for n, p in model.named_parameters() if ".binarizer." not in n) - counted
    other = max(other, 0)
    info = getattr(model, "arch_info", None)
    return ComplexityReport(
        arch=None if info is None else info.name,
        algorithm=getattr(model, "binarized_with", None),
        params=counted + other,
        params_bin=sum(l.params_bin for l in layers),
        params_fp=sum(l.params_fp for l in layers) + other,
        flops=sum(l.macs for l in layers),
        bops=sum(l.bops for l in layers),
        flops_fp=sum(l.flops_fp for l in layers),
        extra_flops=sum(l.extra_flops for l in layers),
        layers=layers,
    )
