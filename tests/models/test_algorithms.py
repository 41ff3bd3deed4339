"""Each algorithm's forward AND gradient against an independent reference written from
docs/algorithms.md, on Conv1d, Conv2d and Linear with stride, padding, dilation, groups, bias.

The reference builds every estimator with the detach trick (forward sign, backward the
closed form) instead of the library's autograd.Function, so the two implementations share
nothing but the formulas.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import bimodels
from bimodels.algorithms.recu import tau_schedule


def S(t, grad):
    """Forward sign(t) (+1 at 0), backward grad(t)."""
    g = grad(t.detach())
    return torch.where(t >= 0, 1.0, -1.0).detach() + (t * g - (t * g).detach())


clip = lambda t: (t.abs() < 1).float()  # noqa: E731
approx = lambda t: (2 - 2 * t.abs()).clamp_min(0)  # noqa: E731
ident = lambda t: torch.ones_like(t)  # noqa: E731


def fourier(n):
    def g(t):
        s = sum(torch.cos((2 * i + 1) * 0.1 * t) for i in range(n + 1)) * (4 * 0.1 / math.pi)
        return torch.where(t.abs() > 1, torch.zeros_like(s), s)

    return g


LAYERS = {
    "conv2d_s2_g2_bias": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=True), (2, 4, 9, 9)),
    "conv2d_dilated": (lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, bias=False), (2, 4, 7, 7)),
    "conv2d_1x1_rect": (
        lambda: nn.Conv2d(3, 5, (1, 3), stride=(2, 1), padding=(0, 1), bias=True),
        (2, 3, 6, 5),
    ),
    "conv1d_s2_g2": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, bias=True), (2, 4, 11)),
    "linear_tokens": (lambda: nn.Linear(8, 5, bias=True), (2, 3, 8)),
    "linear_flat": (lambda: nn.Linear(7, 4, bias=False), (3, 7)),
}


def op_of(layer: nn.Module):
    if isinstance(layer, nn.Linear):
        return lambda x, w: F.linear(x, w)
    conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
    return lambda x, w: conv(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def chan(t, layer, like):
    """Per-channel vector shaped for the output (channel axis 1 for convs, last for linear)."""
    if isinstance(layer, nn.Linear):
        return t.reshape(-1)
    return t.reshape(1, -1, *([1] * (like.dim() - 2)))


def reference(algo: str, layer: nn.Module, x: torch.Tensor, training: bool = True) -> torch.Tensor:
    w, b, bz, op = layer.weight, layer.bias, layer.binarizer, op_of(layer)
    linear = isinstance(layer, nn.Linear)
    wdims = tuple(range(1, w.dim()))
    alpha = lambda v: v.detach().abs().mean(dim=wdims, keepdim=True)  # noqa: E731
    if algo == "bnn":
        y = op(S(x, clip), S(w, clip))
    elif algo == "xnor":
        wc = w - w.mean(dim=-1, keepdim=True) if linear else w
        beta = x.detach().abs().mean(dim=-1 if linear else tuple(range(1, x.dim())), keepdim=True)
        y = op(beta * S(x, clip), alpha(wc) * S(wc, clip))
    elif algo == "dorefa":
        y = op(S(x, clip), alpha(w) * S(w, clip))
    elif algo == "bireal":
        y = op(S(x, approx), alpha(w) * S(w, clip))
    elif algo == "xnorpp":
        y = op(S(x, clip), S(w, clip)) * bz.channel
        for f in bz.spatial:
            y = y * f
    elif algo == "reactnet":
        y = op(S(x + bz.threshold, approx), alpha(w) * S(w, clip))
    elif algo == "recu":
        c = w - w.mean(dim=wdims, keepdim=True)
        w_hat = c / (torch.sqrt(c.var(dim=wdims, keepdim=True) + 1e-5) / (2 * math.sqrt(2)))
        q = (-w_hat.abs().mean() * math.log(2 - 2 * float(bz.tau))).detach()
        xs = x
        if training:
            xs = x / torch.sqrt(x.var(dim=-1 if linear else tuple(range(1, x.dim())), keepdim=True) + 1e-5)
        y = op(S(xs, approx), S(torch.clamp(w_hat, -q, q), ident)) * bz.scale
    elif algo == "fda":
        n, lam = int(bz.n), float(bz.noise_weight)
        e_w = bz.weight_noise(w.reshape(w.shape[0], -1)).reshape(w.shape)
        e_a = bz.input_noise(x) if linear else bz.input_noise(x.movedim(1, -1)).movedim(-1, 1)
        y = op(S(x, fourier(n)) + lam * e_a, alpha(w) * (S(w, fourier(n)) + lam * e_w))
    else:
        raise AssertionError(algo)
    return y if b is None else y + chan(b, layer, y)


def make_binary(algo: str, layer_name: str):
    factory, shape = LAYERS[layer_name]
    g = torch.Generator().manual_seed(hash((algo, layer_name)) % 2**31)
    fp = factory()
    with torch.no_grad():
        fp.weight.copy_(torch.rand(fp.weight.shape, generator=g) * 3 - 1.5)  # some beyond the clip
        if fp.bias is not None:
            fp.bias.copy_(torch.randn(fp.bias.shape, generator=g))
    x = torch.randn(shape, generator=g) * 1.2
    model = bimodels.binarize(nn.Sequential(fp), algo, fp_layers=[], example_input=x)
    layer = model[0]
    with torch.no_grad():  # move learnable extras away from their init so they matter
        for name, p in layer.binarizer.named_parameters():
            if not name.startswith(("weight_noise", "input_noise")):
                p.copy_(
                    torch.rand(p.shape, generator=g) + 0.5
                    if "threshold" not in name
                    else torch.randn(p.shape, generator=g) * 0.3
                )
    if algo in ("fda", "recu"):
        bimodels.set_epoch(model, 2, 10)  # FDA's noise on (lambda > 0), ReCU's tau past its start
    return model, layer, x


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("algo", bimodels.list_algorithms())
def test_forward_and_gradients_match_reference(algo, layer_name):
    model, layer, x = make_binary(algo, layer_name)
    model.train()
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    y = layer(x1)
    y_ref = reference(algo, layer, x2)
    assert y.shape == y_ref.shape
    assert torch.allclose(y, y_ref, atol=1e-5, rtol=1e-5), (y - y_ref).abs().max()

    probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in layer.parameters()]
    grads = torch.autograd.grad((y * probe).sum(), [x1, *params], allow_unused=True)
    grads_ref = torch.autograd.grad((y_ref * probe).sum(), [x2, *params], allow_unused=True)
    names = ["input"] + [n for n, _ in layer.named_parameters()]
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert (g is None) == (g_ref is None), name
        if g is not None:
            assert torch.isfinite(g).all(), name
            assert torch.allclose(g, g_ref, atol=1e-4, rtol=1e-4), f"{name}: {(g - g_ref).abs().max()}"
    assert grads[1] is not None and grads[1].abs().sum() > 0, "latent weights get no gradient"


@pytest.mark.parametrize("algo", bimodels.list_algorithms())
def test_eval_forward_matches_reference(algo):
    model, layer, x = make_binary(algo, "conv2d_s2_g2_bias")
    if algo == "fda":
        bimodels.set_epoch(model, 9, 10)  # lambda reaches 0 at the last epoch
    model.eval()
    with torch.no_grad():
        assert torch.allclose(layer(x), reference(algo, layer, x, training=False), atol=1e-5)


@pytest.mark.parametrize("algo", bimodels.list_algorithms())
def test_deploy_form_reproduces_eval_output(algo):
    model, layer, x = make_binary(algo, "conv2d_s2_g2_bias")
    if algo == "fda":
        bimodels.set_epoch(model, 9, 10)
    model.eval()
    deployed = bimodels.to_deploy(model)
    with torch.no_grad():
        assert torch.allclose(deployed(x), model(x), atol=1e-5)
    assert set(layer.deploy_form().weight_sign.unique().tolist()) <= {-1.0, 1.0}


def test_recu_tau_schedule_endpoints():
    assert tau_schedule(0, 100) == pytest.approx(0.85)
    assert tau_schedule(100, 100) == pytest.approx(0.99)
    assert tau_schedule(50, 100) < (0.85 + 0.99) / 2  # exponential: slow start


def test_fda_schedule():
    model, layer, _ = make_binary("fda", "linear_flat")
    bimodels.set_epoch(model, 0, 10)
    assert int(layer.binarizer.n) == 9
    assert float(layer.binarizer.noise_weight) == pytest.approx(0.05 * (1 + math.cos(math.pi / 10)))
    bimodels.set_epoch(model, 5, 10)
    assert int(layer.binarizer.n) == 9 + 4
    bimodels.set_epoch(model, 9, 10)
    assert float(layer.binarizer.noise_weight) == pytest.approx(0.0, abs=1e-7)


def test_fda_refuses_to_deploy_mid_training():
    model, _, _ = make_binary("fda", "linear_flat")
    bimodels.set_epoch(model, 3, 10)
    with pytest.raises(RuntimeError, match="lambda"):
        bimodels.to_deploy(model)


def test_set_epoch_rejects_out_of_range():
    model, _, _ = make_binary("recu", "linear_flat")
    with pytest.raises(ValueError):
        bimodels.set_epoch(model, 10, 10)
